"""Streamed scores: the selection computes elementwise scores a piece at a time, with the same result
as on materialised scores, and the mask update then needs no params-sized temporaries."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune
from jaxprune import selection

JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
PALETTE = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, np.inf, -np.inf, np.nan, 7.25], np.float32)


def tied_arrays(shapes, seed):
  rng = np.random.default_rng(seed)
  return [PALETTE[rng.integers(0, PALETTE.size, s)] for s in shapes]


def masked_abs(w, old):
  return jnp.where(old, jnp.abs(w), -jnp.inf)


@pytest.mark.parametrize(
  ("shape", "piece_size"),
  [((64,), 16), ((12, 10), 7), ((7, 13), 5), ((4, 6, 10), 30), ((12, 10), 1), ((5, 5), 100)],
)
def test_piece_layout_cuts_along_a_divisor(shape, piece_size):
  axis, n = selection._piece_layout(shape, piece_size)
  size = int(np.prod(shape))
  assert shape[axis] % n == 0
  if size <= piece_size:
    assert n == 1
  elif any(any(d % m == 0 and size // m <= piece_size for m in range(1, d + 1)) for d in shape):
    assert size // n <= piece_size  # bounded whenever one axis allows it
  else:
    assert n == max(shape)  # (7, 13) at 5: the longest axis, one piece per entry of it
  # The pieces cover every entry once, and positions name them.
  x = jnp.arange(size, dtype=jnp.float32).reshape(shape)
  seen = np.concatenate(
    [np.asarray(selection._piece(x, axis, n, i)).ravel() for i in range(n)]
    + [np.asarray(selection._piece_positions(shape, axis, n, i, 0)).ravel() for i in range(n)]
  )
  np.testing.assert_array_equal(np.sort(seen[:size]), np.arange(size))
  np.testing.assert_array_equal(seen[:size], seen[size:])


@JIT
@pytest.mark.parametrize("piece_size", [1, 6, 40, 10**6])
def test_streamed_selection_equals_the_materialised_one(jit, piece_size):
  # Ties, signed zeros, infinities and NaNs, in three segments, some scores masked by an old mask
  # and one taken from a layer of a stacked array: streamed in pieces of every size, the masks are
  # those of the same scores given as arrays.
  shapes = [(6, 7), (11,), (3, 4, 5), (8, 6)]
  arrays = tied_arrays(shapes, 0)
  old = [np.random.default_rng(1).random(s) > 0.3 for s in shapes]
  stacked = tied_arrays([(3, 4, 10)], 2)[0]
  segments = [0, 1, 0, 2, 1]
  ks = [jnp.int32(40), jnp.int32(9), jnp.int32(27)]

  def streamed(arrays, old, stacked, ks):
    scores = [selection.Streamed(masked_abs, (a, m)) for a, m in zip(arrays, old)]
    scores.append(selection.Streamed(jnp.abs, (stacked,), layer=(1, 2)))
    return selection.top_k_masks(scores, ks, segments=segments, piece_size=piece_size)

  def materialised(arrays, old, stacked, ks):
    scores = [masked_abs(a, m) for a, m in zip(arrays, old)] + [jnp.abs(stacked[:, 2])]
    return selection.top_k_masks(scores, ks, segments=segments)

  run = jax.jit(streamed) if jit else streamed
  args = ([jnp.asarray(a) for a in arrays], [jnp.asarray(m) for m in old], jnp.asarray(stacked), ks)
  got, want = run(*args), materialised(*args)
  for g, w in zip(got, want):
    assert g.shape == w.shape and g.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  kept = [int(sum(np.asarray(g).sum() for g, s in zip(got, segments) if s == t)) for t in range(3)]
  assert kept == [40, 9, 27]


@pytest.mark.parametrize("bracketed", [False, True], ids=["radix", "bracketed"])
def test_streamed_selection_on_sharded_operands_equals_one_device(bracketed, monkeypatch):
  # Pieces are strided along the cut axis, so each device slices its own block of a sharded axis.
  # "bracketed": the sampled, one-pass select (thresholds lowered so that these arrays take it).
  if bracketed:
    monkeypatch.setattr(selection, "_MIN_SAMPLED", 64)
    monkeypatch.setattr(selection, "_ENTRIES_PER_BIN", 1e-6)
  mesh = jax.make_mesh((4, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rng = np.random.default_rng(3)
  arrays = [
    rng.normal(size=(16, 8)).astype(np.float32),
    rng.normal(size=(8, 32)).astype(np.float32),
  ]
  arrays[0][3:6] = 0.5  # ties across the threshold
  specs = [P("a", "b"), P(None, ("a", "b"))]

  def select(a, b):
    scores = [selection.Streamed(jnp.abs, (a,)), selection.Streamed(jnp.abs, (b,))]
    return selection.top_k_masks(scores, 300, piece_size=16)

  one = select(*map(jnp.asarray, arrays))
  sharded = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(arrays, specs)]
  many = jax.jit(select)(*sharded)
  for o, m in zip(one, many):
    np.testing.assert_array_equal(np.asarray(o), np.asarray(m))
  assert sum(int(np.asarray(m).sum()) for m in many) == 300


def test_piece_size_must_be_positive():
  with pytest.raises(ValueError, match="piece_size must be positive, got 0"):
    selection.top_k_masks([jnp.ones(3)], 1, piece_size=0)


def _params(seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return {
    "a": {"kernel": jax.random.normal(keys[0], (24, 16))},
    "b": {"kernel": jax.random.normal(keys[1], (16, 20))},
    "c": {"kernel": jax.random.normal(keys[2], (2, 5, 8))},
  }


def _run(tx, steps=4):
  params = _params()
  state = tx.init(params)

  @jax.jit
  def step(params, state, i):
    grads = jax.tree.map(lambda w: jnp.sin(w * (i + 1.0)), params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for i in range(steps):
    params, state = step(params, state, jnp.float32(i))
  return params, jaxprune.get_masks(state)


# Every distribution and both mask storages, each storage with some distribution: packing happens
# after the selection, so its pairing with a distribution does not matter to streaming.
@pytest.mark.parametrize(
  "distribution,packed",
  [("uniform", False), ("global", True), ("erk", False)],
  ids=["uniform-bytes", "global-packed", "erk-bytes"],
)
def test_pruners_stream_their_scores_with_the_same_masks(distribution, packed, monkeypatch):
  # Gradual magnitude and saliency pruning in pieces of 7 entries against the same pruners with
  # scores materialised (a score without its elementwise form).
  monkeypatch.setattr(selection, "PIECE_SIZE", 7)
  schedule = jaxprune.schedules.polynomial(begin_step=0, end_step=3, frequency=1)
  for score, inner in [
    (jaxprune.scores.magnitude, None),
    (jaxprune.scores.saliency, optax.sgd(0.1)),
  ]:
    made = [
      jaxprune.pruning(
        s, 0.8, distribution=distribution, schedule=schedule, packed_masks=packed, inner=inner
      )
      for s in (score, score._replace(entry=None))
    ]
    if inner is None:
      made = [optax.chain(optax.sgd(0.1), tx) for tx in made]
    (p1, m1), (p2, m2) = _run(made[0]), _run(made[1])
    for x, y in zip(
      jax.tree.leaves(p1) + jax.tree.leaves(m1), jax.tree.leaves(p2) + jax.tree.leaves(m2)
    ):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_rigl_streams_drop_and_grow_with_the_same_masks(monkeypatch):
  tx = lambda: jaxprune.rigl(0.7, end_step=10, frequency=1, inner=optax.sgd(0.1))
  (p1, m1) = _run(tx())
  monkeypatch.setattr(selection, "PIECE_SIZE", 5)
  (p2, m2) = _run(tx())
  for x, y in zip(
    jax.tree.leaves(p1) + jax.tree.leaves(m1), jax.tree.leaves(p2) + jax.tree.leaves(m2)
  ):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _temp_bytes(tx, params):
  def step(params, state, x):
    grads = jax.grad(lambda p: jnp.mean(jnp.tanh(jnp.tanh(x @ p["w0"]) @ p["w1"]) ** 2))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = jax.eval_shape(tx.init, params)
  x = jax.ShapeDtypeStruct((8, 512), jnp.float32)
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, x).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("distribution", ["uniform", "global"])
def test_a_mask_update_step_needs_no_params_sized_temporaries(distribution, monkeypatch):
  # XLA's buffer assignment of a donated training step whose every step re-selects 90%: beyond the
  # dense step's temporaries, the streamed selection adds at most the masks (the new ones are made
  # while the old are read) and 10% of the params' bytes; the same step with materialised scores
  # (float32, as large as the params) does not fit that bound.
  monkeypatch.setattr(selection, "PIECE_SIZE", 4096)
  params = {f"w{i}": jax.ShapeDtypeStruct((512, 512), jnp.float32) for i in range(2)}
  param_bytes = 2 * 512 * 512 * 4
  adam = optax.adam(1e-3)
  schedule = jaxprune.schedules.polynomial(
    begin_step=0, end_step=10**9, frequency=1, initial_sparsity=0.9
  )
  dense = _temp_bytes(optax.chain(adam), params)

  def extra(score):
    pruner = jaxprune.pruning(score, 0.9, distribution=distribution, schedule=schedule)
    return (_temp_bytes(optax.chain(adam, pruner), params) - dense) / param_bytes

  masks = 2 * 512 * 512 / param_bytes  # byte masks
  assert extra(jaxprune.scores.magnitude) <= masks + 0.1
  assert extra(jaxprune.scores.magnitude._replace(entry=None)) > masks + 0.25
