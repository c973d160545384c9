"""Orbax checkpoints of a sharded pruned state restore onto a mesh of another size.

A state trained on 8 devices is saved as it is (each device writes its shards; no host gather),
restored onto 2 devices with the shardings of a template initialised there (and the reverse): the
masks, params and optimizer state come back bit for bit with the new mesh's shardings, and training
continues exactly as it does from the same state moved to that mesh without a checkpoint, and with
bit for bit as on the mesh it was saved from (the gradients are elementwise, so no mesh sums in
another order).
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune

SPECS = {
  "dense0": {"kernel": P("fsdp", "tp"), "bias": P("tp")},
  "dense1": {"kernel": P("tp", "fsdp"), "bias": P()},
}
MESH_SHAPES = {8: (4, 2), 2: (2, 1)}
SAVE_AT, STEPS = 3, 7


def mesh_of(n):
  devices = np.asarray(jax.devices()[:n]).reshape(MESH_SHAPES[n])
  return Mesh(devices, ("fsdp", "tp"))


def host_params():
  k = jax.random.split(jax.random.key(0), 2)
  return {
    "dense0": {"kernel": np.asarray(jax.random.normal(k[0], (16, 32))), "bias": np.zeros(32)},
    "dense1": {"kernel": np.asarray(jax.random.normal(k[1], (32, 8))), "bias": np.zeros(8)},
  }


def noise(step):
  """The step's gradient noise, shaped like the params."""
  keys = jax.random.split(jax.random.fold_in(jax.random.key(1), step), 4)
  leaves, treedef = jax.tree.flatten(host_params())
  return jax.tree.unflatten(treedef, [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])


def gradients(params, noise):
  # Elementwise, so that no mesh sums in another order: every mesh computes the same bits.
  return jax.tree.map(lambda p, n: n + 0.5 * p, params, noise)


# Mask updates both before and after the checkpoint, so the restored state keeps pruning.
PRUNERS = {
  "global_packed_gradual": lambda: optax.chain(
    optax.sgd(0.1, momentum=0.9),
    jaxprune.magnitude_pruning(
      0.9,
      distribution="global",
      packed_masks=True,
      schedule=jaxprune.schedules.polynomial(begin_step=1, end_step=5, frequency=2),
    ),
  ),
  "rigl_packed": lambda: jaxprune.rigl(
    0.8,
    frequency=2,
    begin_step=1,
    end_step=6,
    packed_masks=True,
    inner=optax.adam(1e-2),
  ),
}


def place(params, mesh):
  return jax.tree.map(lambda v, s: jax.device_put(v, NamedSharding(mesh, s)), params, SPECS)


def train(tx, params, state, start, stop):
  @jax.jit
  def step(params, state, noise):
    grads = gradients(params, noise)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for t in range(start, stop):
    params, state = step(params, state, noise(t))
  return params, state


def assert_equal_on(tree, reference, mesh):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(reference)):
    name = jax.tree_util.keystr(path)
    assert x.dtype == y.dtype, name
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
    assert set(x.sharding.device_set) <= set(mesh.devices.flat), name


@pytest.mark.parametrize("source,target", [(8, 2), (2, 8)])
@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_checkpoint_restores_onto_another_mesh_and_training_continues(
  tmp_path, name, source, target
):
  tx = PRUNERS[name]()
  src, dst = mesh_of(source), mesh_of(target)
  params = place(host_params(), src)
  params, state = train(tx, params, tx.init(params), 0, SAVE_AT)
  saved = {"params": params, "opt_state": state}
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "ckpt", saved)
  on_source = train(tx, params, state, SAVE_AT, STEPS)

  # The target mesh's template: a fresh init there gives every state leaf its sharding.
  template_params = place(host_params(), dst)
  template = {"params": template_params, "opt_state": tx.init(template_params)}
  targets = jaxprune.sharding.abstract(template, dst)
  with ocp.StandardCheckpointer() as ckpt:
    restored = ckpt.restore(tmp_path / "ckpt", targets)
  assert_equal_on(restored, saved, dst)
  kernel = restored["params"]["dense0"]["kernel"]
  assert kernel.sharding.mesh == dst and kernel.sharding.spec == SPECS["dense0"]["kernel"]
  (pruning_state,) = jaxprune.masks.find_states(
    restored["opt_state"], lambda s: hasattr(s, "masks")
  )
  packed = pruning_state.masks["dense0"]["kernel"]
  assert isinstance(packed, jaxprune.masks.PackedMask) and packed.bits.sharding.mesh == dst

  resumed = train(tx, restored["params"], restored["opt_state"], SAVE_AT, STEPS)
  # Exactly what the same state moved to the target mesh without a checkpoint computes.
  moved = jax.device_put(saved, jax.tree.map(lambda x: x.sharding, targets))
  without = train(tx, moved["params"], moved["opt_state"], SAVE_AT, STEPS)
  jax.tree.map(np.testing.assert_array_equal, resumed, without)
  # And exactly what the source mesh computes: the same masks, params and optimizer state.
  jax.tree.map(np.testing.assert_array_equal, resumed, on_source)
  masks = jaxprune.get_masks(resumed[1])
  assert jaxprune.sparsity_summary(masks) == jaxprune.sparsity_summary(
    jaxprune.get_masks(on_source[1])
  )
