"""The contract's rank variant: transformations that project kernels onto a rank instead of masking.

Every entry of `pruners.PROJECTIONS` (LRPET) keeps the contract of `tests/test_conformance.py`
with "exact rank" in place of "exact zeros": after each projection step (updates 1, 3 and 5 of the
suite's history) every projected kernel has exactly its rank (its singular values beyond the rank
are rounding noise, below 1e-6 of the largest in float32), the other steps pass the optimizer's
updates through unchanged, and the transformation works in a chain and with ``inner=``, under
``jit`` without recompilation, inside ``inject_hyperparams`` and ``MultiSteps``, in bf16, in Flax
linen and nnx training loops, and sharded on a device mesh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from pruners import PROJECTION_STEPS, PROJECTIONS
from test_conformance import (
  STEPS,
  UPDATE_STEPS,
  _placed_like_params,
  kernels,
  make_grads,
  make_params,
  optimizer,
  run,
)

import jaxprune


def _grouped(entry, *rest):
  return pytest.param(entry, *rest, marks=pytest.mark.xdist_group(entry.name))


entries = pytest.mark.parametrize(
  "entry", [_grouped(e) for e in PROJECTIONS], ids=[e.name for e in PROJECTIONS]
)
_FORMS = [(e, f) for e in PROJECTIONS for f in ("chain", "inner")]
forms = pytest.mark.parametrize(
  "entry,form", [_grouped(e, f) for e, f in _FORMS], ids=[f"{e.name}-{f}" for e, f in _FORMS]
)


def build(entry, form, **kwargs):
  kwargs = {**PROJECTION_STEPS, **kwargs}
  if form == "chain":
    return optax.chain(optimizer(), entry.make(**kwargs))
  return entry.make(inner=optimizer(), **kwargs)


_HISTORIES: dict = {}


def history(entry, form, use_jit=True):
  key = (entry.name, form, use_jit)
  if key not in _HISTORIES:
    traces: list = []
    _HISTORIES[key] = run(build(entry, form), make_params(), use_jit, traces=traces), len(traces)
  return _HISTORIES[key][0]


def singular_values(x) -> np.ndarray:
  return np.linalg.svd(np.asarray(x, np.float32), compute_uv=False)


def check_ranks(entry, kernel_tree, step, tolerance=1e-6, kept=1e-4):
  """After a projection step each kernel has exactly its rank; before the first, full rank."""
  for name, w in kernels(kernel_tree).items():
    s = singular_values(w)
    if step in UPDATE_STEPS or step > UPDATE_STEPS[-1]:
      r = entry.ranks[name]
      assert s[r - 1] > kept * s[0], (entry.name, name, step, s)  # the kept ones
      assert np.all(s[r:] <= tolerance * s[0]), (entry.name, name, step, s)
    elif step < UPDATE_STEPS[0]:
      assert s[-1] > 1e-3 * s[0], (name, step, s)  # untouched: full rank


def check_history(entry, hist, tolerance=1e-6, kept=1e-4):
  for step, (params, _, _) in enumerate(hist):
    if step in UPDATE_STEPS or step < UPDATE_STEPS[0]:
      check_ranks(entry, params, step, tolerance, kept)


def _reference_updates():
  """The suite's optimizer's updates for its gradients (SGD's do not depend on the params)."""
  tx = optimizer()
  state = tx.init(make_params())
  out = []
  for step in range(STEPS):
    u, state = tx.update(make_grads(make_params(), step), state)
    out.append(u)
  return out


@forms
def test_contract(entry, form):
  hist = history(entry, form)
  check_history(entry, hist)
  reference = _reference_updates()
  previous = make_params()
  for step, (params, masks, state) in enumerate(hist):
    assert all(m is None for m in jax.tree.leaves(masks, is_leaf=lambda x: x is None))
    trained = optax.apply_updates(previous, reference[step])
    if step in UPDATE_STEPS:
      expected = jaxprune.low_rank.project(
        trained,
        entry.kwargs.get("rank"),
        prune_ratio=entry.kwargs.get("prune_ratio"),
        energy_transfer=entry.kwargs.get("energy_transfer", True),
      )
      for name, w in kernels(params).items():
        np.testing.assert_allclose(w, kernels(expected)[name], rtol=1e-4, atol=1e-5)
        if entry.kwargs.get("energy_transfer", True):  # the Frobenius norm is kept
          np.testing.assert_allclose(
            np.linalg.norm(w), np.linalg.norm(kernels(trained)[name]), rtol=1e-5
          )
      for layer in ("dense0", "dense1"):  # biases are not projected
        np.testing.assert_allclose(params[layer]["bias"], trained[layer]["bias"], rtol=1e-6)
    else:  # the optimizer's updates pass through unchanged
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), params, trained)
    previous = params
  [state] = [
    s
    for s in jax.tree.leaves(hist[-1][2], is_leaf=lambda x: isinstance(x, jaxprune.PruningState))
    if isinstance(s, jaxprune.PruningState)
  ]
  assert int(state.count) == STEPS


@forms
def test_jit_equals_nojit(entry, form):
  a, b = history(entry, form, use_jit=False), history(entry, form)
  check_history(entry, a)
  for (pa, _, _), (pb, _, _) in zip(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), pa, pb)


