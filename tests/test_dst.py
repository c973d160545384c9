"""Dynamic sparse training (SET, RigL, GraNet): counts, growth, optimizer statistics, schedules."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune

jit_modes = pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
LAYERS = ("hidden", "output")


def make_params(seed=0):
  k = jax.random.split(jax.random.key(seed), 2)
  return {
    "hidden": {"kernel": jax.random.normal(k[0], (24, 40)), "bias": jnp.zeros(40)},
    "output": {"kernel": jax.random.normal(k[1], (40, 10)), "bias": jnp.zeros(10)},
  }


def grads_at(params, step):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(500 + step), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def run(tx, steps, use_jit=True, params=None):
  """[(params before, grads, params after, state after)] for every update."""
  params = make_params() if params is None else params
  state = tx.init(params)
  update = jax.jit(tx.update) if use_jit else tx.update
  out = []
  for step in range(steps):
    grads = grads_at(params, step)
    updates, state = update(grads, state, params)
    new = optax.apply_updates(params, updates)
    out.append((params, grads, new, state))
    params = new
  return out


def kernel_masks(state):
  masks = jaxprune.get_masks(state)
  return {layer: np.asarray(masks[layer]["kernel"]) for layer in LAYERS}


def param_stats(state, inner):
  """Every part of the wrapped optimizer's state shaped like the params, as {layer: [arrays]}."""
  out = {layer: [] for layer in LAYERS}

  def collect(x):
    if hasattr(x, "shape") and x.ndim == 2:
      for layer, shape in (("hidden", (24, 40)), ("output", (40, 10))):
        if x.shape == shape:
          out[layer].append(np.asarray(x))
    return x

  optax.tree_utils.tree_map_params(inner, collect, state.inner_state)
  return out


