"""Scores with running statistics: PLATON (`jaxprune.platon`) and Fisher pruning
(`jaxprune.fisher_pruning`), against the formulas computed by hand in NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune

jit_modes = pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
LR = 0.05


def normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def make_params():
  # No kernel names: every matrix is pruned (the default selection's fallback).
  return {"a": normal(0, (6, 8)), "c": normal(1, (8, 4)), "b": normal(2, (4,))}


def run(tx, steps, use_jit, **extra_fn):
  """[(params before, grads, params after, state after)] for each update."""
  params = make_params()
  state = tx.init(params)
  update = jax.jit(tx.update) if use_jit else tx.update
  out = []
  for step in range(steps):
    grads = jax.tree.map(lambda x: normal(100 + step, x.shape), params)
    extra = {k: f(grads) for k, f in extra_fn.items()}
    updates, state = update(grads, state, params, **extra)
    new = optax.apply_updates(params, updates)
    out.append(jax.tree.map(np.asarray, (params, grads, new, state)))
    params = new
  return out


def top_k(scores, k):
  """Mask keeping the k highest of ``scores`` (ties: lower flat index first)."""
  flat = np.asarray(scores, np.float32).ravel()
  order = np.lexsort((np.arange(flat.size), -flat))
  mask = np.zeros(flat.size, bool)
  mask[order[:k]] = True
  return mask.reshape(np.shape(scores))


# ---------------------------------------------------------------------------------------- PLATON


def platon_reference(history, beta1, beta2, window):
  """The authors' update_ipt_with_local_window, step by step, with the weights before the step."""
  ipt = {k: np.zeros_like(history[0][0][k]) for k in ("a", "c")}
  avg = {k: np.zeros_like(v) for k, v in ipt.items()}
  unc = {k: np.zeros_like(v) for k, v in ipt.items()}
  out = []
  for t, (before, grads, _, _) in enumerate(history):
    local = t % window
    for k in ipt:
      now = np.abs(before[k] * grads[k])
      if local == 0:
        avg[k] = beta1 * avg[k] + (1 - beta1) * ipt[k]
        unc[k] = beta2 * unc[k] + (1 - beta2) * np.abs(ipt[k] - avg[k])
        ipt[k] = now
      else:
        ipt[k] = (ipt[k] * local + now) / (local + 1)
    out.append({k: (ipt[k].copy(), avg[k].copy(), unc[k].copy()) for k in ipt})
  return out


