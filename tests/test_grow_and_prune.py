"""GaP (`jaxprune.gap`): the partition grown, the one pruned back, and their exact counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune import grow_and_prune

SHAPES = {"l0": (6, 8), "l1": (8, 5), "l2": (5, 3)}


def _params():
  keys = jax.random.split(jax.random.key(0), len(SHAPES))
  return {
    name: {"kernel": jax.random.normal(k, shape), "bias": jnp.zeros(shape[1])}
    for k, (name, shape) in zip(keys, SHAPES.items())
  }


def _grads(params, t):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(100 + t), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _history(tx, steps):
  params = _params()
  state = tx.init(params)
  step = jax.jit(tx.update)
  out = []
  for t in range(steps):
    before = params
    updates, state = step(_grads(params, t), state, params)
    params = optax.apply_updates(params, updates)
    out.append((before, params, jaxprune.get_masks(state)))
  return out


def test_partitions_grow_and_prune_back_by_magnitude():
  # kappa = 2 partitions of the 3 kernels: [l0, l1] and [l2]; steps of 3 updates from update 2,
  # 2 rounds: mask updates at 2, 5, 8, 11, 14.
  assert grow_and_prune.gap_steps(2, 3, 2, begin_step=2) == [2, 5, 8, 11, 14]
  tx = jaxprune.gap(
    0.75, partitions=2, step_length=3, rounds=2, begin_step=2, inner=optax.sgd(0.1, momentum=0.9)
  )
  history = _history(tx, 17)
  target = {k: round(0.75 * np.prod(s)) for k, s in SHAPES.items()}
  dense_at = {0: None, 1: None, 2: 0, 5: 1, 8: 0, 11: 1, 14: None}
  parts = {"l0": 0, "l1": 0, "l2": 1}
  dense = None
  for t, (before, after, masks) in enumerate(history):
    dense = dense_at.get(t, dense)
    for name in SHAPES:
      m = np.asarray(masks[name]["kernel"])
      expected = 0 if parts[name] == dense else target[name]
      assert int((~m).sum()) == expected, (t, name)
      assert np.all(np.asarray(after[name]["kernel"])[~m] == 0)
  # At a prune-back (updates 5, 8, 11, 14) the partition grown before keeps exactly its
  # round(0.25 n) largest |w| among all its weights, read before that update.
  for t, part in ((5, 0), (8, 1), (11, 0), (14, 1)):
    before, _, masks = history[t]
    for name in [n for n, p in parts.items() if p == part]:
      w = np.abs(np.asarray(before[name]["kernel"])).ravel()
      keep = np.zeros(w.size, bool)
      keep[np.argsort(-w, kind="stable")[: w.size - target[name]]] = True
      np.testing.assert_array_equal(np.asarray(masks[name]["kernel"]).ravel(), keep)
  # Grown weights start from zero with fresh statistics: with momentum, a weight of l0 pruned by
  # the random start and grown at update 2 takes exactly -lr * g there.
  start = ~np.asarray(history[0][2]["l0"]["kernel"])
  g = np.asarray(_grads(history[2][0], 2)["l0"]["kernel"])
  grown = np.asarray(history[2][1]["l0"]["kernel"])
  np.testing.assert_allclose(grown[start], -0.1 * g[start], rtol=1e-6)
  # After the last update the masks stay fixed (fine-tuning).
  np.testing.assert_array_equal(history[14][2]["l0"]["kernel"], history[16][2]["l0"]["kernel"])


def test_partitions_by_regex_and_erk():
  tx = jaxprune.gap(
    0.8,
    partitions=["l2/kernel", ["l0/.*", "l1/.*"]],
    step_length=1,
    rounds=1,
    distribution="erk",
    inner=optax.sgd(0.1),
  )
  history = _history(tx, 3)
  shares = jaxprune.allocation.erk(0.8, list(SHAPES.values()))
  target = {k: round(s * np.prod(v)) for (k, v), s in zip(SHAPES.items(), shares)}
  counts = [{n: int((~np.asarray(m[n]["kernel"])).sum()) for n in SHAPES} for _, _, m in history]
  assert counts[0] == {**target, "l2": 0}  # partition 0 is l2
  assert counts[1] == {**target, "l0": 0, "l1": 0}
  assert counts[2] == target


@pytest.mark.parametrize(
  "kwargs,error,match",
  [
    ({"distribution": "global"}, ValueError, "'global'"),
    ({"pattern": jaxprune.patterns.n_m(2, 4)}, ValueError, "N:M"),
    ({"partitions": 0}, ValueError, "partitions must be >= 1, got 0"),
    ({"partitions": 2.0}, TypeError, "partitions must be an int"),
    ({"partitions": ["l0/.*", "("]}, ValueError, r"pattern '\(' is not a valid regex"),
    ({"step_length": 0}, ValueError, "step_length must be >= 1, got 0"),
    ({"rounds": 1.5}, TypeError, "rounds must be an int, got 1.5"),
    ({"sparsity": 1.2}, ValueError, r"sparsity must be in \[0, 1\), got 1.2"),
    ({"inner": None}, ValueError, "needs the inner= form"),
  ],
)
def test_bad_arguments(kwargs, error, match):
  args = {"sparsity": 0.5, "partitions": 2, "step_length": 1, "rounds": 1, "inner": optax.sgd(0.1)}
  with pytest.raises(error, match=match):
    jaxprune.gap(**{**args, **kwargs})


@pytest.mark.parametrize(
  "partitions,match",
  [
    (4, "partitions=4 is more than the 3 pruned units"),
    (["l0/kernel", "l1/kernel"], "unit 'l2/kernel' is in no partition"),
    (["l.*", "l0/kernel"], r"unit 'l0/kernel' is in partitions \[0, 1\]"),
    (["l.*", "x/.*"], r"partition \['x/.\*'\] matches no pruned unit"),
  ],
)
def test_bad_partitions_fail_at_init(partitions, match):
  tx = jaxprune.gap(0.5, partitions=partitions, step_length=1, rounds=1, inner=optax.sgd(0.1))
  with pytest.raises(ValueError, match=match):
    tx.init(_params())