OPTIMIZERS = {
  "sgd_momentum": lambda: optax.sgd(0.05, momentum=0.9),
  "adam": lambda: optax.adam(0.01),
  "adamw": lambda: optax.adamw(0.01, weight_decay=0.1),
  "lion": lambda: optax.lion(1e-3),
  "inject_hyperparams": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=0.01),
}
METHODS = {
  "set": lambda inner: jaxprune.set_sparse(
    0.8, drop_fraction=0.3, frequency=3, seed=1, inner=inner
  ),
  "rigl": lambda inner: jaxprune.rigl(0.8, end_step=15, frequency=3, inner=inner),
  "granet": lambda inner: jaxprune.granet(0.8, begin_step=3, end_step=12, frequency=3, inner=inner),
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("method", METHODS)
def test_grown_weights_and_their_statistics_start_at_zero(method, optimizer):
  inner = OPTIMIZERS[optimizer]()
  history = run(METHODS[method](inner), 16)
  grew = 0
  previous = kernel_masks(history[0][3])
  for step, (_, _, params, state) in enumerate(history[1:], start=1):
    masks = kernel_masks(state)
    stats = param_stats(state, inner)
    assert all(len(v) >= 1 for v in stats.values())
    for layer in LAYERS:
      grown = masks[layer] & ~previous[layer]
      grew += int(grown.sum())
      assert np.all(np.asarray(params[layer]["kernel"])[grown] == 0), (step, layer)
      for x in stats[layer]:
        assert np.all(x[grown] == 0), (step, layer)
      assert np.all(np.asarray(params[layer]["kernel"])[~masks[layer]] == 0)
    previous = masks
  assert grew > 0


@jit_modes
@pytest.mark.parametrize("method", ["set", "rigl"])
def test_active_count_is_constant_and_drop_equals_grow(method, use_jit):
  history = run(METHODS[method](optax.adam(0.01)), 16, use_jit)
  erk = jaxprune.allocation.erk(0.8, [(24, 40), (40, 10)])
  expected = {layer: n - round(s * n) for layer, s, n in zip(LAYERS, erk, (960, 400))}
  previous = kernel_masks(history[0][3])
  changed = 0
  for _, _, _, state in history:
    masks = kernel_masks(state)
    assert {layer: int(m.sum()) for layer, m in masks.items()} == expected
    for layer in LAYERS:
      dropped = int((previous[layer] & ~masks[layer]).sum())
      grown = int((masks[layer] & ~previous[layer]).sum())
      assert dropped == grown
      changed += grown
    previous = masks
  assert changed > 0


def test_rigl_drops_smallest_magnitudes_and_grows_largest_gradients():
  tx = jaxprune.rigl(
    0.8,
    end_step=100,
    frequency=3,
    drop_fraction=0.3,
    drop_schedule="constant",
    distribution="uniform",
    inner=optax.sgd(0.01),
  )
  history = run(tx, 4)
  before = kernel_masks(history[2][3])
  params, grads, _, state = history[3]  # the update with count 3
  after = kernel_masks(state)
  for layer in LAYERS:
    old = before[layer]
    active = int(old.sum())
    k = round(0.3 * active)
    w = np.abs(np.asarray(params[layer]["kernel"]))
    g = np.abs(np.asarray(grads[layer]["kernel"]))
    survivors = old & (w >= np.sort(w[old])[k])  # the active - k largest (no ties)
    assert int(survivors.sum()) == active - k
    candidates = np.where(survivors, -np.inf, g)
    grown = candidates >= np.sort(candidates.ravel())[-k]
    np.testing.assert_array_equal(after[layer], survivors | grown)


def test_no_mask_change_after_end_step_and_drop_fraction_schedules():
  history = run(jaxprune.rigl(0.8, end_step=6, frequency=2, inner=optax.adam(0.01)), 14)
  final = kernel_masks(history[6][3])
  for _, _, _, state in history[6:]:
    for layer in LAYERS:
      np.testing.assert_array_equal(kernel_masks(state)[layer], final[layer])
  cosine = jaxprune.dst.cosine_drop_fraction(0.3, 100)
  for t in (0, 25, 50, 100, 150):
    expected = 0.15 * (1 + math.cos(math.pi * min(t, 100) / 100))
    np.testing.assert_allclose(float(cosine(t)), expected, atol=1e-7)
  assert float(jaxprune.dst.constant_drop_fraction(0.3)(1234)) == pytest.approx(0.3)


def test_set_is_seeded():
  def masks_of(seed):
    tx = jaxprune.set_sparse(0.8, frequency=2, seed=seed, inner=optax.sgd(0.01))
    return [kernel_masks(s) for _, _, _, s in run(tx, 7)]

  a, b, c = masks_of(4), masks_of(4), masks_of(5)
  for x, y in zip(a, b):
    for layer in LAYERS:
      np.testing.assert_array_equal(x[layer], y[layer])
  assert any(not np.array_equal(x["hidden"], z["hidden"]) for x, z in zip(a, c))


@jit_modes
def test_set_with_rigl_drop_schedule_anneals_and_stops(use_jit):
  # drop_schedule="cosine": the update at count t replaces the fraction
  # f(t) = 0.3 / 2 * (1 + cos(pi * t / end_step)) (as RigL's code runs SET), so its first update
  # (t = 2) equals that of SET with the constant fraction f(2); none from end_step on.
  def make(**kw):
    return jaxprune.set_sparse(
      0.8, frequency=2, distribution="uniform", seed=3, inner=optax.sgd(0.01), **kw
    )

  f2 = 0.15 * (1 + math.cos(math.pi * 2 / 8))
  cosine = run(make(drop_fraction=0.3, drop_schedule="cosine", end_step=8), 12, use_jit)
  constant = run(make(drop_fraction=f2), 3, use_jit)
  first, reference = kernel_masks(cosine[2][3]), kernel_masks(constant[2][3])
  for layer in LAYERS:
    np.testing.assert_array_equal(first[layer], reference[layer])
    assert not np.array_equal(first[layer], kernel_masks(cosine[1][3])[layer])
  final = kernel_masks(cosine[7][3])
  for _, _, _, state in cosine[8:]:
    for layer in LAYERS:
      np.testing.assert_array_equal(kernel_masks(state)[layer], final[layer])


@pytest.mark.parametrize("end_step", [None, 0])
def test_set_cosine_schedule_needs_an_end_step(end_step):
  with pytest.raises(ValueError, match=rf"set_sparse: .*end_step={end_step}"):
    jaxprune.set_sparse(0.8, drop_schedule="cosine", end_step=end_step, inner=optax.sgd(0.1))


@jit_modes
def test_granet_follows_the_cubic_schedule_and_regrows(use_jit):
  tx = jaxprune.granet(
    0.9, begin_step=2, end_step=8, frequency=2, distribution="uniform", inner=optax.sgd(0.01)
  )
  history = run(tx, 10, use_jit)
  regrown = 0
  previous = kernel_masks(history[0][3])
  for step, (_, _, _, state) in enumerate(history):
    last = max([t for t in (2, 4, 6, 8) if t <= step], default=None)
    s = 0.0 if last is None else 0.9 * (1 - (1 - (last - 2) / 6) ** 3)
    masks = kernel_masks(state)
    for layer, n in zip(LAYERS, (960, 400)):
      assert int((~masks[layer]).sum()) == int(np.round(np.float32(s) * np.float32(n))), (
        step,
        layer,
      )
      regrown += int((masks[layer] & ~previous[layer]).sum())
    previous = masks
  assert regrown > 0  # pruning alone never re-activates a weight


def test_non_update_steps_do_not_touch_the_optimizer_state():
  inner = optax.adam(0.01)
  tx = jaxprune.rigl(0.8, end_step=100, frequency=5, inner=inner)
  history = run(tx, 4)
  # Between updates, kept weights train like masked Adam: statistics of kept weights nonzero.
  stats = param_stats(history[3][3], inner)
  mask = kernel_masks(history[3][3])["hidden"]
  assert np.all(stats["hidden"][0][mask] != 0)


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda: jaxprune.rigl(0.9, end_step=10), "needs the inner= form"),
    (
      lambda: jaxprune.rigl(0.9, end_step=1000, distribution="global", inner=optax.sgd(0.1)),
      "distribution must allocate",
    ),
    (
      lambda: jaxprune.rigl(0.9, end_step=1000, drop_fraction=1.5, inner=optax.sgd(0.1)),
      r"drop_fraction must be a number in \[0, 1\], got 1.5",
    ),
    (
      lambda: jaxprune.rigl(0.9, end_step=1000, drop_schedule="linear", inner=optax.sgd(0.1)),
      "drop_schedule must be",
    ),
    (lambda: jaxprune.rigl(1.5, end_step=10, inner=optax.sgd(0.1)), "sparsity must be in"),
    (
      lambda: jaxprune.rigl(0.9, end_step=10, frequency=0, inner=optax.sgd(0.1)),
      "frequency must be >= 1, got 0",
    ),
    (
      lambda: jaxprune.rigl(0.9, end_step=10, begin_step=10, inner=optax.sgd(0.1)),
      r"begin_step \(10\) must be before end_step \(10\)",
    ),
    (lambda: jaxprune.set_sparse(float("nan"), inner=optax.sgd(0.1)), "sparsity must be in"),
    (
      lambda: jaxprune.set_sparse(0.9, drop_schedule="exp", inner=optax.sgd(0.1)),
      "set_sparse: drop_schedule must be 'cosine' or 'constant', got 'exp'",
    ),
    (
      lambda: jaxprune.granet(0.5, end_step=1000, initial_sparsity=0.8, inner=optax.sgd(0.1)),
      r"initial_sparsity \(0.8\) is above sparsity \(0.5\)",
    ),
  ],
)
def test_errors(make, match):
  with pytest.raises(ValueError, match=match):
    make()
