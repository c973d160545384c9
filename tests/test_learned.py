"""Movement pruning (hard and soft) and sparse connectivity learning: their scores against the
formulas, computed by hand in NumPy, the frozen pruned weights and the argument errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune

jit_modes = pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
LR = 0.1


def normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def make_params():
  # No kernel names: every matrix is pruned (the default selection's fallback).
  return {"a": normal(0, (6, 8)), "c": normal(1, (8, 4)), "b": normal(2, (4,))}


def run(tx, steps, use_jit):
  """[(params before, grads, params after, state after)] for each update."""
  params = make_params()
  state = tx.init(params)
  update = jax.jit(tx.update) if use_jit else tx.update
  out = []
  for step in range(steps):
    grads = jax.tree.map(lambda x: normal(100 + step, x.shape), params)
    updates, state = update(grads, state, params)
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


def check_frozen(history, kept_fn):
  """Pruned weights (in a step's forward masks) keep their values; kept ones take SGD's step."""
  forward = {"a": np.ones((6, 8), bool), "c": np.ones((8, 4), bool)}
  for before, grads, after, state in history:
    for name in forward:
      m = forward[name]
      np.testing.assert_array_equal(after[name][~m], before[name][~m])
      np.testing.assert_allclose(after[name][m], (before[name] - LR * grads[name])[m], rtol=1e-6)
    forward = kept_fn(state)


# --------------------------------------------------------------------------------- hard movement


@jit_modes
def test_hard_movement_keeps_the_top_accumulated_minus_w_g(use_jit):
  tx = jaxprune.movement_pruning(0.5, inner=optax.sgd(LR))
  history = run(tx, 4, use_jit)
  score = {"a": np.zeros((6, 8)), "c": np.zeros((8, 4))}
  for before, grads, after, state in history:
    masks = jaxprune.get_masks(state)
    for name, size in (("a", 48), ("c", 32)):
      score[name] = score[name] - before[name] * grads[name]  # S = -sum_t w_t g_t
      np.testing.assert_allclose(state.score_state[name], score[name], rtol=1e-5, atol=1e-6)
      np.testing.assert_array_equal(masks[name], top_k(score[name], size // 2))
  check_frozen(history, lambda s: {k: np.asarray(jaxprune.get_masks(s)[k]) for k in ("a", "c")})


# --------------------------------------------------------------------------------- soft movement


def test_soft_movement_learns_sigmoid_scores_with_the_mean_regulariser():
  tau, lam, eta = 0.3, 50.0, 0.5
  tx = jaxprune.movement_pruning(
    variant="soft",
    threshold=tau,
    regularization=lam,
    score_optimizer=optax.sgd(eta),
    inner=optax.sgd(LR),
  )
  history = run(tx, 4, False)
  s = {"a": np.zeros((6, 8)), "c": np.zeros((8, 4))}
  for before, grads, after, state in history:
    masks = jaxprune.get_masks(state)
    for name in s:
      sig = 1 / (1 + np.exp(-s[name]))
      # d/dS of lam * mean over the 2 pruned leaves of mean(sigmoid(S)), plus the STE's g * w.
      reg = lam / 2 * sig * (1 - sig) / s[name].size
      s[name] = s[name] - eta * (grads[name] * before[name] + reg)
      np.testing.assert_allclose(state.score_state.scores[name], s[name], rtol=1e-5, atol=1e-6)
      np.testing.assert_array_equal(masks[name], 1 / (1 + np.exp(-s[name])) > tau)
    assert masks["b"] is None
  assert 0 < sum(int((~np.asarray(jaxprune.get_masks(history[-1][3])[k])).sum()) for k in s) < 80
  check_frozen(history, lambda st: {k: np.asarray(jaxprune.get_masks(st)[k]) for k in ("a", "c")})


def test_soft_movement_threshold_and_regulariser_follow_the_schedule():
  schedule = jaxprune.schedules.polynomial(begin_step=0, end_step=4, frequency=1)
  tau, lam, eta = 0.4, 20.0, 0.5
  tx = jaxprune.movement_pruning(
    variant="soft",
    threshold=tau,
    regularization=lam,
    schedule=schedule,
    score_optimizer=optax.sgd(eta),
    inner=optax.sgd(LR),
  )
  s = np.zeros((6, 8))
  for t, (before, grads, _, state) in enumerate(run(tx, 4, False)):
    tau_t = float(schedule.sparsity(jnp.asarray(t), tau))  # cubic ramp from 0 to tau
    sig = 1 / (1 + np.exp(-s))
    s = s - eta * (grads["a"] * before["a"] + lam * tau_t / tau / 2 * sig * (1 - sig) / s.size)
    np.testing.assert_allclose(state.score_state.scores["a"], s, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(jaxprune.get_masks(state)["a"], 1 / (1 + np.exp(-s)) > tau_t)


# ------------------------------------------------------------------------------------------- SCL


@jit_modes
def test_scl_trains_masks_from_per_feature_normalised_gradients(use_jit):
  lam, eta = 0.4, 0.3
  tx = jaxprune.scl(regularization=lam, mask_optimizer=optax.sgd(eta), inner=optax.sgd(LR))
  history = run(tx, 3, use_jit)
  m = {"a": np.ones((6, 8)), "c": np.ones((8, 4))}
  for before, grads, after, state in history:
    for name in m:
      gw = grads[name] * before[name]
      rms = np.sqrt(np.mean(gw**2, axis=0, keepdims=True))  # over each output feature's inputs
      m[name] = m[name] - eta * (gw / rms + lam)
      np.testing.assert_allclose(state.score_state.scores[name], m[name], rtol=1e-5, atol=1e-5)
      np.testing.assert_array_equal(jaxprune.get_masks(state)[name], m[name] > 0)
  assert (~np.asarray(jaxprune.get_masks(history[-1][3])["a"])).sum() > 0
  check_frozen(history, lambda st: {k: np.asarray(jaxprune.get_masks(st)[k]) for k in ("a", "c")})


def test_scl_more_regularisation_prunes_more():
  def pruned(lam):
    tx = jaxprune.scl(regularization=lam, mask_optimizer=optax.sgd(0.3), inner=optax.sgd(LR))
    state = run(tx, 4, True)[-1][3]
    return sum(int((~np.asarray(jaxprune.get_masks(state)[k])).sum()) for k in ("a", "c"))

  counts = [pruned(lam) for lam in (0.0, 0.5, 2.0)]
  assert counts[0] < counts[1] < counts[2]


# ---------------------------------------------------------------------------------------- errors


def test_errors_name_the_bad_argument():
  sgd = optax.sgd(0.1)
  with pytest.raises(ValueError, match="movement_pruning: needs the inner= form"):
    jaxprune.movement_pruning(0.5)
  with pytest.raises(ValueError, match="variant must be one of"):
    jaxprune.movement_pruning(0.5, variant="medium", inner=sgd)
  with pytest.raises(ValueError, match="soft variant learns its sparsity.*got 0.5"):
    jaxprune.movement_pruning(0.5, variant="soft", inner=sgd)
  with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\), got 1.5"):
    jaxprune.movement_pruning(variant="soft", threshold=1.5, inner=sgd)
  with pytest.raises(ValueError, match="regularization must be a number >= 0"):
    jaxprune.movement_pruning(variant="soft", regularization=-1.0, inner=sgd)
  with pytest.raises(ValueError, match="takes no pattern"):
    jaxprune.movement_pruning(variant="soft", pattern=jaxprune.patterns.n_m(2, 4), inner=sgd)
  with pytest.raises(ValueError, match="scl: needs the inner= form"):
    jaxprune.scl()
  with pytest.raises(ValueError, match="scl: init_value must be positive"):
    jaxprune.scl(init_value=0.0, inner=sgd)
  with pytest.raises(ValueError, match="scl: regularization must be a number >= 0, got -2"):
    jaxprune.scl(regularization=-2.0, inner=sgd)
  with pytest.raises(TypeError, match="scl: normalize must be a bool"):
    jaxprune.scl(normalize=1, inner=sgd)
