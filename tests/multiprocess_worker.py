"""One of the processes of tests/test_multiprocess.py (not a test module itself).

Usage: python multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT

Each process has 4 CPU devices; together they form a (4, 2) mesh ("fsdp", "tp") whose rows span
both processes. The params of a small MLP are sharded FSDP and tensor-parallel over it, a global
magnitude pruner (packed masks) and one with a gradual schedule run a few jitted training steps,
and every process checks that its shards of the params and masks are those one device computes
alone, and that the summaries, the mask analysis and the collapse check (which reduce on the
devices) give one device's answers. The same runs on a mesh with Auto and with Explicit axes.
Prints "ok <mode>" per mesh; any failure raises.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, nproc, port = (int(a) for a in sys.argv[1:4])
jax.distributed.initialize(f"localhost:{port}", num_processes=nproc, process_id=pid)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxprune  # noqa: E402

SPECS = {
  "dense0": {"kernel": P("fsdp", "tp"), "bias": P("tp")},
  "dense1": {"kernel": P("tp", "fsdp"), "bias": P()},
}
STEPS = 4


def host_params():
  k = jax.random.split(jax.random.key(0), 2)
  return {
    "dense0": {"kernel": np.asarray(jax.random.normal(k[0], (16, 32))), "bias": np.zeros(32)},
    "dense1": {"kernel": np.asarray(jax.random.normal(k[1], (32, 8))), "bias": np.zeros(8)},
  }


def host_batch(step):
  k = jax.random.split(jax.random.fold_in(jax.random.key(1), step), 2)
  return np.asarray(jax.random.normal(k[0], (8, 16))), np.asarray(jax.random.normal(k[1], (8, 8)))


def loss(params, x, y, out_sharding=None):
  # On an Explicit mesh the second matmul contracts a sharded axis: JAX asks for its output's
  # sharding (the batch stays split over "fsdp").
  h = jax.nn.relu(x @ params["dense0"]["kernel"] + params["dense0"]["bias"])
  out = jnp.matmul(h, params["dense1"]["kernel"], out_sharding=out_sharding)
  return jnp.mean((out + params["dense1"]["bias"] - y) ** 2)


def pruners():
  yield "global_packed", jaxprune.magnitude_pruning(0.9, distribution="global", packed_masks=True)
  yield (
    "gradual_erk",
    jaxprune.magnitude_pruning(
      0.8,
      distribution="erk",
      schedule=jaxprune.schedules.polynomial(begin_step=0, end_step=3, frequency=1),
    ),
  )


def train(tx, put, batch_put, out_sharding=None):
  """STEPS jitted steps of SGD + ``tx``; ``put`` places params, ``batch_put`` a batch."""
  tx = optax.chain(optax.sgd(0.1), tx)
  params = jax.tree.map(put, host_params(), SPECS)
  state = tx.init(params)

  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(loss)(params, x, y, out_sharding)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for t in range(STEPS):
    x, y = host_batch(t)
    params, state = step(params, state, batch_put(x), batch_put(y))
  return params, state


def check_shards(name, array, reference, exact):
  assert array.shape == reference.shape, (name, array.shape, reference.shape)
  reference = np.asarray(reference)
  for shard in array.addressable_shards:
    got, want = np.asarray(shard.data), reference[shard.index]
    if exact:
      np.testing.assert_array_equal(got, want, err_msg=name)
    else:
      # The sharded matmuls sum in another order than one device does.
      np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6, err_msg=name)
      np.testing.assert_array_equal(got == 0, want == 0, err_msg=name)


def run(mode):
  types = (AxisType.Explicit if mode == "explicit" else AxisType.Auto,) * 2
  mesh = jax.make_mesh((4, 2), ("fsdp", "tp"), axis_types=types)
  assert mesh.devices.shape == (4, 2) and jax.device_count() == 4 * nproc
  local = jax.local_devices()[0]

  def put(value, spec):
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(value.shape, sharding, lambda i: value[i])

  batch_spec = P("fsdp")
  for name, tx in pruners():
    ref_params, ref_state = train(
      tx, lambda v, s: jax.device_put(v, local), lambda v: jax.device_put(v, local)
    )
    if mode == "explicit":
      with jax.set_mesh(mesh):
        params, state = train(tx, put, lambda v: put(v, batch_spec), P("fsdp", None))
    else:
      params, state = train(tx, put, lambda v: put(v, batch_spec))
    assert not params["dense0"]["kernel"].is_fully_addressable  # the arrays span processes
    assert params["dense0"]["kernel"].sharding.spec == SPECS["dense0"]["kernel"]
    masks, ref_masks = jaxprune.get_masks(state), jaxprune.get_masks(ref_state)
    for layer in SPECS:
      check_shards(f"{name} {layer} mask", masks[layer]["kernel"], ref_masks[layer]["kernel"], True)
      for leaf in ("kernel", "bias"):
        check_shards(
          f"{name} {layer} {leaf}", params[layer][leaf], ref_params[layer][leaf], exact=False
        )
    # Reporting reduces on the devices: no host gather of arrays that span processes.
    summary = jaxprune.sparsity_summary(masks)
    assert summary == jaxprune.sparsity_summary(ref_masks), name
    assert jaxprune.sparsity_summary(params) == jaxprune.sparsity_summary(ref_params), name
    overlap = jaxprune.analysis.mask_overlap(masks, ref_masks_sharded(ref_masks, put))
    assert overlap.total.iou == 1.0, name
    assert jaxprune.collapse.layer_collapse(masks) == jaxprune.collapse.layer_collapse(ref_masks)
    print(f"ok {mode} {name} sparsity={summary.sparsity:.4f}", flush=True)


def ref_masks_sharded(ref_masks, put):
  """One device's masks placed on the mesh, to compare two sharded trees."""
  specs = jax.tree.map(lambda m, s: s, ref_masks, SPECS, is_leaf=lambda x: x is None)
  return jax.tree.map(
    lambda m, s: None if m is None else put(np.asarray(m), s),
    ref_masks,
    specs,
    is_leaf=lambda x: x is None,
  )


if __name__ == "__main__":
  for mode in ("auto", "explicit"):
    run(mode)
  jax.distributed.shutdown()
