"""When masks are recomputed, and to which sparsity.

A schedule is a pair of functions of the pruner's update count (0 at the first update): whether this
update recomputes the masks, and the sparsity a leaf whose final target is ``target`` has then. A
schedule that ramps from an initial sparsity declares it (``initial_sparsity``): the pruner shares it
among the leaves with the same distribution as the target, and refuses a leaf whose share of the
initial sparsity is above its target (the ramp would prune weights and then revive them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxprune.checks import check_int, check_sparsity, is_traced, number

__all__ = ["Schedule", "one_shot", "periodic", "polynomial"]


class Schedule(NamedTuple):
  """A pruning schedule.

  Attributes:
    is_update_step: ``count -> bool``: whether the update with this count recomputes the masks.
    sparsity: ``(count, target, initial) -> sparsity``: the sparsity that a leaf with final sparsity
      ``target`` and initial sparsity ``initial`` (its share of ``initial_sparsity``) is pruned to at
      an update step. Schedules without a ramp ignore ``initial``.
    initial_sparsity: the model-wide sparsity the schedule starts from, or ``None`` (no ramp).
  """

  is_update_step: Callable[[jax.Array], jax.Array]
  sparsity: Callable[..., Any]
  initial_sparsity: float | None = None


def one_shot(step: int = 0) -> Schedule:
  """Prunes once, at update number ``step``, to the full target; the masks stay fixed afterwards.

  Args:
    step: the update count (0 for the first update) at which the masks are computed.

  Returns:
    A `Schedule`.

  Raises:
    ValueError: if ``step < 0``.

  Example:
    >>> import jaxprune
    >>> tx = jaxprune.magnitude_pruning(0.9, schedule=jaxprune.schedules.one_shot(1000))
  """
  step = check_int("step", step, 0, "one_shot")
  return Schedule(
    is_update_step=lambda count: count == step, sparsity=lambda count, target, initial=None: target
  )


def _every(
  begin_step: int, end_step: int | None, frequency: int
) -> Callable[[jax.Array], jax.Array]:
  """Update steps at ``begin_step``, every ``frequency`` updates after it, and at ``end_step``
  (``None``: no end)."""

  def is_update_step(count):
    if end_step is None:
      return (count >= begin_step) & ((count - begin_step) % frequency == 0)
    in_range = (count >= begin_step) & (count <= end_step)
    return in_range & (((count - begin_step) % frequency == 0) | (count == end_step))

  return is_update_step


def periodic(begin_step: int, end_step: int | None, frequency: int) -> Schedule:
  """Mask updates every ``frequency`` updates from ``begin_step`` to ``end_step``, at the full target.

  The schedule of dynamic sparse training with a constant sparsity (SET, RigL): each update drops
  and regrows weights, the sparsity never changes. With ``end_step=None`` and ``frequency=1``, the
  masks follow the weights at every update (straight-through training, `jaxprune.ste_pruning`).

  Args:
    begin_step: first update count that updates the masks.
    end_step: last update count that updates the masks (also an update step), or ``None`` for
      updates without end.
    frequency: updates between mask updates, at least 1.

  Returns:
    A `Schedule`.

  Raises:
    ValueError: if ``begin_step >= end_step``, ``begin_step < 0`` or ``frequency < 1``.

  Example:
    >>> import jaxprune
    >>> s = jaxprune.schedules.periodic(begin_step=100, end_step=1000, frequency=100)
  """
  begin_step = check_int("begin_step", begin_step, 0, "periodic")
  if end_step is not None:
    end_step = check_int("end_step", end_step, 1, "periodic")
  frequency = check_int("frequency", frequency, 1, "periodic")
  if end_step is not None and begin_step >= end_step:
    raise ValueError(f"periodic: begin_step ({begin_step}) must be before end_step ({end_step}).")
  return Schedule(
    is_update_step=_every(begin_step, end_step, frequency),
    sparsity=lambda count, target, initial=None: target,
  )


def polynomial(
  begin_step: int,
  end_step: int,
  frequency: int,
  power: float = 3.0,
  *,
  initial_sparsity: float = 0.0,
) -> Schedule:
  """Gradual pruning: sparsity rises polynomially from ``initial_sparsity`` to the target.

  At count ``t`` the sparsity is ``s_f + (s_i - s_f) * (1 - (t - begin) / (end - begin)) ** power``
  (cubic by default). Masks are recomputed at ``begin_step``, every ``frequency`` updates after it, and
  at ``end_step`` (so the target is reached even when ``frequency`` does not divide the span), and
  stay fixed after ``end_step``.

  Args:
    begin_step: first update count that recomputes the masks.
    end_step: last update count that recomputes the masks; the target is reached there.
    frequency: number of updates between mask updates (``dt`` in the paper), at least 1.
    power: exponent of the ramp; 3 is Zhu & Gupta's cubic schedule.
    initial_sparsity: the model-wide sparsity at ``begin_step``; each leaf starts from its share of
      it (the same distribution as the target; for ``"uniform"`` the number itself), which must not
      be above the leaf's target.

  Returns:
    A `Schedule`.

  Raises:
    ValueError: if ``begin_step > end_step``, ``frequency < 1``, ``begin_step < 0``, ``power`` is not
      positive or ``initial_sparsity`` is outside ``[0, 1)``.

  Example:
    >>> import jaxprune
    >>> schedule = jaxprune.schedules.polynomial(begin_step=1000, end_step=9000, frequency=100)
    >>> tx = jaxprune.magnitude_pruning(0.95, schedule=schedule)

  References:
    Zhu & Gupta, `To prune, or not to prune: exploring the efficacy of pruning for model compression
    <https://arxiv.org/abs/1710.01878>`_, 2017
  """
  owner = "polynomial"
  begin_step = check_int("begin_step", begin_step, 0, owner)
  end_step = check_int("end_step", end_step, 0, owner)
  frequency = check_int("frequency", frequency, 1, owner)
  if begin_step > end_step:
    raise ValueError(f"{owner}: begin_step ({begin_step}) is after end_step ({end_step}).")
  value = number(power, f"{owner}: power")
  if value is not None and not (math.isfinite(value) and value > 0):
    raise ValueError(f"{owner}: power must be a positive number, got {power!r}.")
  check_sparsity(initial_sparsity, f"{owner}: initial_sparsity")
  span = end_step - begin_step

  def sparsity(count, target, initial=initial_sparsity):
    if span == 0:
      return target
    progress = jnp.clip((count - begin_step) / span, 0.0, 1.0).astype(jnp.float32)
    remaining = (1.0 - progress) ** power
    return target + (initial - target) * remaining

  return Schedule(
    is_update_step=_every(begin_step, end_step, frequency),
    sparsity=sparsity,
    initial_sparsity=initial_sparsity if is_traced(initial_sparsity) else float(initial_sparsity),
  )
