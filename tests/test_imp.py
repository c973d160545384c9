"""imp: cycles, exact per-cycle sparsity, rewinding, optimizer reset, controls, errors, checkpoints."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune

jit_modes = pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])


def make_params(seed=0):
  return params_from_key(jax.random.key(seed))


def params_from_key(key):
  k = jax.random.split(key, 3)
  return {
    "hidden": {"kernel": jax.random.normal(k[0], (20, 30)), "bias": jnp.ones(30)},
    "output": {"kernel": jax.random.normal(k[1], (30, 10)), "bias": jnp.ones(10)},
  }


def grads_at(params, step):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1000 + step), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def run(tx, params, steps, use_jit=True):
  """Returns [(params, state)] after every update."""
  state = tx.init(params)
  update = jax.jit(tx.update) if use_jit else tx.update
  out = []
  for step in range(steps):
    updates, state = update(grads_at(params, step), state, params)
    params = optax.apply_updates(params, updates)
    out.append((params, state))
  return out


def zeros(masks):
  return {k: int((~np.asarray(v["kernel"])).sum()) for k, v in masks.items()}


@jit_modes
def test_layerwise_rates_and_leaf_rates_are_exact_every_cycle(use_jit):
  # Frankle & Carbin's LeNet setting: 20% per round, 10% for the output layer.
  tx = jaxprune.imp(
    rate=0.2,
    cycles=4,
    cycle_steps=2,
    distribution="uniform",
    leaf_rates={"output/kernel": 0.1},
    inner=optax.sgd(0.01),
  )
  history = run(tx, make_params(), 10, use_jit)
  for step, (params, state) in enumerate(history):
    done = min(step // 2, 4)  # prunes happen at the updates 2, 4, 6, 8
    expected = {"hidden": round((1 - 0.8**done) * 600), "output": round((1 - 0.9**done) * 300)}
    assert zeros(jaxprune.get_masks(state)) == expected, step
    info = jaxprune.get_cycle(state)
    assert int(info.cycle) == done
    total = (expected["hidden"] + expected["output"]) / 900
    np.testing.assert_allclose(float(info.sparsity), total, rtol=1e-6)
    for layer in ("hidden", "output"):
      m = np.asarray(jaxprune.get_masks(state)[layer]["kernel"])
      assert np.all(np.asarray(params[layer]["kernel"])[~m] == 0)


@jit_modes
def test_sparsity_argument_reaches_target_globally_at_last_cycle(use_jit):
  tx = jaxprune.imp(0.9, cycles=3, cycle_steps=[3, 1, 1, 2], inner=optax.sgd(0.01))
  history = run(tx, make_params(), 7, use_jit)
  rate = 1 - 0.1 ** (1 / 3)
  for step, (_, state) in enumerate(history):
    done = sum(step >= s for s in (3, 4, 5))
    assert sum(zeros(jaxprune.get_masks(state)).values()) == round((1 - (1 - rate) ** done) * 900)
  assert sum(zeros(jaxprune.get_masks(history[-1][1])).values()) == 810


def test_global_selection_prunes_smallest_magnitudes_and_stays_monotone():
  params = make_params()
  tx = jaxprune.imp(rate=0.5, cycles=2, cycle_steps=1, inner=optax.sgd(0.0))
  history = run(tx, params, 3)
  everything = np.concatenate([np.abs(np.asarray(params[k]["kernel"])).ravel() for k in params])
  threshold = np.sort(everything)[450]
  m1 = jaxprune.get_masks(history[1][1])
  for k in params:
    np.testing.assert_array_equal(
      np.asarray(m1[k]["kernel"]), np.abs(np.asarray(params[k]["kernel"])) >= threshold
    )
  m2 = jaxprune.get_masks(history[2][1])
  for k in params:  # later masks are subsets
    assert not np.any(np.asarray(m2[k]["kernel"]) & ~np.asarray(m1[k]["kernel"]))


def assert_rewound(actual, expected):
  # An additive update cannot always land exactly on a float (p + (t - p) is rounded twice):
  # rewound weights match to the rounding of the trained weight; pruned ones are exactly zero.
  actual, expected = np.asarray(actual), np.asarray(expected)
  np.testing.assert_array_equal(actual == 0, expected == 0)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=4e-7 * max(1.0, np.abs(expected).max()))


@jit_modes
def test_rewind_to_init_restores_every_float_leaf(use_jit):
  params = make_params()
  tx = jaxprune.imp(rate=0.3, cycles=2, cycle_steps=3, rewind="init", inner=optax.adam(0.05))
  history = run(tx, params, 9, use_jit)
  for prune_step in (3, 6):
    before, _ = history[prune_step - 1]
    after, state = history[prune_step]
    masks = jaxprune.get_masks(state)
    assert not np.allclose(before["hidden"]["bias"], params["hidden"]["bias"])  # it trained
    for layer in params:
      m = np.asarray(masks[layer]["kernel"])
      assert_rewound(after[layer]["kernel"], np.where(m, np.asarray(params[layer]["kernel"]), 0))
      assert_rewound(after[layer]["bias"], params[layer]["bias"])


@jit_modes
def test_late_rewinding_stores_the_weights_of_step_k(use_jit):
  params = make_params()
  tx = jaxprune.imp(rate=0.3, cycles=2, cycle_steps=4, rewind=2, inner=optax.sgd(0.1, momentum=0.9))
  history = run(tx, params, 10, use_jit)
  at_k = history[1][0]  # the params the update with count 2 sees: after 2 updates
  for prune_step in (4, 8):
    after, state = history[prune_step]
    masks = jaxprune.get_masks(state)
    for layer in params:
      m = np.asarray(masks[layer]["kernel"])
      assert_rewound(after[layer]["kernel"], np.where(m, np.asarray(at_k[layer]["kernel"]), 0))
      assert_rewound(after[layer]["bias"], at_k[layer]["bias"])
    [imp_state] = [s for s in [state] if isinstance(s, jaxprune.IMPState)]
    np.testing.assert_array_equal(
      imp_state.rewind_params["hidden"]["kernel"], at_k["hidden"]["kernel"]
    )


def test_fine_tuning_keeps_trained_weights_and_applies_the_step():
  params = make_params()
  inner = optax.sgd(0.1)
  tx = jaxprune.imp(rate=0.5, cycles=1, cycle_steps=2, inner=inner)
  history = run(tx, params, 3)
  before, _ = history[1]
  after, state = history[2]
  g = grads_at(before, 2)
  masks = jaxprune.get_masks(state)
  for layer in params:
    m = np.asarray(masks[layer]["kernel"])
    expected = np.where(
      m, np.asarray(before[layer]["kernel"]) - 0.1 * np.asarray(g[layer]["kernel"]), 0
    )
    np.testing.assert_allclose(np.asarray(after[layer]["kernel"]), expected, rtol=1e-6, atol=1e-7)


def _adam_state(state):
  return [
    s
    for s in jax.tree.leaves(
      state.inner_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)
    )
    if isinstance(s, optax.ScaleByAdamState)
  ][0]


@pytest.mark.parametrize("reset", [False, True])
def test_reset_optimizer_restarts_statistics_and_schedule(reset):
  schedule = optax.linear_schedule(0.1, 0.0, 6)
  tx = jaxprune.imp(
    rate=0.5, cycles=1, cycle_steps=3, reset_optimizer=reset, inner=optax.adam(schedule)
  )
  history = run(tx, make_params(), 5)
  adam = _adam_state(history[3][1])  # right after the prune
  if reset:
    assert int(adam.count) == 0
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(adam.mu))
    # The next update is Adam's first step again at the schedule's first rate: |step| == 0.1.
    before, after = history[3][0], history[4][0]
    m = np.asarray(jaxprune.get_masks(history[4][1])["hidden"]["kernel"])
    step = np.abs(np.asarray(after["hidden"]["kernel"]) - np.asarray(before["hidden"]["kernel"]))[m]
    np.testing.assert_allclose(step, 0.1, rtol=1e-3)
  else:
    assert int(adam.count) == 4


def test_reset_keeps_the_state_structure_under_jit():
  tx = jaxprune.imp(
    rate=0.5,
    cycles=2,
    cycle_steps=2,
    rewind="init",
    reset_optimizer=True,
    inner=optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2)),
  )
  a = run(tx, make_params(), 6, use_jit=False)
  b = run(tx, make_params(), 6, use_jit=True)
  for (pa, sa), (pb, sb) in zip(a, b):
    assert jax.tree.structure(sa) == jax.tree.structure(sb)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), pa, pb)


def test_reinit_draws_fresh_weights_with_the_same_masks():
  params = make_params()
  reinit = params_from_key
  ticket = run(
    jaxprune.imp(rate=0.4, cycles=1, cycle_steps=2, rewind="init", inner=optax.sgd(0.0)), params, 3
  )
  control = run(
    jaxprune.imp(
      rate=0.4, cycles=1, cycle_steps=2, rewind="init", reinit=reinit, seed=7, inner=optax.sgd(0.0)
    ),
    params,
    3,
  )
  # With a zero learning rate both runs prune the same weights.
  jax.tree.map(
    np.testing.assert_array_equal,
    jaxprune.get_masks(ticket[2][1]),
    jaxprune.get_masks(control[2][1]),
  )
  fresh = params_from_key(jax.random.fold_in(jax.random.key(7), 1))
  masks = jaxprune.get_masks(control[2][1])
  for layer in params:
    m = np.asarray(masks[layer]["kernel"])
    assert_rewound(
      control[2][0][layer]["kernel"], np.where(m, np.asarray(fresh[layer]["kernel"]), 0)
    )
    assert_rewound(control[2][0][layer]["bias"], fresh[layer]["bias"])
    assert not np.array_equal(control[2][0][layer]["kernel"], ticket[2][0][layer]["kernel"])


def test_random_masks_keep_magnitude_counts_per_leaf():
  params = make_params()
  kwargs = dict(rate=0.5, cycles=2, cycle_steps=1, inner=optax.sgd(0.0))
  magnitude = run(jaxprune.imp(**kwargs), params, 2)
  random = run(jaxprune.imp(**kwargs, random_masks=True, seed=3), params, 2)
  mm, rm = jaxprune.get_masks(magnitude[1][1]), jaxprune.get_masks(random[1][1])
  assert zeros(mm) == zeros(rm)  # global magnitude's per-leaf counts, kept by the control
  assert zeros(mm)["hidden"] != zeros(mm)["output"] * 2  # global: not the layer-wise split
  overlap = jaxprune.analysis.mask_overlap(mm, rm)
  assert 0.3 < float(overlap.total.iou) < 0.5  # random: about as much overlap as chance gives


def test_norm_drop_and_pruned_fraction():
  params = {"w": jnp.asarray([[1.0, 2.0], [3.0, 4.0]])}
  tx = jaxprune.imp(rate=0.5, cycles=1, cycle_steps=1, inner=optax.sgd(0.0))
  _, state = run(tx, params, 2)[1]
  info = jaxprune.get_cycle(state)
  np.testing.assert_allclose(float(info.norm_drop), np.sqrt(5.0 / 30.0), rtol=1e-6)
  assert float(info.pruned_fraction) == 0.5


def test_get_cycle_through_an_epoch_and_after_the_last_cycle():
  tx = optax.chain(optax.sgd(0.01), jaxprune.imp(rate=0.5, cycles=2, cycle_steps=[3, 2, 2]))
  history = run(tx, make_params(), 9)
  got = [
    (int(i.cycle), int(i.step), int(i.length), bool(i.at_end))
    for i in (jaxprune.get_cycle(s) for _, s in history)
  ]
  assert got == [
    (0, 1, 3, False),
    (0, 2, 3, False),
    (0, 3, 3, True),
    (1, 1, 2, False),
    (1, 2, 2, True),
    (2, 1, 2, False),
    (2, 2, 2, True),
    (2, 3, 2, False),
    (2, 4, 2, False),
  ]
  jitted = jax.jit(jaxprune.get_cycle)(history[2][1])
  assert bool(jitted.at_end) and int(jitted.cycle) == 0


def test_mid_cycle_checkpoint_restores_to_identical_continuation(tmp_path):
  import orbax.checkpoint as ocp

  tx = jaxprune.imp(
    rate=0.3,
    cycles=3,
    cycle_steps=3,
    rewind=1,
    reset_optimizer=True,
    packed_masks=True,
    inner=optax.adam(1e-2),
  )
  params = make_params()
  update = jax.jit(tx.update)
  state = tx.init(params)

  def steps(params, state, start, stop):
    for t in range(start, stop):
      updates, state = update(grads_at(params, t), state, params)
      params = optax.apply_updates(params, updates)
    return params, state

  params, state = steps(params, state, 0, 5)  # mid-cycle 1
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
  reference = steps(params, state, 5, 12)
  with ocp.StandardCheckpointer() as ckpt:
    restored = ckpt.restore(tmp_path / "ckpt", {"params": params, "opt_state": state})
  resumed = steps(restored["params"], restored["opt_state"], 5, 12)
  jax.tree.map(np.testing.assert_array_equal, resumed, reference)
  assert int(jaxprune.get_cycle(resumed[1]).cycle) == 3


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(rate=0.2, cycles=0, cycle_steps=2), "cycles must be >= 1, got 0"),
    (dict(rate=0.2, cycles=2, cycle_steps=0), "cycle_steps must be >= 1, got 0"),
    (dict(rate=0.2, cycles=2, cycle_steps=[5, 0, 3]), r"cycle_steps\[1\] must be >= 1, got 0"),
    (dict(rate=0.2, cycles=2, cycle_steps=[5, 3]), "cycle_steps has 2 entries"),
    (dict(rate=0.2, cycles=2, cycle_steps=4, rewind=4), "rewind step 4 is beyond the first cycle"),
    (dict(rate=0.2, cycles=2, cycle_steps=[3, 9, 9], rewind=7), "rewind step 7 is beyond"),
    (dict(rate=0.2, cycles=2, cycle_steps=4, rewind="end"), "rewind must be None, 'init'"),
    (dict(rate=0.2, cycles=2, cycle_steps=4, reset_optimizer=True), "needs the inner= form"),
    (dict(rate=0.2, cycles=2, cycle_steps=4, reinit=lambda k: None), "needs rewind"),
    (dict(sparsity=0.9, rate=0.2, cycles=2, cycle_steps=4), "exactly one of sparsity"),
    (dict(cycles=2, cycle_steps=4), "exactly one of sparsity"),
    (dict(rate=1.2, cycles=2, cycle_steps=4), r"rate must be in \[0, 1\), got 1.2"),
    (dict(sparsity=float("nan"), cycles=2, cycle_steps=4), "sparsity must be in"),
    (dict(rate=0.2, cycles=2, cycle_steps=4, distribution="erk"), "'global' or 'uniform'"),
    (
      dict(
        rate=0.2,
        cycles=2,
        cycle_steps=4,
        random_masks=True,
        pattern=jaxprune.patterns.block((2, 2)),
      ),
      "random_masks needs the unstructured",
    ),
    (dict(rate=0.2, cycles=2, cycle_steps=4, pattern=jaxprune.patterns.n_m(2, 4)), "N:M"),
    (
      dict(rate=0.2, cycles=2, cycle_steps=4, leaf_rates={"nothing": 0.1}),
      "matches no pruned leaf",
    ),
    (
      dict(rate=0.2, cycles=2, cycle_steps=4, leaf_rates={"output/kernel": 1.0}),
      "'output/kernel'.*must be in",
    ),
  ],
)
def test_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    tx = jaxprune.imp(**kwargs, inner=None if kwargs.get("reset_optimizer") else optax.sgd(0.1))
    tx.init(make_params())


def test_type_errors():
  with pytest.raises(TypeError, match="cycles must be an int"):
    jaxprune.imp(rate=0.2, cycles=2.0, cycle_steps=4)
  with pytest.raises(TypeError, match="reset_optimizer must be a bool"):
    jaxprune.imp(rate=0.2, cycles=2, cycle_steps=4, reset_optimizer=1, inner=optax.sgd(0.1))


def test_get_cycle_needs_one_imp_state():
  with pytest.raises(ValueError, match="found 0"):
    jaxprune.get_cycle(jaxprune.magnitude_pruning(0.5).init(make_params()))
  tx = jaxprune.imp(rate=0.2, cycles=1, cycle_steps=2)
  with pytest.raises(ValueError, match="found 2"):
    jaxprune.get_cycle(optax.chain(tx, tx).init(make_params()))


def test_static_sparse_keeps_given_masks_and_checks_them():
  params = make_params()
  masks = {
    "hidden": {"kernel": jax.random.bernoulli(jax.random.key(2), 0.3, (20, 30)), "bias": None},
    "output": {"kernel": jnp.ones((30, 10), bool), "bias": None},
  }
  history = run(jaxprune.static_sparse(masks=masks, inner=optax.adam(0.1)), params, 4)
  for p, state in history:
    jax.tree.map(np.testing.assert_array_equal, jaxprune.get_masks(state), masks)
    assert np.all(np.asarray(p["hidden"]["kernel"])[~np.asarray(masks["hidden"]["kernel"])] == 0)
  bad = {**masks, "output": {"kernel": jnp.ones((30, 9), bool), "bias": None}}
  with pytest.raises(ValueError, match="'output/kernel' must be a bool array of shape"):
    jaxprune.static_sparse(masks=bad).init(params)
  with pytest.raises(ValueError, match="exactly one of sparsity"):
    jaxprune.static_sparse(0.5, masks=masks)


def test_per_cycle_sparsity_table_from_cycle_ends():
  tx = jaxprune.imp(
    rate=0.2,
    cycles=3,
    cycle_steps=2,
    distribution="uniform",
    leaf_rates={"output/kernel": 0.1},
    inner=optax.sgd(0.01),
  )
  ends = [
    jaxprune.get_masks(s)
    for _, s in run(tx, make_params(), 8)
    if bool(jaxprune.get_cycle(s).at_end)
  ]
  assert len(ends) == 4
  table = jaxprune.sparsity_table(ends).splitlines()
  assert table[0] == "| cycle | hidden/kernel | output/kernel | total |"
  # hidden: 600 * (1 - 0.8^c) rounded; output: 300 * (1 - 0.9^c) rounded.
  assert table[2:] == [
    "| 0 | 0.00% | 0.00% | 0.00% |",
    "| 1 | 20.00% | 10.00% | 16.67% |",
    "| 2 | 36.00% | 19.00% | 30.33% |",
    "| 3 | 48.83% | 27.00% | 41.56% |",
  ]
  with pytest.raises(ValueError, match="2 labels for 4 trees"):
    jaxprune.sparsity_table(ends, labels=["a", "b"])


def test_overrides_is_leaf_rates_and_groups_are_accepted():
  # Every method takes the same selection options: overrides= is imp's leaf_rates.
  params = make_params()
  a = jaxprune.imp(
    rate=0.5, cycles=1, cycle_steps=1, distribution="uniform", leaf_rates={"output/kernel": 0.25}
  )
  b = jaxprune.imp(
    rate=0.5, cycles=1, cycle_steps=1, distribution="uniform", overrides={"output/kernel": 0.25}
  )
  masks = []
  for tx in (a, b):
    state = tx.init(params)
    for _ in range(2):
      _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    masks.append(jaxprune.get_masks(state))
  jax.tree.map(np.testing.assert_array_equal, masks[0], masks[1])
  out = np.asarray(masks[1]["output"]["kernel"])
  assert (~out).sum() == round(0.25 * out.size)
  with pytest.raises(ValueError, match="same option"):
    jaxprune.imp(rate=0.5, cycles=1, cycle_steps=1, leaf_rates={"x": 0.1}, overrides={"x": 0.1})
  group = jaxprune.groups.group(("hidden/kernel", -1), ("hidden/bias", 0), ("output/kernel", 0))
  tx = jaxprune.imp(rate=0.5, cycles=1, cycle_steps=1, groups=[group], prune=[])
  state = tx.init(params)
  for _ in range(2):
    _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  hidden = np.asarray(jaxprune.get_masks(state)["hidden"]["kernel"])
  assert (~hidden.any(axis=0)).sum() == round(0.5 * hidden.shape[1])


# ============================================================================ AP


def _ap_reference(w_end, w_start, kept, rate, fraction):
  """AP's prune of one global segment, written with NumPy (Liu et al. 2023, resnet_20.py): keep
  K + n by magnitude, then drop the n kept negative weights that moved least."""
  d = int(kept.sum())
  keep = d - round(rate * d)  # the plain prune's count (one cycle from a full mask)
  n = min(int(np.floor(fraction * d)), d - keep)
  order = np.argsort(-np.abs(w_end[kept]), kind="stable")
  idx = np.flatnonzero(kept)[order]
  first = np.zeros(w_end.size, bool)
  first[idx[: keep + n]] = True
  negatives = np.flatnonzero(first & (w_end.ravel() < 0))
  moved = np.abs(w_end.ravel() - w_start.ravel())[negatives]
  drop = negatives[np.argsort(moved, kind="stable")[:n]]
  first[drop] = False
  return first.reshape(w_end.shape), drop


def test_activate_while_pruning_drops_the_negative_weights_that_moved_least():
  # One 4x5 kernel: 20 distinct magnitudes; the gradients of cycle 0 move each weight by its own
  # amount, so magnitude and movement rank the weights differently.
  w0 = np.array([(-1.0) ** i * (0.5 + 0.1 * i) for i in range(20)], np.float32).reshape(4, 5)
  g = np.linspace(-1.0, 1.0, 20, dtype=np.float32)[::-1].reshape(4, 5) * 0.3
  params = {"layer": {"kernel": jnp.asarray(w0)}}
  tx = jaxprune.imp(
    rate=0.5, cycles=1, cycle_steps=[2, 1], activate_while_pruning=0.2, inner=optax.sgd(1.0)
  )
  state = tx.init(params)
  for _ in range(2):  # cycle 0: w -= g twice
    updates, state = tx.update({"layer": {"kernel": jnp.asarray(g)}}, state, params)
    params = optax.apply_updates(params, updates)
  w_end = np.asarray(params["layer"]["kernel"])
  np.testing.assert_allclose(w_end, w0 - 2 * g, rtol=1e-6)
  updates, state = tx.update({"layer": {"kernel": jnp.zeros((4, 5))}}, state, params)  # prune
  mask = np.asarray(jaxprune.get_masks(state)["layer"]["kernel"])
  expected, dropped = _ap_reference(w_end, w0, np.ones((4, 5), bool), 0.5, 0.2)
  np.testing.assert_array_equal(mask, expected)
  assert (~mask).sum() == 10 and len(dropped) == 4  # floor(0.2 * 20) by AP, 6 by magnitude
  assert np.all(w_end.ravel()[dropped] < 0)
  # AP removed weights that magnitude alone keeps (and kept as many that it prunes).
  plain = np.zeros(20, bool)
  plain[np.argsort(-np.abs(w_end.ravel()), kind="stable")[:10]] = True
  swapped = int(plain[dropped].sum())
  assert swapped == 2 and (mask.ravel() != plain).sum() == 2 * swapped


def test_activate_while_pruning_measures_movement_from_each_cycle_start():
  # Two prunes; the second compares with the weights after the first prune's update (the cycle's
  # start), not with the initialisation. Uniform distribution: one segment per leaf.
  params = make_params()
  tx = jaxprune.imp(
    rate=0.4,
    cycles=2,
    cycle_steps=[2, 3, 2],
    distribution="uniform",
    activate_while_pruning=0.1,
    inner=optax.sgd(0.1),
  )
  history = run(tx, params, 6)
  start = history[2][0]  # after update 2, the first of cycle 1 (the prune's own update)
  before, after = history[4][0], history[5]  # update 5 prunes the weights after update 4
  for layer in ("hidden", "output"):
    w_end = np.asarray(before[layer]["kernel"])
    kept = np.asarray(jaxprune.get_masks(history[4][1])[layer]["kernel"])
    d = int(kept.sum())
    keep = w_end.size - round((1 - 0.6**2) * w_end.size)
    n = min(int(np.floor(0.1 * d)), d - keep)
    order = np.flatnonzero(kept)[np.argsort(-np.abs(w_end[kept]), kind="stable")]
    first = np.zeros(w_end.size, bool)
    first[order[: keep + n]] = True
    neg = np.flatnonzero(first & (w_end.ravel() < 0))
    moved = np.abs(w_end.ravel() - np.asarray(start[layer]["kernel"]).ravel())[neg]
    first[neg[np.argsort(moved, kind="stable")[:n]]] = False
    mask = np.asarray(jaxprune.get_masks(after[1])[layer]["kernel"])
    np.testing.assert_array_equal(mask.ravel(), first, err_msg=layer)
    assert (~mask).sum() == w_end.size - keep  # the same count as without AP


def test_activate_while_pruning_with_rewinding_and_jit():
  tx = jaxprune.imp(
    rate=0.2, cycles=2, cycle_steps=3, rewind="init", activate_while_pruning=0.02,
    inner=optax.sgd(0.05),
  )  # fmt: skip
  params = make_params()
  history = run(tx, params, 9)
  state = history[-1][1]
  assert zeros(jaxprune.get_masks(state)) == {"hidden": 214, "output": 110}  # global: 324 of 900
  kept = np.asarray(jaxprune.get_masks(state)["hidden"]["kernel"])
  rewound = np.asarray(history[6][0]["hidden"]["kernel"])  # after the second prune's rewinding
  np.testing.assert_allclose(rewound[kept], np.asarray(params["hidden"]["kernel"])[kept], rtol=1e-6)


# ============================================================================ SAP (PQ rate)


def _sap_reference(values, p, q, eta=0.0, gamma=1.0, beta=0.9):
  """The count of Diao et al.'s compression.py in float64."""
  d = values.size
  norm = lambda r: np.sum(np.abs(values) ** r) ** (1 / r)
  index = 1 - d ** (1 / q - 1 / p) * norm(p) / norm(q)
  r = np.ceil(d * (1 + eta) ** (-q / (q - p)) * (1 - index) ** (q * p / (q - p)))
  return int(np.floor(min(gamma * (d - r), beta * d)))