@entries
def test_chain_form_equals_inner_form(entry):
  for (pa, _, _), (pb, _, _) in zip(history(entry, "chain"), history(entry, "inner")):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), pa, pb)


@forms
def test_no_recompilation(entry, form):
  history(entry, form)
  assert _HISTORIES[(entry.name, form, True)][1] == 1


@entries
def test_state_has_fixed_shapes_and_dtypes(entry):
  tx = build(entry, "inner")
  params = make_params()
  state0 = tx.init(params)
  _, state1 = jax.jit(tx.update)(make_grads(params, 0), state0, params)
  shape = lambda t: [(x.shape, x.dtype) for x in jax.tree.leaves(t)]
  assert shape(state0) == shape(state1)
  assert jax.tree.structure(state0) == jax.tree.structure(state1)


@forms
def test_unknown_extra_args_accepted(entry, form):
  tx = build(entry, form)
  params = make_params()
  state = tx.init(params)
  updates, state = tx.update(make_grads(params, 0), state, params, loss=1.0, something_else="x")
  updates, state = tx.update(make_grads(params, 1), state, params, loss=1.0)
  assert jax.tree.structure(updates) == jax.tree.structure(params)


@entries
def test_inside_inject_hyperparams(entry):
  injected = optax.inject_hyperparams(entry.factory, static_args=entry.static_args)
  tx = injected(**entry.kwargs, **PROJECTION_STEPS, inner=optimizer())
  check_history(entry, run(tx, make_params()))


@entries
def test_inside_multisteps(entry):
  tx = optax.MultiSteps(build(entry, "chain"), every_k_schedule=2)
  hist = run(tx, make_params(), steps=2 * STEPS)
  check_history(entry, [hist[i] for i in range(1, 2 * STEPS, 2)])


@forms
def test_bf16_params_stay_bf16(entry, form):
  hist = run(build(entry, form), make_params(jnp.bfloat16))
  for params, _, _ in hist:
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  # bf16 rounds the projected kernel: its other singular values are below 2% of the largest.
  check_history(entry, hist, tolerance=2e-2, kept=0.05)


@entries
def test_flax_linen_train_state(entry):
  import flax.linen as nn
  from flax.training import train_state

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(8, name="dense1")(nn.relu(nn.Dense(32, name="dense0")(x)))

  model = MLP()
  x = jax.random.normal(jax.random.key(1), (4, 16))
  variables = model.init(jax.random.key(0), x)
  state = train_state.TrainState.create(
    apply_fn=model.apply, params=variables["params"], tx=build(entry, "inner")
  )

  @jax.jit
  def step(state, x):
    grads = jax.grad(lambda p: jnp.sum(state.apply_fn({"params": p}, x) ** 2))(state.params)
    return state.apply_gradients(grads=grads)

  for t in range(STEPS):
    state = step(state, x + t)
    if t in UPDATE_STEPS:
      check_ranks(entry, state.params, t)


@entries
def test_flax_nnx_optimizer(entry):
  from flax import nnx

  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.dense0 = nnx.Linear(16, 32, rngs=rngs)
      self.dense1 = nnx.Linear(32, 8, rngs=rngs)

    def __call__(self, x):
      return self.dense1(nnx.relu(self.dense0(x)))

  model = MLP(nnx.Rngs(0))
  opt = nnx.Optimizer(model, build(entry, "inner"), wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(1), (4, 16))

  @nnx.jit
  def step(model, opt, x):
    opt.update(model, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))

  for t in range(STEPS):
    step(model, opt, x + t)
    if t in UPDATE_STEPS:
      tree = {n: {"kernel": getattr(model, n).kernel[...]} for n in ("dense0", "dense1")}
      check_ranks(entry, tree, t)


SPECS = {
  "dense0": {"kernel": P("data", "model"), "bias": P("model")},
  "dense1": {"kernel": P("data", "model"), "bias": P()},
}


def _check_sharded(entry, form, mesh):
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), SPECS)
  single = history(entry, form)
  params = jax.device_put(make_params(), shardings)
  tx = build(entry, form)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for step in range(STEPS):
    grads = jax.device_put(make_grads(make_params(), step), shardings)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    # The SVD of a sharded kernel may round differently: equal to float32 rounding.
    jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), params, single[step][0]
    )
    check_ranks(entry, params, step) if step in UPDATE_STEPS else None
  assert params["dense0"]["kernel"].sharding.is_equivalent_to(shardings["dense0"]["kernel"], 2)


@forms
def test_sharded_equals_single_device(entry, form):
  assert jax.device_count() == 8
  _check_sharded(entry, form, Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model")))


@entries
def test_sharded_explicit_axes_equals_single_device(entry):
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  with jax.set_mesh(mesh):
    _check_sharded(entry, "inner", mesh)


@entries
def test_jitted_init_places_the_state_like_the_params(entry):
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), SPECS)
  params = jax.device_put(make_params(), shardings)
  tx = optax.with_extra_args_support(entry.make(inner=optax.adam(1e-3), **PROJECTION_STEPS))
  state = jax.jit(tx.init)(params)
  assert _placed_like_params(state, params, shardings) >= 4  # the moments of both kernels


def test_registry_covers_lrpet():
  assert {e.factory.__name__ for e in PROJECTIONS} >= {"lrpet"}
