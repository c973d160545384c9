"""The building blocks: schedules, allocations, scores, packed masks, get_masks, sparsity_summary."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune


def prune_once(tx, params, grads=None):
  state = tx.init(params)
  grads = jax.tree.map(jnp.zeros_like, params) if grads is None else grads
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


# Schedules.


def test_polynomial_schedule_values_follow_zhu_gupta():
  s = jaxprune.schedules.polynomial(begin_step=10, end_step=50, frequency=10)
  for t in range(0, 70):
    expected = 0.8 * (1 - (1 - min(max((t - 10) / 40, 0), 1)) ** 3)
    np.testing.assert_allclose(float(s.sparsity(jnp.int32(t), 0.8)), expected, rtol=1e-6, atol=1e-7)
  updates = [t for t in range(70) if bool(s.is_update_step(jnp.int32(t)))]
  assert updates == [10, 20, 30, 40, 50]


def test_polynomial_schedule_reaches_target_when_frequency_does_not_divide():
  s = jaxprune.schedules.polynomial(
    begin_step=0, end_step=10, frequency=4, power=2, initial_sparsity=0.2
  )
  assert [t for t in range(20) if bool(s.is_update_step(jnp.int32(t)))] == [0, 4, 8, 10]
  np.testing.assert_allclose(float(s.sparsity(jnp.int32(0), 0.9)), 0.2, rtol=1e-6)
  np.testing.assert_allclose(float(s.sparsity(jnp.int32(4), 0.9)), 0.9 - 0.7 * 0.6**2, rtol=1e-6)
  np.testing.assert_allclose(float(s.sparsity(jnp.int32(10), 0.9)), 0.9, rtol=1e-6)


def test_one_shot_schedule():
  s = jaxprune.schedules.one_shot(3)
  assert [t for t in range(10) if bool(s.is_update_step(jnp.int32(t)))] == [3]
  assert s.sparsity(jnp.int32(3), 0.7) == 0.7


def test_one_shot_prunes_at_its_step_only():
  params = {"w": jax.random.normal(jax.random.key(0), (10, 10))}
  tx = optax.chain(
    optax.sgd(0.1), jaxprune.magnitude_pruning(0.5, schedule=jaxprune.schedules.one_shot(2))
  )
  state = tx.init(params)
  zeros = []
  for t in range(4):
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
    zeros.append(int((params["w"] == 0).sum()))
  assert zeros == [0, 0, 50, 50]


def test_default_schedule_prunes_at_first_update_and_keeps_masks():
  params = {"w": jax.random.normal(jax.random.key(0), (10, 10))}
  tx = jaxprune.magnitude_pruning(0.3, inner=optax.sgd(1.0))
  state = tx.init(params)
  first = None
  for t in range(3):
    grads = {"w": jax.random.normal(jax.random.key(t + 1), (10, 10))}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    masks = jaxprune.get_masks(state)["w"]
    first = masks if first is None else first
    np.testing.assert_array_equal(masks, first)
  assert int((~first).sum()) == 30


def test_gradual_pruning_is_monotone():
  # Weights pruned at one mask update stay pruned at the next.
  params = {"w": jax.random.normal(jax.random.key(0), (20, 20))}
  sched = jaxprune.schedules.polynomial(begin_step=0, end_step=6, frequency=2)
  tx = jaxprune.random_pruning(0.9, seed=1, schedule=sched, inner=optax.sgd(0.1))
  state = tx.init(params)
  prev = np.ones((20, 20), bool)
  for t in range(7):
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
    m = np.asarray(jaxprune.get_masks(state)["w"])
    assert np.all(m <= prev)
    prev = m
  assert (~prev).sum() == 360


# Allocations.


def test_erk_matches_formula_and_budget():
  shapes = [(3, 3, 1, 20), (3, 3, 20, 50), (800, 500), (500, 10)]
  sizes = np.array([math.prod(s) for s in shapes], float)
  sparsities = np.array(jaxprune.allocation.erk(0.9, shapes))
  densities = 1 - sparsities
  np.testing.assert_allclose((densities * sizes).sum(), 0.1 * sizes.sum(), rtol=1e-9)
  raw = np.array([sum(s) / math.prod(s) for s in shapes])
  free = densities < 1
  ratio = densities[free] / raw[free]
  np.testing.assert_allclose(
    ratio, ratio[0], rtol=1e-9
  )  # density = eps * raw for every non-dense leaf
  assert densities[0] == 1.0  # the tiny first conv would exceed density 1 and is made dense


def test_er_uses_only_the_last_two_dims():
  shapes = [(3, 3, 20, 50), (100, 40)]
  d = 1 - np.array(jaxprune.allocation.er(0.8, shapes))
  raw = np.array([(20 + 50) / (20 * 50), (100 + 40) / (100 * 40)])
  np.testing.assert_allclose(d[0] / raw[0], d[1] / raw[1], rtol=1e-9)


def test_erk_traced_matches_python():
  shapes = [(3, 3, 1, 20), (3, 3, 20, 50), (800, 500), (500, 10)]
  py = jaxprune.allocation.erk(0.95, shapes)
  traced = jax.jit(lambda s: jnp.stack(jaxprune.allocation.erk(s, shapes)))(0.95)
  np.testing.assert_allclose(np.asarray(traced), py, rtol=1e-5, atol=1e-6)


def test_erk_pruner_exact_counts_per_leaf():
  params = {
    "a": jax.random.normal(jax.random.key(0), (50, 40)),
    "b": jax.random.normal(jax.random.key(1), (40, 4)),
  }
  _, state = prune_once(jaxprune.magnitude_pruning(0.8, distribution="erk"), params)
  masks = jaxprune.get_masks(state)
  expected = jaxprune.allocation.erk(0.8, [(50, 40), (40, 4)])
  assert int((~masks["a"]).sum()) == round(expected[0] * 2000)
  assert int((~masks["b"]).sum()) == round(expected[1] * 160)


def test_override_prunes_a_leaf_to_its_own_sparsity():
  params = {
    "hidden": {"kernel": jax.random.normal(jax.random.key(0), (30, 30))},
    "out": {"kernel": jax.random.normal(jax.random.key(1), (30, 10))},
  }
  tx = jaxprune.magnitude_pruning(0.8, overrides={"out/.*": 0.4})
  _, state = prune_once(tx, params)
  masks = jaxprune.get_masks(state)
  assert int((~masks["hidden"]["kernel"]).sum()) == 720
  assert int((~masks["out"]["kernel"]).sum()) == 120


def test_global_with_override_keeps_override_out_of_the_threshold():
  params = {
    "a": jnp.arange(1.0, 101.0).reshape(10, 10),
    "b": 1000 + jnp.arange(100.0).reshape(10, 10),
    "c": jnp.ones((4, 5)),
  }
  tx = jaxprune.magnitude_pruning(0.5, distribution="global", overrides={"c": 0.25})
  _, state = prune_once(tx, params)
  masks = jaxprune.get_masks(state)
  assert int((~masks["a"]).sum()) == 100 and int((~masks["b"]).sum()) == 0  # one threshold
  assert int((~masks["c"]).sum()) == 5


def test_custom_allocation_function():
  params = {"a": jnp.ones((10, 10)), "b": jnp.ones((10, 10))}
  tx = jaxprune.magnitude_pruning(0.5, distribution=lambda s, shapes: [s / 2, s])
  _, state = prune_once(tx, params)
  masks = jaxprune.get_masks(state)
  assert int((~masks["a"]).sum()) == 25 and int((~masks["b"]).sum()) == 50


def test_prune_selector_by_pattern_and_predicate():
  params = {"a": {"kernel": jnp.ones((4, 4))}, "b": {"kernel": jnp.ones((4, 4))}, "v": jnp.ones(8)}
  masks = jaxprune.get_masks(prune_once(jaxprune.magnitude_pruning(0.5, prune="a/.*"), params)[1])
  assert masks["b"]["kernel"] is None and int((~masks["a"]["kernel"]).sum()) == 8
  masks = jaxprune.get_masks(
    prune_once(jaxprune.magnitude_pruning(0.5, prune=lambda path, leaf: leaf.ndim == 1), params)[1]
  )
  assert masks["a"]["kernel"] is None and int((~masks["v"]).sum()) == 4


# Scores.


def test_saliency_uses_raw_gradients_with_inner():
  params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
  grads = {"w": jnp.array([[4.0, 0.1], [1.0, 1.0]])}  # |w*g| = 4, 0.2, 3, 4
  _, state = prune_once(jaxprune.saliency_pruning(0.5, inner=optax.adam(0.1)), params, grads)
  np.testing.assert_array_equal(jaxprune.get_masks(state)["w"], [[True, False], [False, True]])


def test_random_scores_are_seeded():
  params = {"w": jnp.ones((16, 16))}
  m = lambda seed: np.asarray(
    jaxprune.get_masks(prune_once(jaxprune.random_pruning(0.5, seed=seed), params)[1])["w"]
  )
  np.testing.assert_array_equal(m(0), m(0))
  assert not np.array_equal(m(0), m(1))


def test_custom_score_function():
  params = {"w": jnp.arange(16.0).reshape(4, 4)}
  # Keep the smallest weights instead: score = -|w|.
  tx = jaxprune.pruning(lambda p, g, count: jax.tree.map(lambda x: -jnp.abs(x), p), 0.25)
  _, state = prune_once(tx, params)
  m = np.asarray(jaxprune.get_masks(state)["w"]).ravel()
  assert m[:12].all() and not m[12:].any()


# Masks: packing and get_masks in composite states.


def test_packed_masks_use_one_bit_per_weight_and_match_unpacked():
  params = {"w": jax.random.normal(jax.random.key(0), (64, 100))}
  _, packed = prune_once(jaxprune.magnitude_pruning(0.7, packed_masks=True), params)
  _, plain = prune_once(jaxprune.magnitude_pruning(0.7), params)
  bits = packed.masks["w"]
  assert isinstance(bits, jaxprune.PackedMask) and bits.bits.dtype == jnp.uint8
  assert bits.bits.shape == (64, 13) and bits.padding.shape == (5,)
  np.testing.assert_array_equal(jaxprune.get_masks(packed)["w"], jaxprune.get_masks(plain)["w"])


@pytest.mark.parametrize("shape", [(5,), (3, 10), (2, 9, 16), (4, 1, 3)])
def test_pack_along_every_axis_round_trips(shape):
  mask = jax.random.bernoulli(jax.random.key(1), 0.4, shape)
  for axis in range(-len(shape), len(shape)):
    packed = jaxprune.masks.pack(mask, axis)
    a = axis % len(shape)
    assert packed.bits.shape == shape[:a] + (-(-shape[a] // 8),) + shape[a + 1 :]
    assert jaxprune.masks.packed_axis(packed) == a
    np.testing.assert_array_equal(jaxprune.masks.unpack(packed), mask)
  with pytest.raises(ValueError, match="axis 3 is not an axis"):
    jaxprune.masks.pack(jnp.ones((2, 2, 2), bool), 3)


def test_pack_axis_keeps_the_params_sharding():
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  put = lambda shape, spec: jax.device_put(jnp.zeros(shape), NamedSharding(mesh, spec))
  assert jaxprune.masks.pack_axis(jnp.zeros((16, 32))) == 1  # unsharded: the last axis
  assert jaxprune.masks.pack_axis(put((16, 32), P(None, "model"))) == 0  # the unsharded rows
  assert jaxprune.masks.pack_axis(put((16, 4), P())) == 0  # >= 8 entries: no padding per row
  # Both axes split: the one whose shards hold whole bytes (32 / 2 = 16 columns, 16 / 4 = 4 rows).
  assert jaxprune.masks.pack_axis(put((16, 32), P("data", "model"))) == 1
  assert jaxprune.masks.pack_axis(put((64, 4), P("data", "model"))) == 0
  assert jaxprune.masks.pack_axis(jnp.zeros(())) == -1


def test_count_true_in_blocks_is_exact():
  x = jax.random.bernoulli(jax.random.key(2), 0.3, (7, 5, 6))
  want = int(np.asarray(x).sum())
  for limit in (1, 4, 29, 30, 31, 209, 210, 10**6):
    assert jaxprune.masks.count_true(x, limit=limit) == want, limit
  assert jaxprune.masks.count_true(np.float32(2.0)) == 1


def test_get_masks_inside_partition():
  params = {
    "enc": {"kernel": jax.random.normal(jax.random.key(0), (8, 8))},
    "dec": {"kernel": jax.random.normal(jax.random.key(1), (8, 8))},
  }
  labels = {"enc": {"kernel": "pruned"}, "dec": {"kernel": "dense"}}
  tx = optax.chain(
    optax.adam(1e-2),
    optax.partition({"pruned": jaxprune.magnitude_pruning(0.5), "dense": optax.identity()}, labels),
  )
  params, state = prune_once(tx, params)
  masks = jaxprune.get_masks(state)
  assert masks["dec"]["kernel"] is None
  assert int((~masks["enc"]["kernel"]).sum()) == 32
  assert int((params["enc"]["kernel"] == 0).sum()) == 32


def test_get_masks_combines_two_pruners():
  params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
  tx = optax.chain(
    optax.sgd(0.1), jaxprune.magnitude_pruning(0.25), jaxprune.random_pruning(0.25, seed=0)
  )
  params, state = prune_once(tx, params)
  masks = jaxprune.get_masks(state)["w"]
  np.testing.assert_array_equal(np.asarray(params["w"]) == 0, ~np.asarray(masks))
  assert 4 <= int((~masks).sum()) <= 8


def test_get_masks_inside_inject_hyperparams_and_multisteps():
  params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
  tx = optax.MultiSteps(
    optax.inject_hyperparams(jaxprune.magnitude_pruning)(sparsity=0.5, inner=optax.sgd(0.1)),
    every_k_schedule=1,
  )
  _, state = prune_once(tx, params)
  assert int((~jaxprune.get_masks(state)["w"]).sum()) == 32


# Summary.


def test_sparsity_summary_counts():
  tree = {"a": jnp.array([[0.0, 1.0], [0.0, 0.0]]), "b": jnp.array([True, False, True]), "c": None}
  s = jaxprune.sparsity_summary(tree)
  assert s.leaves["a"] == (4, 3, 0.75)
  assert s.leaves["b"] == (3, 1, 1 / 3)
  assert (s.size, s.zeros) == (7, 4) and s.sparsity == 4 / 7
  assert "total" in str(s) and "a" in str(s)


def test_sparsity_summary_of_packed_masks_state():
  params = {"w": jax.random.normal(jax.random.key(0), (8, 10))}
  _, state = prune_once(jaxprune.magnitude_pruning(0.5, packed_masks=True), params)
  assert jaxprune.sparsity_summary(state.masks).zeros == 40


def test_importing_the_core_library_loads_no_data_plot_or_notebook_package():
  import subprocess
  import sys

  code = (
    "import sys, jaxprune; heavy = [m for m in ('tensorflow_datasets', 'tensorflow', 'matplotlib', "
    "'nbclient', 'flax', 'ml_collections') if m in sys.modules]; print(heavy)"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"