@pytest.mark.parametrize("distribution", ["global", "uniform"])
def test_pq_rate_prunes_the_count_of_the_pq_index(distribution):
  pq = jaxprune.pq_rate(0.5, 1.0)
  tx = jaxprune.imp(
    rate=pq, cycles=3, cycle_steps=2, distribution=distribution, inner=optax.sgd(0.05)
  )
  history = run(tx, make_params(), 8)
  for step in (2, 4, 6):  # the prunes: each reads the weights after the update before it
    params = history[step - 1][0]
    old = jaxprune.get_masks(history[step - 1][1])
    new = jaxprune.get_masks(history[step][1])
    kernels = {k: np.asarray(params[k]["kernel"]) for k in ("hidden", "output")}
    kept = {k: np.asarray(old[k]["kernel"]) for k in kernels}
    if distribution == "global":
      values = np.concatenate([kernels[k][kept[k]] for k in kernels])
      pruned = sum(int(kept[k].sum() - np.asarray(new[k]["kernel"]).sum()) for k in kernels)
      assert pruned == _sap_reference(values.astype(np.float64), 0.5, 1.0), step
      # the smallest magnitudes go: every pruned weight is below every kept one
      gone = np.concatenate([kernels[k][kept[k] & ~np.asarray(new[k]["kernel"])] for k in kernels])
      stay = np.concatenate([kernels[k][np.asarray(new[k]["kernel"])] for k in kernels])
      assert np.abs(gone).max() <= np.abs(stay).min()
    else:
      for k in kernels:
        pruned = int(kept[k].sum() - np.asarray(new[k]["kernel"]).sum())
        expected = _sap_reference(kernels[k][kept[k]].astype(np.float64), 0.5, 1.0)
        assert pruned == expected, (step, k)
    info = jaxprune.get_cycle(history[step][1])
    total = sum(np.asarray(new[k]["kernel"]).size for k in kernels)
    reached = 1 - sum(int(np.asarray(new[k]["kernel"]).sum()) for k in kernels) / total
    np.testing.assert_allclose(float(info.sparsity), reached, rtol=1e-6)
  table = np.asarray(history[2][1].cycle_sparsity)
  assert table[0] == 0 and not np.isnan(table[1]) and np.isnan(table[2:]).all()


