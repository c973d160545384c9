"""The conformance suite: the contract every pruning transformation of jaxprune keeps.

Runs over every entry of `pruners.PRUNERS` (one per exported factory and pattern/distribution).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from pruners import CYCLES, DST_STEPS, PRUNERS, expected_zeros

import jaxprune
from jaxprune import masked_apply

SCHEDULE = jaxprune.schedules.polynomial(begin_step=1, end_step=5, frequency=2)
UPDATE_STEPS = (1, 3, 5)
STEPS = 8
SHAPES = {"dense0/kernel": (16, 32), "dense1/kernel": (32, 8)}


# Every test of one pruner runs on one pytest-xdist worker (``--dist loadgroup`` in pyproject.toml),
# so that the worker compiles and runs its jitted history once (`history`) for all of them.
def _grouped(pruner, *rest):
  return pytest.param(pruner, *rest, marks=pytest.mark.xdist_group(pruner.name))


ids = [p.name for p in PRUNERS]
pruners = pytest.mark.parametrize("pruner", [_grouped(p) for p in PRUNERS], ids=ids)
# Every pruner in every form it supports (a pruner that resets the wrapped optimizer needs inner=).
_FORMS = [(p, f) for p in PRUNERS for f in ("chain", "inner") if f == "inner" or p.chain]
forms = pytest.mark.parametrize(
  "pruner,form", [_grouped(p, f) for p, f in _FORMS], ids=[f"{p.name}-{f}" for p, f in _FORMS]
)


def default_form(pruner):
  return "chain" if pruner.chain else "inner"


# The checks that are about the wrapping (a sharded mesh, bf16, MultiSteps) rather than the form run
# every pruner in its default form only: the other form's state is the same pruner state with or
# without the wrapped optimizer's inside it, which the forms' own tests cover.
_FIRST_FORMS = [(p, default_form(p)) for p in PRUNERS]
first_forms = pytest.mark.parametrize(
  "pruner,form",
  [_grouped(p, f) for p, f in _FIRST_FORMS],
  ids=[f"{p.name}-{f}" for p, f in _FIRST_FORMS],
)
# The Flax integrations depend on the state's structure, which is the factory's: one entry each
# (the first of every factory in the registry), and every method with ephemeral masks, whose
# forward pass the tests apply.
_INTEGRATION = [
  p
  for i, p in enumerate(PRUNERS)
  if not p.persistent or all(q.factory is not p.factory for q in PRUNERS[:i])
]
integration = pytest.mark.parametrize(
  "pruner", [_grouped(p) for p in _INTEGRATION], ids=[p.name for p in _INTEGRATION]
)


def make_params(dtype=jnp.float32, seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  return {
    "dense0": {"kernel": jax.random.normal(k[0], (16, 32), dtype), "bias": jnp.zeros(32, dtype)},
    "dense1": {"kernel": jax.random.normal(k[1], (32, 8), dtype), "bias": jnp.zeros(8, dtype)},
  }


def make_grads(params, step):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(100 + step), len(leaves))
  return jax.tree.unflatten(
    treedef, [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)]
  )


def optimizer():
  return optax.sgd(0.05, momentum=0.9)


def timing(pruner):
  """The keyword arguments that make a pruner update its masks at UPDATE_STEPS."""
  return {
    "schedule": {"schedule": SCHEDULE},
    "cycles": dict(CYCLES),
    "static": {},
    "dst": dict(DST_STEPS),
    "dst_gradual": dict(DST_STEPS),
  }[pruner.timing]


def build(pruner, form, **kwargs):
  for key, value in timing(pruner).items():
    kwargs.setdefault(key, value)
  if form == "chain":
    return optax.chain(optimizer(), pruner.make(**kwargs))
  return pruner.make(inner=optimizer(), **kwargs)


def run(tx, params, use_jit=True, steps=STEPS, traces=None):
  """[(params, masks, state) after each update]; ``traces`` (a list) gets one entry per trace."""

  def update(grads, state, params):
    if traces is not None:
      traces.append(1)
    return tx.update(grads, state, params)

  state = tx.init(params)
  update = jax.jit(update) if use_jit else update
  history = []
  for step in range(steps):
    updates, state = update(make_grads(params, step), state, params)
    params = optax.apply_updates(params, updates)
    history.append((params, jaxprune.get_masks(state), state))
  return history


_HISTORIES: dict = {}


def history(pruner, form, use_jit=True):
  """``run(build(pruner, form), make_params(), use_jit)``, computed once per worker, and the number
  of times its update was traced. Tests read it and never change it."""
  key = (pruner.name, form, use_jit)
  if key not in _HISTORIES:
    traces: list = []
    _HISTORIES[key] = run(build(pruner, form), make_params(), use_jit, traces=traces), len(traces)
  return _HISTORIES[key][0]


def traced(pruner, form):
  """How many times the jitted update of `history` was traced."""
  history(pruner, form)
  return _HISTORIES[(pruner.name, form, True)][1]


def deployed_params(pruner, params, opt_state):
  """The weights a trained model deploys: the params, with ephemeral masks applied."""
  return (
    params if pruner.persistent else jaxprune.apply_masks(params, jaxprune.get_masks(opt_state))
  )


def pruning_states(state):
  is_state = lambda x: isinstance(x, (jaxprune.PruningState, jaxprune.IMPState))
  return [x for x in jax.tree.leaves(state, is_leaf=is_state) if is_state(x)]


def kernels(tree):
  return {"dense0/kernel": tree["dense0"]["kernel"], "dense1/kernel": tree["dense1"]["kernel"]}


def scheduled_at(pruner, step):
  """The sparsity the schedule gives a target at the last mask update at or before ``step``."""
  if pruner.timing in ("static", "dst"):  # at the target from the first update on
    return lambda target: np.float32(target)
  last = max([s for s in UPDATE_STEPS if s <= step], default=None)
  if last is None:
    return None
  if pruner.timing == "cycles":  # after c prunes at rate r: 1 - (1 - r)^c, computed in float64
    done = sum(s <= step for s in UPDATE_STEPS)
    return lambda rate: np.float32(1.0 - (1.0 - rate) ** done)
  return lambda target: np.asarray(SCHEDULE.sparsity(jnp.asarray(last, jnp.int32), target))


def check_history(pruner, history):
  previous, before = None, None
  moved = 0  # ephemeral masks: entries pruned in a step's forward pass whose weight changed
  for step, (params, masks, _) in enumerate(history):
    assert masks["dense0"]["bias"] is None and masks["dense1"]["bias"] is None
    km, kp = kernels(masks), kernels(params)
    for name in SHAPES:
      m, p = np.asarray(km[name]), np.asarray(kp[name])
      assert m.dtype == bool and m.shape == p.shape
      if pruner.persistent:
        # Contract 2: every pruned entry is exactly zero after apply_updates, at every step.
        assert np.all(p[~m] == 0), f"{pruner.name}: pruned entries of {name} nonzero at {step}"
      elif previous is not None:
        # Ephemeral: the weights stay dense; those the step's forward pass masked (the masks
        # before the step) train on (straight-through) or stay frozen at their values.
        pruned = ~np.asarray(previous[name])
        changed = np.asarray(before[name])[pruned] != p[pruned]
        if pruner.method.train_pruned:
          moved += int(changed.sum())
        else:
          assert not changed.any(), f"{pruner.name}: frozen weights of {name} moved at {step}"
    zeros = {name: int((~np.asarray(km[name])).sum()) for name in SHAPES}
    scheduled = scheduled_at(pruner, step)
    if scheduled is None:
      assert sum(zeros.values()) == 0, f"pruned before the first mask update: {zeros}"
    else:
      # Contract 5: exact sparsity (of the deployed weights, for ephemeral masks).
      expected = expected_zeros(pruner, SHAPES, scheduled, step)
      if isinstance(expected, int):
        assert sum(zeros.values()) == expected, (step, zeros, expected)
      elif expected is not None:
        assert zeros == expected, (step, zeros, expected)
    if previous is not None and step not in UPDATE_STEPS:
      for name in SHAPES:  # masks change only on mask-update steps
        np.testing.assert_array_equal(km[name], previous[name])
    previous, before = km, kp
  if not pruner.persistent and pruner.method.train_pruned:
    assert moved > 0, f"{pruner.name}: no masked weight trained (straight-through)"


@forms
def test_contract(pruner, form):
  jitted = history(pruner, form)
  check_history(pruner, jitted)
  [pruner_state] = pruning_states(jitted[-1][2])
  assert int(pruner_state.count) == STEPS


@forms
def test_jit_equals_nojit(pruner, form):
  a = history(pruner, form, use_jit=False)
  b = history(pruner, form)
  check_history(pruner, a)
  for (pa, ma, _), (pb, mb, _) in zip(a, b):
    # Masks and the set of zeros agree exactly; XLA may fuse the optimizer's arithmetic into a
    # different rounding under jit (a multiply-add), so kept values agree to a few float32 ulps.
    jax.tree.map(np.testing.assert_array_equal, ma, mb)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x == 0, y == 0), pa, pb)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6), pa, pb)


@pytest.mark.parametrize(
  "pruner",
  [_grouped(p) for p in PRUNERS if p.chain and not p.uses_grads],
  ids=[p.name for p in PRUNERS if p.chain and not p.uses_grads],
)
def test_chain_form_equals_inner_form(pruner):
  # With scores that do not read gradients, wrapping the optimizer changes nothing for kept weights.
  a = history(pruner, "chain")
  b = history(pruner, "inner")
  for (pa, ma, _), (pb, mb, _) in zip(a, b):
    jax.tree.map(np.testing.assert_array_equal, ma, mb)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6), pa, pb)


@forms
def test_no_recompilation(pruner, form):
  # The jitted update of the whole history (8 updates, masks changing on 3) was traced once.
  assert traced(pruner, form) == 1


@pruners
def test_state_has_fixed_shapes_and_dtypes(pruner):
  tx = build(pruner, "inner")
  params = make_params()
  state0 = tx.init(params)
  updates, state1 = jax.jit(tx.update)(make_grads(params, 0), state0, params)
  shape = lambda t: [(x.shape, x.dtype) for x in jax.tree.leaves(t)]
  assert shape(state0) == shape(state1)
  assert jax.tree.structure(state0) == jax.tree.structure(state1)


@forms
def test_unknown_extra_args_accepted(pruner, form):
  tx = build(pruner, form)
  params = make_params()
  state = tx.init(params)
  updates, state = tx.update(make_grads(params, 0), state, params, loss=1.0, something_else="x")
  updates, state = tx.update(make_grads(params, 1), state, params, loss=1.0)
  assert jax.tree.structure(updates) == jax.tree.structure(params)


@pruners
def test_inside_inject_hyperparams(pruner):
  injected = optax.inject_hyperparams(pruner.factory, static_args=pruner.static_args)
  if pruner.chain:
    tx = optax.chain(optimizer(), injected(**pruner.kwargs, **timing(pruner)))
  else:
    tx = injected(**pruner.kwargs, **timing(pruner), inner=optimizer())
  history = run(tx, make_params())
  check_history(pruner, history)


@integration
def test_inside_multisteps(pruner):
  # Every second mini-step applies an update; the pruner sees every applied update once.
  tx = optax.MultiSteps(build(pruner, default_form(pruner)), every_k_schedule=2)
  history = run(tx, make_params(), steps=2 * STEPS)
  check_history(pruner, [history[i] for i in range(1, 2 * STEPS, 2)])
  for params, masks, _ in history:  # exact zeros after every mini-step too
    for name in SHAPES:
      pruned = ~np.asarray(kernels(masks)[name])
      assert not pruner.persistent or np.all(np.asarray(kernels(params)[name])[pruned] == 0)


@first_forms
def test_bf16_params_stay_bf16(pruner, form):
  history = run(build(pruner, form), make_params(jnp.bfloat16))
  for params, _, _ in history:
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  check_history(pruner, history)


@integration
def test_flax_linen_train_state(pruner):
  import flax.linen as nn
  from flax.training import train_state

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(32, name="dense0")(x))
      return nn.Dense(8, name="dense1")(x)

  model = MLP()
  x = jax.random.normal(jax.random.key(1), (4, 16))
  variables = model.init(jax.random.key(0), x)
  state = train_state.TrainState.create(
    apply_fn=model.apply, params=variables["params"], tx=build(pruner, default_form(pruner))
  )

  @jax.jit
  def step(state, x):
    # Ephemeral masks are applied in the forward pass (a linen variables dict is accepted).
    apply = state.apply_fn if pruner.persistent else masked_apply(state.apply_fn, state.opt_state)
    grads = jax.grad(lambda p: jnp.sum(apply({"params": p}, x) ** 2))(state.params)
    return state.apply_gradients(grads=grads)

  for t in range(STEPS):
    state = step(state, x + t)
    masks = jaxprune.get_masks(state.opt_state)
    deployed = deployed_params(pruner, state.params, state.opt_state)
    for layer in ("dense0", "dense1"):
      m = np.asarray(masks[layer]["kernel"])
      assert np.all(np.asarray(deployed[layer]["kernel"])[~m] == 0)
      np.testing.assert_array_equal(
        np.asarray(deployed[layer]["kernel"])[m], np.asarray(state.params[layer]["kernel"])[m]
      )
      assert masks[layer]["bias"] is None
  assert (~np.asarray(masks["dense0"]["kernel"])).sum() > 0


@integration
def test_flax_nnx_optimizer(pruner):
  from flax import nnx

  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.dense0 = nnx.Linear(16, 32, rngs=rngs)
      self.dense1 = nnx.Linear(32, 8, rngs=rngs)

    def __call__(self, x):
      return self.dense1(nnx.relu(self.dense0(x)))

  model = MLP(nnx.Rngs(0))
  opt = nnx.Optimizer(model, build(pruner, "inner"), wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(1), (4, 16))

  @nnx.jit
  def step(model, opt, x):
    def loss(model):
      if not pruner.persistent:  # the forward pass of the masked weights
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        model = nnx.merge(graphdef, jaxprune.ephemeral.masked_params(params, opt), rest)
      return jnp.sum(model(x) ** 2)

    opt.update(model, nnx.grad(loss)(model))

  for t in range(STEPS):
    step(model, opt, x + t)
    masks = jaxprune.get_masks(opt)
    for layer in ("dense0", "dense1"):
      m = np.asarray(masks[layer]["kernel"])
      kernel = np.asarray(getattr(model, layer).kernel[...])
      assert not pruner.persistent or np.all(kernel[~m] == 0)
      assert masks[layer]["bias"] is None
  assert (~np.asarray(masks["dense0"]["kernel"])).sum() > 0


def _check_sharded_equals_single_device(pruner, form, mesh):
  specs = {
    "dense0": {"kernel": P("data", "model"), "bias": P("model")},
    "dense1": {"kernel": P("data", "model"), "bias": P()},
  }
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  single = history(pruner, form)
  sharded_params = jax.device_put(make_params(), shardings)
  tx = build(pruner, form)
  state = tx.init(sharded_params)
  update = jax.jit(tx.update)
  params = sharded_params
  for step in range(STEPS):
    grads = jax.device_put(make_grads(make_params(), step), shardings)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    ref_params, ref_masks, _ = single[step]
    masks = jaxprune.get_masks(state)
    jax.tree.map(np.testing.assert_array_equal, params, ref_params)
    jax.tree.map(np.testing.assert_array_equal, masks, ref_masks)
  assert params["dense0"]["kernel"].sharding.is_equivalent_to(shardings["dense0"]["kernel"], 2)
  [pruner_state] = pruning_states(state)
  for layer in ("dense0", "dense1"):
    stored = pruner_state.masks[layer]["kernel"]
    if pruner.kwargs.get("packed_masks"):
      # Both axes are sharded: the bits are packed along the one whose shards hold whole bytes
      # (dense0's 32 columns in 2 shards, dense1's 32 rows in 4), so they keep both shardings.
      stored = stored.bits
      assert stored.shape == {"dense0": (16, 4), "dense1": (4, 8)}[layer]
    # Masks take the params' sharding.
    assert stored.sharding.is_equivalent_to(shardings[layer]["kernel"], 2), (
      layer,
      stored.sharding,
    )


@first_forms
def test_sharded_equals_single_device(pruner, form):
  assert jax.device_count() == 8
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  _check_sharded_equals_single_device(pruner, form, mesh)


@first_forms
def test_sharded_explicit_axes_equals_single_device(pruner, form):
  # jax.make_mesh gives Explicit axes: array types carry shardings and ops whose output sharding
  # is ambiguous refuse to trace; the pruners run their work in auto mode there.
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  with jax.set_mesh(mesh):
    _check_sharded_equals_single_device(pruner, form, mesh)


def _placed_like_params(tree, params, shardings) -> int:
  """Checks that every leaf of ``tree`` whose path ends in a param's name and that has the param's
  rank (masks, packed bits, statistics, moments) is sharded like that param; returns how many."""
  checked = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    layer, param = (names[-2:] + [None, None])[:2] if len(names) >= 2 else (None, None)
    if layer not in params or param not in params[layer]:
      continue
    like = params[layer][param]
    if np.ndim(leaf) != np.ndim(like):
      continue
    spec = tuple(shardings[layer][param].spec) + (None,) * like.ndim
    got = tuple(leaf.sharding.spec) + (None,) * like.ndim
    # Packed bits: the packed axis is shorter, and under an auto-mode jit (where the params'
    # shardings are not visible while tracing) it is the last axis; every other axis is the param's.
    same = [a for a in range(like.ndim) if leaf.shape[a] == like.shape[a]]
    assert [got[a] for a in same] == [spec[a] for a in same], (
      jax.tree_util.keystr(path),
      leaf.sharding,
    )
    checked += 1
  return checked


@forms
def test_jitted_init_places_the_state_like_the_params(pruner, form):
  # Under jit without out_shardings XLA puts an output that reads no input on one device: the
  # masks (all ones), a score's statistics and a wrapped optimizer's moments (zeros) must still
  # come out sharded like their params, or a large model's state lands whole on device 0.
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  specs = {
    "dense0": {"kernel": P("data", "model"), "bias": P("model")},
    "dense1": {"kernel": P("data", "model"), "bias": P()},
  }
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  params = jax.device_put(make_params(), shardings)
  tx = build(pruner, form)
  state = jax.jit(tx.init)(params)
  assert _placed_like_params(pruning_states(state), params, shardings) >= 2
  # placed_tree_like places the rest of a chain's state too (the chained optimizer's moments).
  placed = jax.jit(lambda p: jaxprune.sharding.placed_tree_like(tx.init(p), p))(params)
  assert _placed_like_params(placed, params, shardings) >= 2
  jax.tree.map(np.testing.assert_array_equal, placed, state)


def test_registry_covers_every_exported_pruner():
  exported = {name for name in jaxprune.__all__ if name.endswith("_pruning")} | {
    "imp",
    "static_sparse",
    "set_sparse",
    "rigl",
    "granet",
    "sr_ste",
    "scl",
    "platon",
  }
  covered = {p.factory.__name__ for p in PRUNERS}
  assert exported <= covered, f"add {exported - covered} to tests/pruners.py"
  for name in exported:  # the conventions of the contract
    params = inspect.signature(getattr(jaxprune, name)).parameters
    assert "inner" in params and params["inner"].kind is inspect.Parameter.KEYWORD_ONLY
