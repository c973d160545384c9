"""Mask overlap: IoU and shared fractions, per leaf and in total."""

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