def test_pq_rate_stops_at_beta_and_at_uniform_weights():
  # Equal magnitudes: index 0, r = d, nothing pruned. One large weight among tiny ones: the index
  # is near 1 and the count is capped at floor(beta * d).
  flat = {"w": jnp.tile(jnp.array([1.0, -1.0, 1.0, -1.0, 1.0]), (4, 1))}
  tx = jaxprune.imp(rate=jaxprune.pq_rate(), cycles=1, cycle_steps=1, inner=optax.sgd(0.0))
  history = run(tx, flat, 2)
  assert int(np.asarray(jaxprune.get_masks(history[1][1])["w"]).sum()) == 20
  peaked = {"w": jnp.zeros((4, 5)).at[0, 0].set(100.0) + 1e-3 * jnp.arange(20.0).reshape(4, 5)}
  tx = jaxprune.imp(rate=jaxprune.pq_rate(beta=0.5), cycles=1, cycle_steps=1, inner=optax.sgd(0.0))
  history = run(tx, peaked, 2)
  assert int(np.asarray(jaxprune.get_masks(history[1][1])["w"]).sum()) == 10


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(rate=0.2, activate_while_pruning=0.3), r"activate_while_pruning \(0.3\) .* \(0.2\)"),
    (dict(rate=0.2, activate_while_pruning=1.5), "activate_while_pruning must be in"),
    (
      dict(rate=0.2, activate_while_pruning=0.1, pattern=jaxprune.patterns.block((2, 2))),
      "prunes single .*negative.* weights, got pattern=Block",
    ),
    (dict(rate=0.2, activate_while_pruning=0.1, random_masks=True), "random_masks=True"),
    (dict(rate=jaxprune.pq_rate(), leaf_rates={"output.*": 0.1}), "leaf_rates cannot be used"),
    (
      dict(rate=jaxprune.pq_rate(), activate_while_pruning=0.1),
      "activate_while_pruning cannot be used",
    ),
    (
      dict(rate=jaxprune.pq_rate(), pattern=jaxprune.patterns.channel()),
      "pattern=Channel",
    ),
    (dict(sparsity=0.5, rate=jaxprune.pq_rate()), "give exactly one of sparsity"),
  ],
)
def test_ap_and_pq_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jaxprune.imp(cycles=2, cycle_steps=2, inner=optax.sgd(0.1), **kwargs)
