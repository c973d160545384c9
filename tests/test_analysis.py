"""Mask overlap: IoU and shared fractions, per leaf and in total."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune


def test_overlap_counts_per_leaf_and_total():
  a = {
    "x": jnp.array([[True, True], [False, False]]),
    "y": jnp.array([[True, False, True]]),
    "b": None,
  }
  b = {
    "x": jnp.array([[True, False], [True, False]]),
    "y": jnp.array([[True, False, True]]),
    "b": None,
  }
  o = jaxprune.analysis.mask_overlap(a, b)
  assert o.leaves["x"] == (2, 2, 1, 1 / 3, 0.5)
  assert o.leaves["y"] == (2, 2, 2, 1.0, 1.0)
  assert o.total == (4, 4, 3, 3 / 5, 3 / 4)
  assert set(o.leaves) == {"x", "y"}


def test_gradual_pruning_masks_are_nested():
  params = {"w": jax.random.normal(jax.random.key(0), (20, 20))}
  sched = jaxprune.schedules.polynomial(begin_step=0, end_step=4, frequency=2)
  tx = jaxprune.magnitude_pruning(0.9, schedule=sched, inner=optax.sgd(0.01))
  state = tx.init(params)
  history = []
  for t in range(5):
    grads = {"w": jax.random.normal(jax.random.key(t + 1), (20, 20))}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    history.append(jaxprune.get_masks(state))
  later, earlier = history[4], history[2]
  o = jaxprune.analysis.mask_overlap(later, earlier)
  assert o.total.fraction_of_a == 1.0  # every weight kept at the end was kept before
  m = jaxprune.analysis.overlap_matrix([history[2], history[4], history[4]])
  np.testing.assert_allclose(np.diag(m), 1.0)
  assert m[1, 2] == 1.0 and m[0, 1] == pytest.approx(o.total.iou)


def test_packed_masks_and_errors():
  mask = jnp.arange(10).reshape(2, 5) % 2 == 0
  packed = {"w": jaxprune.masks.pack(mask)}
  assert jaxprune.analysis.mask_overlap(packed, {"w": mask}).total.iou == 1.0
  with pytest.raises(ValueError, match="leaf 'w' has shape"):
    jaxprune.analysis.mask_overlap({"w": mask}, {"w": mask.T})
  with pytest.raises(ValueError, match="prune different leaves"):
    jaxprune.analysis.mask_overlap({"w": mask}, {"v": mask})
  with pytest.raises(TypeError, match="leaf 'w' has dtype float32"):
    jaxprune.analysis.mask_overlap({"w": mask.astype(jnp.float32)}, {"w": mask})


# ============================================================================ PQ index


def _pq(values, p, q):
  values = np.asarray(values, np.float64).ravel()
  d = values.size
  norm = lambda r: np.sum(np.abs(values) ** r) ** (1 / r)
  return 1 - d ** (1 / q - 1 / p) * norm(p) / norm(q)


def test_pq_index_per_leaf_and_total_against_the_formula():
  a = np.array([[3.0, -1.0], [0.5, 2.0]], np.float32)
  b = np.array([0.1, -4.0, 0.0], np.float32)
  tree = {"a": jnp.asarray(a), "b": jnp.asarray(b), "n": None}
  for p, q in [(1.0, 2.0), (0.5, 1.0)]:
    index = jaxprune.analysis.pq_index(tree, p, q)
    assert set(index.leaves) == {"a", "b"}
    assert index.leaves["a"] == pytest.approx(_pq(a, p, q), rel=1e-5)
    assert index.leaves["b"] == pytest.approx(_pq(b, p, q), rel=1e-5)  # d = 3, zero included
    assert index.total == pytest.approx(_pq(np.concatenate([a.ravel(), b]), p, q), rel=1e-5)
  # Exact values: all equal -> 0; one nonzero of d = 4 entries -> 1 - 4 ** (1/2 - 1) = 0.5.
  assert jaxprune.analysis.pq_index({"w": -jnp.ones(9)}).total == 0.0
  assert jaxprune.analysis.pq_index({"w": jnp.array([0.0, 0.0, 0.0, 5.0])}).total == 0.5


def test_pq_index_with_masks_counts_the_kept_entries_only():
  w = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  masks = {"w": jnp.array([[True, False, True], [False, True, True]]), "bias": None}
  tree = {"w": w, "bias": jnp.ones(3)}
  index = jaxprune.analysis.pq_index(tree, 1.0, 2.0, masks=masks)
  assert set(index.leaves) == {"w"}  # leaves without a mask are not measured
  expected = _pq([1.0, 3.0, 5.0, 6.0], 1.0, 2.0)  # d = 4 kept, not 6
  assert index.leaves["w"] == pytest.approx(expected, rel=1e-6)
  assert index.total == pytest.approx(expected, rel=1e-6)


def test_pq_index_errors():
  with pytest.raises(ValueError, match="q must be larger than p, got p=2.0, q=1.0"):
    jaxprune.analysis.pq_index({"w": jnp.ones(3)}, 2.0, 1.0)
  with pytest.raises(ValueError, match="p must be > 0, got 0.0"):
    jaxprune.analysis.pq_index({"w": jnp.ones(3)}, 0.0, 1.0)
  with pytest.raises(TypeError, match="leaf 'w' has dtype int32"):
    jaxprune.analysis.pq_index({"w": jnp.ones(3, jnp.int32)})
  with pytest.raises(ValueError, match=r"mask of leaf 'w' has shape \(2,\), the leaf \(3,\)"):
    jaxprune.analysis.pq_index({"w": jnp.ones(3)}, masks={"w": jnp.ones(2, bool)})
  with pytest.raises(ValueError, match="the masks have leaf 'v'"):
    jaxprune.analysis.pq_index({"w": jnp.ones(3)}, masks={"v": jnp.ones(3, bool)})


def test_sap_prune_count_against_the_authors_formula():
  from jaxprune import sap

  rate = sap.pq_rate(0.5, 1.0, eta=0.1, gamma=1.2, beta=0.9)
  values = np.abs(np.random.default_rng(0).normal(size=500)).astype(np.float32)
  index = sap.pq_index_of([jnp.asarray(values)], 500, 0.5, 1.0)
  assert float(index) == pytest.approx(_pq(values, 0.5, 1.0), rel=1e-5)
  r = np.ceil(500 * 1.1 ** (-1 / 0.5) * (1 - _pq(values, 0.5, 1.0)) ** (0.5 / 0.5))
  expected = int(np.floor(min(1.2 * (500 - r), 0.9 * 500)))
  assert int(sap.sap_prune_count(jnp.asarray(500), index, rate)) == expected
  assert int(sap.sap_prune_count(jnp.asarray(10), jnp.asarray(0.0), sap.pq_rate())) == 0
  assert int(sap.sap_prune_count(jnp.asarray(10), jnp.asarray(0.99), sap.pq_rate())) == 9  # beta
  assert int(sap.sap_prune_count(jnp.asarray(0), jnp.asarray(jnp.nan), sap.pq_rate())) == 0
  for kwargs, match in [
    (dict(beta=1.0), r"beta must be in \(0, 1\), got 1.0"),
    (dict(gamma=0.0), "gamma must be > 0, got 0.0"),
    (dict(eta=-0.1), "eta must be >= 0, got -0.1"),
    (dict(p="1"), "p must be a finite number, got '1'"),
  ]:
    with pytest.raises((ValueError, TypeError), match=match):
      sap.pq_rate(**kwargs)


# ============================================================================ learning distance


def test_learning_distance_per_leaf_and_total():
  a = {"x": jnp.array([[1.0, 2.0]]), "y": jnp.array([3.0]), "n": None}
  b = {"x": jnp.array([[1.0, 0.0]]), "y": jnp.array([-1.0]), "n": None}
  d = jaxprune.analysis.learning_distance(a, b)
  assert d.leaves == {"x": 2.0, "y": 4.0}
  assert d.total == pytest.approx(math.sqrt(20.0))
  with pytest.raises(ValueError, match=r"leaf 'x' has shape \(1, 2\) in params, \(2,\) in start"):
    jaxprune.analysis.learning_distance({"x": jnp.ones((1, 2))}, {"x": jnp.ones(2)})
  with pytest.raises(ValueError, match="different leaves"):
    jaxprune.analysis.learning_distance({"x": jnp.ones(2)}, {"z": jnp.ones(2)})


# ============================================================================ dead neurons


def test_dead_neuron_rate_counts_zero_outputs_and_dead_units():
  h1 = jnp.array([[0.0, 1.0, 0.0], [0.0, 2.0, 3.0]])  # unit 0 dead on both examples
  h2 = jnp.array([[[-1.0, 0.5]], [[0.0, -2.0]]])  # [batch, position, units]: 3 of 4 dead
  rate = jaxprune.analysis.dead_neuron_rate({"h1": h1, "h2": h2, "none": None})
  assert rate.leaves == {"h1": 0.5, "h2": 0.75}
  assert rate.total == 6 / 10
  assert rate.dead_units == {"h1": 1, "h2": 1}
  with pytest.raises(ValueError, match=r"leaf 'v' has shape \(3,\); expected \[batch"):
    jaxprune.analysis.dead_neuron_rate({"v": jnp.ones(3)})
  with pytest.raises(TypeError, match="leaf 'v' has dtype bool"):
    jaxprune.analysis.dead_neuron_rate({"v": jnp.ones((2, 3), bool)})


def test_dead_neuron_rate_of_a_flax_mlp_from_captured_pre_activations():
  import flax.linen as nn

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(16)(x))
      x = nn.relu(nn.Dense(8)(x))
      return nn.Dense(3)(x)

  model = MLP()
  x = jax.random.normal(jax.random.key(0), (64, 5))
  variables = model.init(jax.random.key(1), x)
  _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  pre = {k: state["intermediates"][k]["__call__"][0] for k in ("Dense_0", "Dense_1")}
  rate = jaxprune.analysis.dead_neuron_rate(pre)
  dense = variables["params"]["Dense_0"]
  h = nn.relu(x @ dense["kernel"] + dense["bias"][None, :])
  assert rate.leaves["Dense_0"] == float(jnp.mean(h == 0))
  assert 0 < rate.total < 1