@jit_modes
def test_platon_statistics_and_global_masks(use_jit):
  schedule = jaxprune.schedules.polynomial(begin_step=3, end_step=9, frequency=3)
  tx = jaxprune.platon(0.6, schedule=schedule, window=3, inner=optax.sgd(LR))
  history = run(tx, 10, use_jit)
  reference = platon_reference(history, 0.85, 0.95, 3)
  kept = {"a": np.ones((6, 8), bool), "c": np.ones((8, 4), bool)}
  for t, ((before, _, after, state), ref) in enumerate(zip(history, reference)):
    s = state.score_state
    for k in ("a", "c"):
      for got, want in zip((s.window[k], s.importance[k], s.uncertainty[k]), ref[k]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    if t in (3, 6, 9):  # one global threshold on I-bar * U-bar over both leaves
      sparsity = float(schedule.sparsity(jnp.asarray(t), 0.6))
      scores = np.concatenate([(ref[k][1] * ref[k][2]).ravel() for k in ("a", "c")])
      mask = top_k(scores, 80 - round(sparsity * 80))
      kept = {"a": mask[:48].reshape(6, 8), "c": mask[48:].reshape(8, 4)}
    masks = jaxprune.get_masks(state)
    for k in ("a", "c"):
      np.testing.assert_array_equal(masks[k], kept[k])
      assert np.all(after[k][~kept[k]] == 0)  # persistent: pruned weights are zero


def test_platon_score_called_directly_matches_its_example():
  score = jaxprune.platon_score(beta1=0.5, beta2=0.5, window=2)
  params, grads = {"w": jnp.array([2.0])}, {"w": jnp.array([1.0])}
  state = score.init(params)
  for t in range(3):  # |w g| = 2 every step: the window's mean is 2 and enters at t = 2
    state = score.update(state, jaxprune.scores.ScoreInputs(params, grads, t, state, {}))
  np.testing.assert_allclose(state.importance["w"], [1.0])  # 0.5 * 0 + 0.5 * 2
  np.testing.assert_allclose(state.uncertainty["w"], [0.5])  # 0.5 * |2 - 1|


# ---------------------------------------------------------------------------------------- Fisher


@jit_modes
@pytest.mark.parametrize("decay", [None, 0.8])
def test_fisher_saliency_is_half_the_running_squared_gradient_times_w_squared(use_jit, decay):
  tx = jaxprune.fisher_pruning(
    0.5, decay=decay, schedule=jaxprune.schedules.one_shot(3), inner=optax.sgd(LR)
  )
  history = run(tx, 5, use_jit)
  fisher = {"a": np.zeros((6, 8)), "c": np.zeros((8, 4))}
  for t, (before, grads, after, state) in enumerate(history):
    for k in fisher:
      rate = 1 / (t + 1) if decay is None else 1 - decay  # running mean, or exponential average
      fisher[k] = fisher[k] + rate * (grads[k] ** 2 - fisher[k])
      np.testing.assert_allclose(state.score_state.fisher[k], fisher[k], rtol=1e-5, atol=1e-7)
      if t == 3:
        saliency = 0.5 * fisher[k] * before[k] ** 2
        np.testing.assert_array_equal(jaxprune.get_masks(state)[k], top_k(saliency, k_of(k)))
    assert int(state.score_state.steps) == t + 1


def k_of(name):
  return {"a": 24, "c": 16}[name]


def test_fisher_per_example_reads_the_squared_per_example_gradients():
  def loss(params, x, y):  # one example: a linear model's squared error
    return (jnp.dot(x, params["a"]).sum() - y) ** 2

  params = make_params()
  x, y = normal(5, (10, 6)), normal(6, (10,))
  value, grads, squares = jaxprune.fisher.squared_gradients(loss, params, x, y)
  per_example = [jax.grad(loss)(params, x[i], y[i])["a"] for i in range(10)]
  np.testing.assert_allclose(grads["a"], np.mean(per_example, axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    squares["a"], np.mean(np.square(per_example), axis=0), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(value, np.mean([loss(params, x[i], y[i]) for i in range(10)]), 1e-5)

  # The chain form works: the squared gradients come in as an argument, not from the updates.
  tx = optax.chain(optax.sgd(LR), jaxprune.fisher_pruning(0.5, per_example=True))
  state = tx.init(params)
  _, state = tx.update(grads, state, params, squared_grads=squares)
  saliency = 0.5 * np.asarray(squares["a"]) * np.asarray(params["a"]) ** 2
  np.testing.assert_array_equal(jaxprune.get_masks(state)["a"], top_k(saliency, 24))
  with pytest.raises(ValueError, match=r"reads the update arguments \['squared_grads'\]"):
    tx.update(grads, state, params)


def test_errors_name_the_bad_argument():
  sgd = optax.sgd(0.1)
  once = jaxprune.schedules.one_shot(0)
  with pytest.raises(ValueError, match="platon: needs the inner= form"):
    jaxprune.platon(0.5, schedule=once)
  with pytest.raises(ValueError, match=r"platon: beta1 must be in \[0, 1\), got 1.0"):
    jaxprune.platon(0.5, schedule=once, beta1=1.0, inner=sgd)
  with pytest.raises(ValueError, match="platon: window must be >= 1, got 0"):
    jaxprune.platon(0.5, schedule=once, window=0, inner=sgd)
  with pytest.raises(TypeError, match="platon: schedule must be a jaxprune.schedules.Schedule"):
    jaxprune.platon(0.5, schedule="cubic", inner=sgd)
  with pytest.raises(ValueError, match="fisher_pruning: needs the inner= form"):
    jaxprune.fisher_pruning(0.5)
  with pytest.raises(ValueError, match=r"fisher_pruning: decay must be None or in \[0, 1\)"):
    jaxprune.fisher_pruning(0.5, decay=1.0, inner=sgd)
  with pytest.raises(TypeError, match="fisher_pruning: per_example must be a bool"):
    jaxprune.fisher_pruning(0.5, per_example="yes", inner=sgd)
