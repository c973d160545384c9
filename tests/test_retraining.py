"""Retraining schedules against their formulas (Zimmer et al. 2021; Liu et al. 2023), at cycle
boundaries and inside cycles."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune import retraining

T, TW, R = 100, 10, 50
ORIGINAL = optax.warmup_cosine_decay_schedule(0.0, 0.1, TW, T, end_value=0.001)
LR0 = [float(ORIGINAL(i)) for i in range(T)]
LR_MAX, LR_MIN = max(LR0), min(LR0[TW:])
W, M = R // 10, R - R // 10


def reference(name, step, cycle_len=R, cycle_start=None, cycle=None):
  """The formulas of ../shared/REFERENCES.md, written out with Python floats."""
  if step < T:
    return LR0[step]
  if cycle_start is None:
    cycle, j = divmod(step - T, cycle_len)
  else:
    j = step - cycle_start
  w, m = cycle_len // 10, cycle_len - cycle_len // 10
  if name == "ft":
    return LR_MIN
  if name == "lrw":
    return LR0[T - cycle_len + j]
  if j < w and name != "silo":
    return LR_MAX * j / w
  jp = j - w
  if name == "slr":
    i = math.floor(jp * T / m)
    return LR_MAX if i < TW else LR0[i]
  if name == "clr":
    return LR_MIN + (LR_MAX - LR_MIN) * (1 + math.cos(math.pi * jp / m)) / 2
  if name == "llr":
    return LR_MAX * (1 - jp / m)
  if name == "silo":
    return silo_reference(cycle, j, cycle_len)
  raise AssertionError(name)


def silo_reference(cycle, j, length, fraction=0.2, delay=1):
  """SILO as the authors' resnet_20_cifar_10.py runs it (REFERENCES.md 11): the peak of the cycle
  after prune c + 1 from the fraction pruned c + 1 - delay prunes in; ramp max_lr / W per
  iteration (W = 20,000 of a 28,150-iteration cycle), max_lr / 10 from epoch 25 of 50, / 100 from
  epoch 32."""
  x = 1 - (1 - fraction) ** max(cycle + 1 - delay, 0)
  peak = 0.03 if x == 0 else 0.04 / (1 + (x / (1 - x)) ** -5) + 0.03
  if j >= math.floor(0.64 * length):
    return peak / 100
  if j >= math.floor(0.5 * length):
    return peak / 10
  return peak * min((j + 1) / (20_000 / 28_150 * length), 1.0)


NAMES = ["ft", "lrw", "slr", "clr", "llr", "silo"]
STEPS = [
  0,
  5,
  TW,
  50,
  T - 1,
  T,
  T + 1,
  T + W - 1,
  T + W,
  T + W + 1,
  T + 30,
  T + R - 1,
  T + R,
  T + R + 3,
  T + 2 * R - 1,
  T + 3 * R + 17,
]


def make(name, retrain_steps=R):
  fn = getattr(retraining, name)
  kwargs = {"prune_fraction": 0.2} if name == "silo" else {}
  return fn(ORIGINAL, T, retrain_steps, warmup_steps=TW, **kwargs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_schedule_matches_formula(name, use_jit):
  schedule = make(name)
  schedule = jax.jit(schedule) if use_jit else schedule
  for step in STEPS:
    np.testing.assert_allclose(
      float(schedule(step)),
      reference(name, step),
      rtol=2e-5,
      atol=1e-7,
      err_msg=f"{name} at step {step}",
    )


@pytest.mark.parametrize("name", ["slr", "clr", "silo"])
def test_cycles_of_different_lengths(name):
  lengths = [50, 20, 30]
  schedule = make(name, lengths)
  starts = [T, T + 50, T + 70]
  for cycle, (start, length) in enumerate(zip(starts, lengths)):
    for j in (0, 1, length // 10, length // 2, length - 1):
      np.testing.assert_allclose(
        float(schedule(start + j)),
        reference(name, start + j, length, start, cycle),
        rtol=2e-5,
        atol=1e-7,
      )
  # After the last cycle the final rate stays.
  assert float(schedule(T + 100 + 40)) == pytest.approx(float(schedule(T + 99)))


def test_usable_as_an_optax_learning_rate():
  tx = optax.sgd(make("slr"))
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(3):
    updates, state = update({"w": jnp.ones(3)}, state, params)
  np.testing.assert_allclose(updates["w"], -LR0[2] * np.ones(3), rtol=1e-6)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(original_steps=0, retrain_steps=5), "original_steps must be >= 1"),
    (dict(original_steps=10, retrain_steps=0), "retrain_steps must be >= 1"),
    (dict(original_steps=10, retrain_steps=[5, -1]), "retrain_steps must be >= 1"),
    (
      dict(original_steps=10, retrain_steps=5, warmup_steps=10),
      r"warmup_steps \(10\) must be below",
    ),
    (dict(original_steps=10, retrain_steps=[]), "retrain_steps is empty"),
  ],
)
def test_bad_cycle_structure(kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    retraining.clr(ORIGINAL, **kwargs)


def test_lrw_cycle_longer_than_original():
  with pytest.raises(ValueError, match="longer than the original phase"):
    retraining.lrw(ORIGINAL, 10, 20)


def test_silo_bad_prune_fraction():
  with pytest.raises(ValueError, match="prune_fraction must be in"):
    retraining.silo(ORIGINAL, T, R, prune_fraction=1.2)


def test_silo_peaks_and_the_authors_resnet20_cycle():
  # The authors' cycle in iterations: 50 epochs of 563, ramp of max_lr / 20,000 per iteration,
  # /10 from iteration 25 * 563, /100 from 32 * 563. Their peaks for p = 20%: 0.03 for the first
  # retraining cycle (x = 0), then alpha / (1 + (x / (1 - x)) ** -5) + 0.03.
  length = 50 * 563
  lr = retraining.silo(optax.constant_schedule(0.1), 10, length, prune_fraction=0.2)
  for cycle, x in enumerate([0.0, 0.2, 0.36, 0.488, 1 - 0.8**4]):
    peak = 0.03 if x == 0 else 0.04 / (1 + (x / (1 - x)) ** -5) + 0.03
    start = 10 + cycle * length
    for j, expected in [
      (0, peak / 20_000),
      (9_999, peak / 2),
      (25 * 563 - 1, peak * 25 * 563 / 20_000),
      (25 * 563, peak / 10),
      (32 * 563 - 1, peak / 10),
      (32 * 563, peak / 100),
      (length - 1, peak / 100),
    ]:
      np.testing.assert_allclose(float(lr(start + j)), expected, rtol=1e-5, err_msg=(cycle, j))
  # No delay: the first retraining cycle already peaks at x = p.
  eager = retraining.silo(optax.constant_schedule(0.1), 10, 100, prune_fraction=0.5, delay=0)
  np.testing.assert_allclose(float(eager(10 + 50)), (0.04 / 2 + 0.03) / 10, rtol=1e-6)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(warmup_fraction=0.0), "warmup_fraction must be a positive number, got 0.0"),
    (dict(decay_boundaries=(0.7, 0.5)), r"decay_boundaries must be increasing .* \(0.7, 0.5\)"),
    (dict(decay_boundaries=(0.5, 1.5)), "decay_boundaries must be increasing"),
    (dict(decay_factor=2.0), r"decay_factor must be in \(0, 1\], got 2.0"),
    (dict(offset=-1.0), "offset must be a number >= 0, got -1.0"),
    (dict(delay=-1), "delay must be >= 0, got -1"),
    (dict(beta=float("nan")), "beta must be a positive number, got nan"),
  ],
)
def test_silo_bad_hyperparameters(kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    retraining.silo(ORIGINAL, T, R, prune_fraction=0.2, **kwargs)


def allr_reference(step, norm_drop, fraction, cycle_len=R):
  if step < T:
    return LR0[step]
  j = (step - T) % cycle_len
  w, m = cycle_len // 10, cycle_len - cycle_len // 10
  start = min(max(LR_MAX * norm_drop / math.sqrt(fraction), min(cycle_len / T, 1) * LR_MAX), LR_MAX)
  return start * j / w if j < w else start * (1 - (j - w) / m)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("norm_drop, fraction", [(0.05, 0.2), (0.2, 0.2), (0.9, 0.5)])
def test_allr_formula(use_jit, norm_drop, fraction):
  # The three cases: clipped to the floor (R/T * lr_max), inside the clip range, clipped to lr_max.
  schedule = retraining.allr(ORIGINAL, T, R, warmup_steps=TW)
  value = jax.jit(schedule.value) if use_jit else schedule.value
  for step in [0, TW, T - 1, T, T + W - 1, T + W, T + W + 7, T + R - 1, T + R, T + 2 * R + W + 3]:
    np.testing.assert_allclose(
      float(value(step, norm_drop, fraction)),
      allr_reference(step, norm_drop, fraction),
      rtol=1e-5,
      atol=1e-7,
    )


def test_allr_follows_the_prunes_of_imp():
  # ALLR inside the optimizer that imp wraps reads each prune's statistics from imp.
  import jaxprune

  params = {"w": jax.random.normal(jax.random.key(0), (32, 32))}
  lr = retraining.allr(optax.constant_schedule(0.1), 20, 10)
  tx = jaxprune.imp(
    rate=0.5,
    cycles=2,
    cycle_steps=[20, 10, 10],
    reset_optimizer=True,
    inner=optax.inject_hyperparams(optax.sgd)(learning_rate=lr),
  )
  state = tx.init(params)
  update = jax.jit(tx.update)
  seen = []
  for step in range(40):
    grads = {"w": jax.random.normal(jax.random.key(step + 1), (32, 32))}
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    seen.append(float(state.inner_state.hyperparams["learning_rate"]))
    if step in (20, 30):
      continue  # the prune step resets the optimizer: its state shows a freshly initialised rate
    info = jaxprune.get_cycle(state)
    expected = float(lr.value(step, info.norm_drop, info.pruned_fraction))
    assert seen[-1] == pytest.approx(expected, rel=1e-6), step
  assert seen[:20] == [pytest.approx(0.1)] * 20
  # W = 1 warm-up step (the prune step, rate 0), then linear decay from the start value, which is
  # at least the floor min(R / T, 1) * lr_max = 0.05.
  assert seen[21] >= 0.05 - 1e-8 and seen[21] > seen[22] > seen[29] > 0
  info = jaxprune.get_cycle(state)
  assert 0 < float(info.norm_drop) < 1 and float(info.pruned_fraction) == 0.5
