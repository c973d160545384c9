"""Stacked leaves (scan over layers) pruned as one leaf per layer: `jaxprune.allocation.stacked`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune.allocation import stacked

LAYERS = 4


def _stacked_params():
  k = jax.random.split(jax.random.key(0), 3)
  return {
    "blocks": {
      "kernel": jax.random.normal(k[0], (LAYERS, 6, 8)),
      "proj": {"kernel": jax.random.normal(k[1], (8, LAYERS, 5))},  # stacked axis 1
      "bias": jnp.ones((LAYERS, 8)),
    },
    "head": {"kernel": jax.random.normal(k[2], (8, 3))},
  }


def _unstacked(params):
  """The same weights as separate leaves, one per layer."""
  blocks = params["blocks"]
  out = {"head": params["head"]}
  for layer in range(LAYERS):
    out[f"layer{layer}"] = {
      "kernel": blocks["kernel"][layer],
      "proj": {"kernel": blocks["proj"]["kernel"][:, layer]},
      "bias": blocks["bias"][layer],
    }
  return out


def _masks(tx, params, jit):
  update = jax.jit(tx.update) if jit else tx.update
  grads = jax.tree.map(jnp.ones_like, params)
  _, state = update(grads, tx.init(params), params)
  return jaxprune.get_masks(state)


@pytest.mark.parametrize("jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("distribution", ["uniform", "erk", "er"])
def test_stacked_leaf_is_pruned_like_one_leaf_per_layer(distribution, jit):
  params = _stacked_params()
  axes = {"blocks/kernel": 0, "blocks/proj/kernel": 1}
  tx = jaxprune.magnitude_pruning(
    0.7, distribution=stacked(distribution, axes=axes), inner=optax.sgd(0.0)
  )
  got = _masks(tx, params, jit)
  ref_tx = jaxprune.magnitude_pruning(0.7, distribution=distribution, inner=optax.sgd(0.0))
  want = _masks(ref_tx, _unstacked(params), jit)
  assert got["blocks"]["kernel"].shape == (LAYERS, 6, 8)
  assert got["blocks"]["proj"]["kernel"].shape == (8, LAYERS, 5)
  for layer in range(LAYERS):
    np.testing.assert_array_equal(got["blocks"]["kernel"][layer], want[f"layer{layer}"]["kernel"])
    np.testing.assert_array_equal(
      got["blocks"]["proj"]["kernel"][:, layer], want[f"layer{layer}"]["proj"]["kernel"]
    )
  np.testing.assert_array_equal(got["head"]["kernel"], want["head"]["kernel"])
  if distribution == "uniform":  # exactly round(0.7 * 48) = 34 pruned in every layer
    np.testing.assert_array_equal(np.sum(~got["blocks"]["kernel"], axis=(1, 2)), [34] * LAYERS)


def test_stacked_is_not_the_same_as_one_leaf():
  # The point of the option: without it, a layer-wise 70% is shared by all layers of the leaf.
  params = _stacked_params()
  params["blocks"]["kernel"] = (
    params["blocks"]["kernel"] * jnp.arange(1.0, LAYERS + 1)[:, None, None]
  )
  tx = jaxprune.magnitude_pruning(0.7, prune=lambda p, x: p == "blocks/kernel", inner=optax.sgd(0))
  whole = np.sum(_masks(tx, params, True)["blocks"]["kernel"], axis=(1, 2))
  assert whole[0] < whole[-1] and whole.sum() == 48 * LAYERS - round(0.7 * 48 * LAYERS)
  tx = jaxprune.magnitude_pruning(
    0.7,
    prune=lambda p, x: p == "blocks/kernel",
    distribution=stacked(axes={"blocks/kernel": 0}),
    inner=optax.sgd(0),
  )
  per_layer = np.sum(_masks(tx, params, True)["blocks"]["kernel"], axis=(1, 2))
  np.testing.assert_array_equal(per_layer, [48 - 34] * LAYERS)


def test_overrides_match_the_leaf_or_one_layer():
  params = _stacked_params()
  dist = stacked(axes={"blocks/kernel": 0})
  prune = lambda p, x: p == "blocks/kernel"
  tx = jaxprune.magnitude_pruning(
    0.5, distribution=dist, prune=prune, overrides={"blocks/kernel": 0.25}, inner=optax.sgd(0)
  )
  kept = np.sum(_masks(tx, params, True)["blocks"]["kernel"], axis=(1, 2))
  np.testing.assert_array_equal(kept, [36] * LAYERS)
  tx = jaxprune.magnitude_pruning(
    0.5, distribution=dist, prune=prune, overrides={r"blocks/kernel\[2\]": 0.75}, inner=optax.sgd(0)
  )
  kept = np.sum(_masks(tx, params, True)["blocks"]["kernel"], axis=(1, 2))
  np.testing.assert_array_equal(kept, [24, 24, 12, 24])


def test_block_pattern_applies_to_each_layer():
  params = {"blocks": {"kernel": jax.random.normal(jax.random.key(3), (3, 8, 8))}}
  tx = jaxprune.magnitude_pruning(
    0.5,
    pattern=jaxprune.patterns.block((2, 4)),
    distribution=stacked(axes={".*": 0}),
    inner=optax.sgd(0),
  )
  mask = np.asarray(_masks(tx, params, True)["blocks"]["kernel"])
  blocks = mask.reshape(3, 4, 2, 2, 4).transpose(0, 1, 3, 2, 4).reshape(3, 8, 8)
  assert np.all(blocks.all(-1) | ~blocks.any(-1))  # whole blocks
  np.testing.assert_array_equal(mask.sum(axis=(1, 2)), [32, 32, 32])


def test_gradual_rigl_and_imp_keep_per_layer_counts():
  params = _stacked_params()
  dist = stacked(axes={"blocks/kernel": 0})
  prune = lambda p, x: p.endswith("kernel")
  grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(9), x.shape), params)
  txs = {
    "gradual": jaxprune.magnitude_pruning(
      0.5,
      distribution=dist,
      prune=prune,
      schedule=jaxprune.schedules.polynomial(begin_step=0, end_step=2, frequency=1),
      inner=optax.sgd(0.1),
    ),
    "rigl": jaxprune.rigl(
      0.5, distribution=dist, prune=prune, end_step=100, frequency=1, inner=optax.sgd(0.1)
    ),
    "imp_random": jaxprune.imp(
      0.5,
      cycles=2,
      cycle_steps=[1, 1, 1],
      distribution=dist,
      prune=prune,
      random_masks=True,
      inner=optax.sgd(0.1),
    ),
  }
  for name, tx in txs.items():
    state, p = tx.init(params), params
    step = jax.jit(tx.update)
    for _ in range(4):
      updates, state = step(grads, state, p)
      p = optax.apply_updates(p, updates)
    kept = np.sum(jaxprune.get_masks(state)["blocks"]["kernel"], axis=(1, 2))
    assert len(set(kept.tolist())) == 1, (name, kept)  # every layer pruned alike
    assert np.all(np.sum(np.asarray(p["blocks"]["kernel"]) != 0, axis=(1, 2)) <= kept), name


def test_sharded_stacked_equals_single_device():
  assert jax.device_count() == 8  # tests/conftest.py simulates 8 CPU devices
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("model",))
  params = _stacked_params()
  spec = jax.sharding.PartitionSpec
  shardings = {
    "blocks": {
      "kernel": spec(None, None, "model"),
      "proj": {"kernel": spec("model", None, None)},
      "bias": spec(None, "model"),
    },
    "head": {"kernel": spec("model", None)},
  }
  sharded = jax.tree.map(
    lambda x, s: jax.device_put(x, jax.sharding.NamedSharding(mesh, s)), params, shardings
  )
  tx = jaxprune.magnitude_pruning(
    0.7,
    distribution=stacked("erk", axes={"blocks/kernel": 0, "blocks/proj/kernel": 1}),
    inner=optax.sgd(0),
  )
  got = _masks(tx, sharded, True)
  want = _masks(tx, params, True)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_bad_stacked_options_raise_clear_errors():
  with pytest.raises(ValueError, match="'global'"):
    stacked("global", axes={".*": 0})
  with pytest.raises(ValueError, match="unknown distribution 'erq'"):
    stacked("erq", axes={".*": 0})
  with pytest.raises(ValueError, match="non-empty mapping"):
    stacked(axes={})
  with pytest.raises(ValueError, match="not a valid regular expression"):
    stacked(axes={"(": 0})
  with pytest.raises(ValueError, match="must be an int, got 'x'"):
    stacked(axes={".*": "x"})
  params = _stacked_params()
  tx = jaxprune.magnitude_pruning(0.5, distribution=stacked(axes={"blocks/kernel": 3}))
  with pytest.raises(ValueError, match="axis 3 of leaf 'blocks/kernel'"):
    tx.init(params)
  tx = jaxprune.magnitude_pruning(
    0.5, distribution=stacked(axes={"blocks/kernel": 0, "blocks/k.*": 0})
  )
  with pytest.raises(ValueError, match="matched by two stacked patterns"):
    tx.init(params)
  group = jaxprune.groups.group(("blocks/kernel", 2), ("blocks/bias", 1), name="units")
  tx = jaxprune.magnitude_pruning(
    0.5, distribution=stacked(axes={"blocks/kernel": 0}), groups=[group]
  )
  with pytest.raises(ValueError, match="group 'units' has members stacked differently"):
    tx.init(params)
  group = jaxprune.groups.group(("blocks/kernel", 0), name="layers")
  tx = jaxprune.magnitude_pruning(
    0.5, distribution=stacked(axes={"blocks/kernel": 0}), groups=[group]
  )
  with pytest.raises(ValueError, match="along axis 0, its stacked"):
    tx.init(params)


@pytest.mark.parametrize("jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_a_group_over_stacked_leaves_is_pruned_layer_by_layer(distribution, jit):
  # Units (heads, channels) coupled across stacked leaves: with a stacked distribution the group
  # becomes one unit per layer, as if each layer's leaves were separate leaves with their own
  # group (each layer keeps its own units, not unit c of every layer at once).
  params = _stacked_params()
  group = jaxprune.groups.group(("blocks/kernel", 2), ("blocks/bias", 1), name="units")
  axes = {"blocks/kernel": 0, "blocks/bias": 0}
  tx = jaxprune.magnitude_pruning(
    0.5, distribution=stacked(distribution, axes=axes), groups=[group], prune=[]
  )
  tx = optax.chain(optax.sgd(0.0), tx)
  got = _masks(tx, params, jit)
  flat = _unstacked(params)
  groups = [
    jaxprune.groups.group((f"layer{n}/kernel", 1), (f"layer{n}/bias", 0), name=f"units[{n}]")
    for n in range(LAYERS)
  ]
  ref_tx = jaxprune.magnitude_pruning(0.5, distribution=distribution, groups=groups, prune=[])
  want = _masks(optax.chain(optax.sgd(0.0), ref_tx), flat, jit)
  kernel, bias = np.asarray(got["blocks"]["kernel"]), np.asarray(got["blocks"]["bias"])
  for n in range(LAYERS):
    np.testing.assert_array_equal(kernel[n], want[f"layer{n}"]["kernel"])
    np.testing.assert_array_equal(bias[n], want[f"layer{n}"]["bias"])
    assert (~bias[n]).sum() == 4  # half of each layer's 8 units
    np.testing.assert_array_equal(kernel[n], np.broadcast_to(bias[n], (6, 8)))
  kept = [tuple(np.flatnonzero(bias[n])) for n in range(LAYERS)]
  assert len(set(kept)) > 1  # layers keep different units: selected layer by layer
