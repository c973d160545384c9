"""Learning-rate schedules for the retraining cycles of iterative pruning.

A run is an original training phase of ``original_steps`` (``T``) steps with the learning rate
``lr0(i)``, followed by retraining cycles of ``R`` steps each (``retrain_steps``: one length for all
cycles, or a sequence of lengths). Each function returns an optax schedule ``step -> learning rate``
that follows ``lr0`` during the original phase and the named formula inside every retraining cycle.
Notation, after Zimmer et al.: ``Tw`` is the original warm-up length, ``lr_max = max lr0``,
``lr_min = min_{i >= Tw} lr0(i)``, ``W = floor(0.1 R)`` the retraining warm-up (a linear ramp from 0
to ``lr_max``) and ``M = R - W``; ``j`` counts steps inside a cycle and ``j' = j - W``.

References:
  Zimmer, Spiegel & Pokutta, `How I learned to stop worrying and love retraining
  <https://arxiv.org/abs/2111.00843>`_, 2021 (FT, LRW, SLR, CLR);
  Le & Hua, `Network pruning that matters: a case study on retraining variants
  <https://arxiv.org/abs/2105.03193>`_, 2021 (LLR); Renda, Frankle & Carbin, `Comparing rewinding and
  fine-tuning in neural network pruning <https://arxiv.org/abs/2003.02389>`_, 2020 (LRW);
  Zimmer et al. also define ALLR (adaptive linear learning-rate restarting);
  Liu et al., `Optimizing learning rate schedules for iterative pruning of deep neural networks
  <https://arxiv.org/abs/2212.06144>`_, TMLR 2023 (SILO).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune.checks import check_int
from jaxprune.typing import ArrayLike

__all__ = ["AdaptiveLinear", "allr", "clr", "ft", "llr", "lrw", "silo", "slr"]


class _Cycles(NamedTuple):
  table: jax.Array  # lr0(i) for i < T, float32
  original_steps: int
  starts: np.ndarray  # first step of each retraining cycle
  lengths: np.ndarray  # length of each retraining cycle
  lr_max: float
  lr_min: float
  warmup_steps: int


def _cycles(
  owner: str,
  original: optax.Schedule,
  original_steps: int,
  retrain_steps: int | Sequence[int],
  warmup_steps: int,
) -> _Cycles:
  original_steps = check_int("original_steps", original_steps, 1, owner)
  warmup_steps = check_int("warmup_steps", warmup_steps, 0, owner)
  if warmup_steps >= original_steps:
    raise ValueError(
      f"{owner}: warmup_steps ({warmup_steps}) must be below original_steps ({original_steps})."
    )
  given = [retrain_steps] if not isinstance(retrain_steps, Sequence) else list(retrain_steps)
  if not given:
    raise ValueError(f"{owner}: retrain_steps is empty.")
  lengths = np.asarray([check_int("retrain_steps", r, 1, owner) for r in given], np.int64)
  starts = original_steps + np.concatenate([[0], np.cumsum(lengths)[:-1]])
  table = np.asarray(jax.device_get(jax.vmap(original)(jnp.arange(original_steps))), np.float64)
  if not np.all(np.isfinite(table)):
    raise ValueError(f"{owner}: the original schedule is not finite on [0, {original_steps}).")
  return _Cycles(
    jnp.asarray(table, jnp.float32),
    original_steps,
    starts,
    lengths,
    float(table.max()),
    float(table[warmup_steps:].min()),
    warmup_steps,
  )


def _schedule(
  cycles: _Cycles,
  retrain: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
  *,
  repeat_last: bool,
) -> optax.Schedule:
  """Combines the original phase with ``retrain(cycle, j, R)``, the rate at step ``j`` of a cycle.

  With one cycle length the cycles repeat forever; with a sequence, steps after the last cycle keep
  the last cycle's final rate.
  """
  starts = jnp.asarray(cycles.starts, jnp.int32)
  lengths = jnp.asarray(cycles.lengths, jnp.int32)

  def schedule(step, *args):  # args: extra inputs of `retrain` (ALLR's prune statistics)
    step = jnp.asarray(step, jnp.int32)
    if repeat_last:
      offset = step - cycles.original_steps
      cycle = jnp.maximum(offset, 0) // lengths[0]
      j = jnp.maximum(offset, 0) % lengths[0]
      length = lengths[0]
    else:
      cycle = jnp.clip(jnp.searchsorted(starts, step, side="right") - 1, 0, len(cycles.starts) - 1)
      length = lengths[cycle]
      j = jnp.minimum(step - starts[cycle], length - 1)
    original = cycles.table[jnp.clip(step, 0, cycles.original_steps - 1)]
    return jnp.where(
      step < cycles.original_steps, original, retrain(cycle, j, length, *args).astype(jnp.float32)
    )

  return schedule


_Retrain = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _warmup_then(cycles: _Cycles, after: _Retrain) -> _Retrain:
  """Linear warm-up from 0 to ``lr_max`` over ``W = floor(0.1 R)`` steps, then ``after(cycle, j', M)``."""

  def retrain(cycle, j, length):
    warmup = length // 10
    main = length - warmup
    ramp = cycles.lr_max * j / jnp.maximum(warmup, 1)
    return jnp.where(j < warmup, ramp, after(cycle, j - warmup, main))

  return retrain


def _make(owner, original, original_steps, retrain_steps, warmup_steps, build):
  cycles = _cycles(owner, original, original_steps, retrain_steps, warmup_steps)
  return _schedule(cycles, build(cycles), repeat_last=not isinstance(retrain_steps, Sequence))


_ARGS_DOC = """
  Args:
    original: the original run's learning-rate schedule ``lr0`` (an optax schedule).
    original_steps: ``T``, the length of the original training phase.
    retrain_steps: ``R``, the length of every retraining cycle, or a sequence of cycle lengths.
    warmup_steps: ``Tw``, the original schedule's warm-up length (excluded from ``lr_min``).

  Returns:
    An optax schedule ``step -> learning rate``.

  Raises:
    ValueError, TypeError: for lengths below 1, a warm-up not shorter than ``T``, or a non-finite
      original schedule.
"""


def ft(
  original: optax.Schedule,
  original_steps: int,
  retrain_steps: int | Sequence[int],
  *,
  warmup_steps: int = 0,
) -> optax.Schedule:
  """Fine-tuning: constant ``lr_min`` in every retraining cycle, no warm-up."""
  return _make(
    "ft",
    original,
    original_steps,
    retrain_steps,
    warmup_steps,
    lambda c: lambda cycle, j, length: jnp.full((), c.lr_min),
  )


def lrw(
  original: optax.Schedule,
  original_steps: int,
  retrain_steps: int | Sequence[int],
  *,
  warmup_steps: int = 0,
) -> optax.Schedule:
  """Learning-rate rewinding: the last ``R`` steps of the original schedule, ``lr0(T - R + j)``."""

  def build(c):
    if int(c.lengths.max()) > c.original_steps:
      raise ValueError(
        f"lrw: a retraining cycle ({int(c.lengths.max())} steps) is longer than the "
        f"original phase ({c.original_steps})."
      )
    return lambda cycle, j, length: c.table[c.original_steps - length + j]

  return _make("lrw", original, original_steps, retrain_steps, warmup_steps, build)


def slr(
  original: optax.Schedule,
  original_steps: int,
  retrain_steps: int | Sequence[int],
  *,
  warmup_steps: int = 0,
) -> optax.Schedule:
  """Scaled learning-rate restarting: after the warm-up, the whole original schedule compressed into
  ``M`` steps, ``lr0'(floor(j' * T / M))``, where ``lr0'`` has its warm-up replaced by ``lr_max``."""

  def build(c):
    table = jnp.where(jnp.arange(c.original_steps) < c.warmup_steps, c.lr_max, c.table)
    return _warmup_then(
      c,
      lambda cycle, j, main: table[
        jnp.minimum((j * c.original_steps) // main, c.original_steps - 1)
      ],
    )

  return _make("slr", original, original_steps, retrain_steps, warmup_steps, build)


def clr(
  original: optax.Schedule,
  original_steps: int,
  retrain_steps: int | Sequence[int],
  *,
  warmup_steps: int = 0,
) -> optax.Schedule:
  """Cyclic learning-rate restarting: after the warm-up, cosine from ``lr_max`` to ``lr_min``,
  ``lr_min + (lr_max - lr_min) * (1 + cos(pi j' / M)) / 2``."""
  return _make(
    "clr",
    original,
    original_steps,
    retrain_steps,
    warmup_steps,
    lambda c: _warmup_then(
      c,
      lambda cycle, j, main: (
        c.lr_min + (c.lr_max - c.lr_min) * (1 + jnp.cos(jnp.pi * j / main)) / 2
      ),
    ),
  )


def llr(
  original: optax.Schedule,
  original_steps: int,
  retrain_steps: int | Sequence[int],
  *,
  warmup_steps: int = 0,
) -> optax.Schedule:
  """Linear learning-rate restarting: after the warm-up, linear from ``lr_max`` to 0."""
  return _make(
    "llr",
    original,
    original_steps,
    retrain_steps,
    warmup_steps,
    lambda c: _warmup_then(c, lambda cycle, j, main: c.lr_max * (1 - j / main)),
  )


# The within-cycle schedule of the authors' ResNet-20 / CIFAR-10 run (Martin1937/SILO,
# resnet_20_cifar_10.py): cycles of 50 epochs of 563 iterations (36,000 training images, batch 64),
# a linear ramp of max_lr / 20,000 per iteration, max_lr / 10 from epoch 25 and max_lr / 100 from
# epoch 32. As fractions of the cycle: the ramp would reach max_lr after 20,000 / 28,150 of it.
SILO_WARMUP_FRACTION = 20_000 / (50 * 563)
SILO_DECAY_BOUNDARIES = (25 / 50, 32 / 50)


def silo(
  original: optax.Schedule,
  original_steps: int,
  retrain_steps: int | Sequence[int],
  *,
  prune_fraction: float,
  beta: float = 5.0,
  alpha: float = 0.04,
  offset: float = 0.03,
  delay: int = 1,
  warmup_fraction: float = SILO_WARMUP_FRACTION,
  decay_boundaries: Sequence[float] = SILO_DECAY_BOUNDARIES,
  decay_factor: float = 0.1,
  warmup_steps: int = 0,
) -> optax.Schedule:
  """SILO: the peak rate of each cycle rises in an S-shape with the fraction pruned so far.

  In retraining cycle ``c`` (counting from 0; it follows prune ``c + 1``) the peak is
  ``max_lr(c) = alpha / (1 + (x / (1 - x)) ** -beta) + offset`` with
  ``x = 1 - (1 - prune_fraction) ** max(c + 1 - delay, 0)``: with the authors' ``delay = 1`` the
  fraction pruned *before* the cycle's own prune, so the first retraining cycle peaks at ``offset``
  (``x = 0``). Inside a cycle of ``R`` steps, at step ``j``: a linear ramp
  ``max_lr * min((j + 1) / (warmup_fraction * R), 1)``, then ``max_lr * decay_factor ** k`` from
  the ``k``-th of ``decay_boundaries`` (fractions of ``R``) on. The defaults are the authors' code
  for ResNet-20 on CIFAR-10: ``alpha = 0.04``, ``beta = 5``, ``offset = 0.03`` (peaks from 0.03 to
  0.07), a ramp of ``max_lr / 20,000`` per iteration in cycles of 50 epochs of 563 iterations
  (``warmup_fraction = 20,000 / 28,150``), ``max_lr / 10`` from epoch 25 and ``max_lr / 100`` from
  epoch 32 (``decay_boundaries = (0.5, 0.64)``). The ramp is cut by the first decay before it ends:
  the highest rate reached is ``0.5 / 0.71 = 0.70`` of ``max_lr``, as in their runs.

  Args:
    original: the original run's learning-rate schedule ``lr0`` (an optax schedule).
    original_steps: ``T``, the length of the original training phase.
    retrain_steps: ``R``, the length of every retraining cycle, or a sequence of cycle lengths.
    prune_fraction: the fraction of the kept weights each prune removes, in ``(0, 1)``.
    beta, alpha, offset: the S-curve's steepness, height and floor.
    delay: how many prunes the fraction ``x`` lags behind (``1`` in the authors' code).
    warmup_fraction: the ramp's length as a fraction of ``R`` (``> 0``).
    decay_boundaries: increasing fractions of ``R`` in ``(0, 1]`` where the rate is multiplied by
      ``decay_factor`` once more.
    decay_factor: the step decay, in ``(0, 1]``.
    warmup_steps: ``Tw``, the original schedule's warm-up length.

  Returns:
    An optax schedule ``step -> learning rate``.

  Raises:
    ValueError, TypeError: for lengths below 1, a warm-up not shorter than ``T``, a non-finite
      original schedule, or a SILO hyperparameter out of range (naming it and its value).

  Example:
    >>> import optax, jaxprune
    >>> lr = jaxprune.retraining.silo(optax.constant_schedule(0.05), 1000, 500, prune_fraction=0.2)
    >>> [round(float(lr(1000 + 500 * c + 249)), 4) for c in range(4)]  # before each cycle's decay
    [0.0211, 0.0211, 0.0226, 0.0335]

  References:
    Liu, Ghosh, Tan & Motani, `Optimizing learning rate schedules for iterative pruning of deep
    neural networks <https://arxiv.org/abs/2212.06144>`_, TMLR 2023; code
    `Martin1937/SILO <https://github.com/Martin1937/SILO>`_ (``resnet_20_cifar_10.py``: ``cal``,
    ``delay = 1``, ``stepsize = 20000``, the decays in ``train``).
  """
  if not (isinstance(prune_fraction, (int, float)) and 0 < prune_fraction < 1):
    raise ValueError(f"silo: prune_fraction must be in (0, 1), got {prune_fraction!r}.")
  for name, v in (
    ("beta", beta),
    ("alpha", alpha),
    ("decay_factor", decay_factor),
    ("warmup_fraction", warmup_fraction),
  ):
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
      raise ValueError(f"silo: {name} must be a positive number, got {v!r}.")
  if decay_factor > 1:
    raise ValueError(f"silo: decay_factor must be in (0, 1], got {decay_factor!r}.")
  if not (isinstance(offset, (int, float)) and math.isfinite(offset) and offset >= 0):
    raise ValueError(f"silo: offset must be a number >= 0, got {offset!r}.")
  delay = check_int("delay", delay, 0, "silo")
  bounds = [float(b) for b in decay_boundaries]
  if any(not 0 < b <= 1 for b in bounds) or bounds != sorted(bounds):
    raise ValueError(
      f"silo: decay_boundaries must be increasing fractions in (0, 1], got {decay_boundaries!r}."
    )

  def build(c):
    def retrain(cycle, j, length):
      done = jnp.maximum(cycle.astype(jnp.float32) + 1 - delay, 0.0)
      pruned = 1 - (1 - prune_fraction) ** done
      odds = pruned / (1 - pruned)
      s_curve = jnp.where(odds > 0, 1 / (1 + odds ** (-beta)), 0.0)
      peak = alpha * s_curve + offset
      ramp = peak * jnp.minimum((j + 1) / (warmup_fraction * length), 1.0)
      decays = sum((j >= jnp.floor(b * length)).astype(jnp.float32) for b in bounds)
      return jnp.where(decays > 0, peak * decay_factor**decays, ramp)

    return retrain

  return _make("silo", original, original_steps, retrain_steps, warmup_steps, build)


class AdaptiveLinear:
  """ALLR as an optax stateful schedule; build it with `allr`.

  Its value depends on the latest prune, which `jaxprune.imp` passes to the optimizer it wraps as the
  extra arguments ``imp_count``, ``imp_norm_drop`` and ``imp_pruned_fraction``. Inside
  ``optax.inject_hyperparams`` (which forwards extra arguments to stateful schedules) it therefore
  follows the run on its own; `value` computes it directly.
  """

  def __init__(self, cycles: _Cycles, retrain: Callable[..., jax.Array], repeat: bool):
    self._schedule = _schedule(cycles, retrain, repeat_last=repeat)

  def value(self, step: ArrayLike, norm_drop: ArrayLike, pruned_fraction: ArrayLike) -> jax.Array:
    """The learning rate at ``step`` when the latest prune removed ``pruned_fraction`` of the kept
    weights and dropped their norm by ``norm_drop`` (relative)."""
    return self._schedule(
      step, jnp.asarray(norm_drop, jnp.float32), jnp.asarray(pruned_fraction, jnp.float32)
    )

  def init(self) -> jax.Array:
    return jnp.zeros([], jnp.int32)

  def update(self, state: jax.Array, **extra_args: Any) -> jax.Array:
    del extra_args
    return optax.safe_increment(state)

  def __call__(
    self,
    state: jax.Array,
    *,
    imp_count: jax.Array | None = None,
    imp_norm_drop: jax.Array | None = None,
    imp_pruned_fraction: jax.Array | None = None,
    **extra_args: Any,
  ) -> jax.Array:
    del extra_args
    step = state if imp_count is None else imp_count  # imp's count survives optimizer resets
    return self.value(
      step,
      0.0 if imp_norm_drop is None else imp_norm_drop,
      1.0 if imp_pruned_fraction is None else imp_pruned_fraction,
    )


def allr(
  original: optax.Schedule,
  original_steps: int,
  retrain_steps: int | Sequence[int],
  *,
  warmup_steps: int = 0,
) -> AdaptiveLinear:
  """Adaptive linear learning-rate restarting: LLR whose peak adapts to how much the prune hurt.

  In each retraining cycle the rate warms up linearly over ``W`` steps to
  ``start = clip(lr_max * d / sqrt(p), min(R / T, 1) * lr_max, lr_max)``, then falls linearly to 0,
  where ``d`` is the relative norm drop of the prune that opened the cycle and ``p`` the fraction of
  weights it removed (both kept in `jaxprune.IMPState`).

  Use it as the learning rate of the optimizer that `jaxprune.imp` wraps:

  >>> import optax, jaxprune
  >>> lr = jaxprune.retraining.allr(optax.constant_schedule(0.1), 1000, 500)
  >>> tx = jaxprune.imp(rate=0.5, cycles=3, cycle_steps=[1000, 500, 500, 500],
  ...                   inner=optax.inject_hyperparams(optax.sgd)(learning_rate=lr))
  >>> round(float(lr.value(1000 + 50, norm_drop=0.3, pruned_fraction=0.5)), 6)  # peak after warm-up
  0.05

  (``0.1 * 0.3 / sqrt(0.5) = 0.042`` is below the floor ``min(500 / 1000, 1) * 0.1 = 0.05``.)

  Args:
    original: the original run's learning-rate schedule ``lr0`` (an optax schedule).
    original_steps: ``T``, the length of the original training phase.
    retrain_steps: ``R``, the length of every retraining cycle, or a sequence of cycle lengths.
    warmup_steps: ``Tw``, the original schedule's warm-up length.

  Returns:
    An `AdaptiveLinear`: an optax stateful schedule, with a ``value(step, norm_drop,
    pruned_fraction)`` method for direct use.

  Raises:
    ValueError, TypeError: as the other schedules of this module.
  """
  cycles = _cycles("allr", original, original_steps, retrain_steps, warmup_steps)

  def retrain(cycle, j, length, norm_drop, pruned_fraction):
    del cycle
    floor = jnp.minimum(length / cycles.original_steps, 1.0) * cycles.lr_max
    raw = cycles.lr_max * norm_drop / jnp.sqrt(jnp.maximum(pruned_fraction, 1e-12))
    start = jnp.clip(raw, floor, cycles.lr_max)
    warmup = length // 10
    main = length - warmup
    ramp = start * j / jnp.maximum(warmup, 1)
    return jnp.where(j < warmup, ramp, start * (1 - (j - warmup) / main))

  return AdaptiveLinear(cycles, retrain, repeat=not isinstance(retrain_steps, Sequence))


for _f in (ft, lrw, slr, clr, llr):
  _f.__doc__ = (_f.__doc__ or "") + _ARGS_DOC
del _f
