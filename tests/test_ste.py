"""Straight-through training: `jaxprune.ste_pruning`, `jaxprune.sr_ste` and the forward-pass helpers
(`jaxprune.masked_apply`, `jaxprune.ephemeral.masked_params`)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune

jit_modes = pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
NM = jaxprune.patterns.n_m(2, 4)


def normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def make_params():
  # No kernel names: every matrix is pruned (the default selection's fallback).
  return {"a": normal(0, (8, 12)), "c": normal(1, (12, 4)), "b": normal(2, (4,))}


def run(tx, params, steps, use_jit):
  """[(params before, grads, params after, state after)] for each update."""
  state = tx.init(params)
  update = jax.jit(tx.update) if use_jit else tx.update
  out = []
  for step in range(steps):
    grads = jax.tree.map(lambda x: 3.0 * normal(100 + step, x.shape), params)
    updates, state = update(grads, state, params)
    new = optax.apply_updates(params, updates)
    out.append((params, grads, new, state))
    params = new
  return out


@jit_modes
def test_ste_masks_are_those_of_the_weights_after_each_step(use_jit):
  history = run(optax.chain(optax.sgd(0.1), jaxprune.ste_pruning(0.5)), make_params(), 4, use_jit)
  changed, previous = 0, None
  for before, grads, after, state in history:
    masks = jaxprune.get_masks(state)
    assert masks["b"] is None
    for name in ("a", "c"):
      # Exactly the layer-wise magnitude masks of the new weights: what the next forward pass uses.
      np.testing.assert_array_equal(masks[name], jaxprune.prune(after, 0.5)[name])
      # Every weight trains on its gradient, pruned or not: the weights stay dense.
      np.testing.assert_allclose(after[name], before[name] - 0.1 * grads[name], rtol=1e-6)
    if previous is not None:
      changed += int((np.asarray(masks["a"]) != np.asarray(previous["a"])).sum())
    previous = masks
  assert changed > 0  # pruned weights came back and kept ones went: the masks follow the weights


def test_ste_deployed_weights_have_the_exact_sparsity():
  history = run(optax.chain(optax.sgd(0.1), jaxprune.ste_pruning(0.75)), make_params(), 3, False)
  _, _, params, state = history[-1]
  deployed = jaxprune.apply_masks(params, jaxprune.get_masks(state))
  assert int((np.asarray(deployed["a"]) == 0).sum()) == 72
  assert int((np.asarray(deployed["c"]) == 0).sum()) == 36
  assert np.all(np.asarray(params["a"]) != 0)  # the trained weights themselves are dense
  value = jaxprune.ephemeral.masked_params(params, state)
  jax.tree.map(np.testing.assert_array_equal, value, deployed)


def test_ste_gradual_schedule_ramps_and_then_fixes_the_masks():
  schedule = jaxprune.schedules.polynomial(begin_step=0, end_step=2, frequency=1)
  tx = optax.chain(optax.sgd(0.1), jaxprune.ste_pruning(0.5, schedule=schedule))
  history = run(tx, make_params(), 4, False)
  zeros = [int((~np.asarray(jaxprune.get_masks(s)["a"])).sum()) for *_, s in history]
  sparsities = [float(schedule.sparsity(jnp.asarray(t), 0.5)) for t in range(3)]
  assert zeros[:3] == [round(s * 96) for s in sparsities]
  assert zeros[3] == 48
  # After end_step the masks stay fixed while the dense weights keep training.
  m2, m3 = (np.asarray(jaxprune.get_masks(history[i][3])["a"]) for i in (2, 3))
  np.testing.assert_array_equal(m2, m3)


def test_masked_apply_on_a_linen_model_has_a_straight_through_gradient():
  model = nn.Dense(3, use_bias=False)
  x = normal(3, (5, 4))
  variables = {"params": {"kernel": normal(4, (4, 3))}}
  masks = jaxprune.prune(variables["params"], 0.5)
  c = normal(5, (5, 3))

  def loss(v, straight_through=True):
    apply = jaxprune.masked_apply(model.apply, masks, straight_through=straight_through)
    return jnp.sum(apply(v, x) * c)

  kernel, m = np.asarray(variables["params"]["kernel"]), np.asarray(masks["kernel"])
  np.testing.assert_allclose(loss(variables), np.sum((np.asarray(x) @ (kernel * m)) * c), 1e-5)
  wrt_masked = np.asarray(x).T @ np.asarray(c)  # d loss / d (masked kernel)
  np.testing.assert_allclose(jax.grad(loss)(variables)["params"]["kernel"], wrt_masked, rtol=1e-5)
  plain = jax.grad(loss)(variables, False)["params"]["kernel"]
  np.testing.assert_allclose(plain, np.where(m, wrt_masked, 0), rtol=1e-5, atol=1e-6)


def test_masked_params_names_the_leaves_that_do_not_match():
  with pytest.raises(ValueError, match=r"without a mask \['v'\], masks of no param \['u'\]"):
    jaxprune.ephemeral.masked_params({"w": jnp.ones(2), "v": jnp.ones(2)}, {"w": None, "u": None})


# ------------------------------------------------------------------------------------------ SR-STE


@jit_modes
def test_sr_ste_adds_the_decay_of_the_pruned_weights_to_the_gradient(use_jit):
  lr, decay = 0.1, 0.3
  tx = jaxprune.sr_ste(2, 4, decay=decay, inner=optax.sgd(lr))
  history = run(tx, make_params(), 4, use_jit)
  forward = {"a": np.ones((8, 12), bool), "c": np.ones((12, 4), bool)}  # all kept at first
  for before, grads, after, state in history:
    masks = jaxprune.get_masks(state)
    for name, shape in (("a", (8, 12)), ("c", (12, 4))):
      w, g = np.asarray(before[name]), np.asarray(grads[name])
      # SGD: w <- w - lr (g + decay (1 - M) w), M the mask of this step's forward pass.
      expected = w - lr * (g + decay * np.where(forward[name], 0.0, w))
      np.testing.assert_allclose(after[name], expected, rtol=1e-6, atol=1e-6)
      m = np.asarray(masks[name])
      groups = m.reshape(shape[0] // 4, 4, shape[1]).sum(axis=1)
      assert np.all(groups == 2)  # exactly 2 of every 4 along the input axis
      np.testing.assert_array_equal(m, jaxprune.prune(after, None, pattern=NM)[name])
      forward[name] = m
    np.testing.assert_array_equal(after["b"], np.asarray(before["b"]) - lr * np.asarray(grads["b"]))


def test_sr_ste_without_decay_is_ste_with_an_n_m_pattern():
  a = run(jaxprune.sr_ste(2, 4, decay=0.0, inner=optax.sgd(0.1)), make_params(), 3, False)
  b = run(jaxprune.ste_pruning(pattern=NM, inner=optax.sgd(0.1)), make_params(), 3, False)
  for (_, _, pa, sa), (_, _, pb, sb) in zip(a, b):
    jax.tree.map(np.testing.assert_array_equal, pa, pb)
    jax.tree.map(np.testing.assert_array_equal, jaxprune.get_masks(sa), jaxprune.get_masks(sb))


def test_errors_name_the_bad_argument():
  with pytest.raises(ValueError, match="sr_ste: needs the inner= form"):
    jaxprune.sr_ste(2, 4)
  with pytest.raises(ValueError, match=r"sr_ste: decay must be a number >= 0, got -1"):
    jaxprune.sr_ste(2, 4, decay=-1.0, inner=optax.sgd(0.1))
  with pytest.raises(TypeError, match="sr_ste: decay must be a number"):
    jaxprune.sr_ste(2, 4, decay="0.1", inner=optax.sgd(0.1))
  with pytest.raises(TypeError, match="ste_pruning: schedule must be a jaxprune.schedules"):
    jaxprune.ste_pruning(0.5, schedule=100)
  with pytest.raises(ValueError, match="ste_pruning: sparsity must be"):
    jaxprune.ste_pruning(1.5)
  tx = jaxprune.sr_ste(2, 4, inner=optax.sgd(0.1))
  params = {"w": jnp.ones((6, 4))}
  with pytest.raises(ValueError, match="'w'"):  # 4 does not divide the input axis of 6
    tx.update(params, tx.init(params), params)
