"""When masks are recomputed, and to which sparsity.

A schedule is a pair of functions of the pruner's update count (0 at the first update): whether this
update recomputes the masks, and the sparsity a leaf whose final target is ``target`` has then.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Schedule", "one_shot", "polynomial"]


class Schedule(NamedTuple):
  """A pruning schedule.

  Attributes:
    is_update_step: ``count -> bool``: whether the update with this count recomputes the masks.
    sparsity: ``(count, target) -> sparsity``: the sparsity that a leaf with final sparsity ``target``
      is pruned to at an update step.
  """

  is_update_step: Callable[[jax.Array], jax.Array]
  sparsity: Callable[[jax.Array, Any], Any]


def _check_int(name: str, value: Any, minimum: int, owner: str) -> int:
  """``value`` as an int, or a ``TypeError``/``ValueError`` naming ``owner`` and ``name``."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{owner}: {name} must be an int, got {value!r}.")
  if value < minimum:
    raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}.")
  return int(value)


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
  step = _check_int("step", step, 0, "one_shot")
  return Schedule(
      is_update_step=lambda count: count == step,
      sparsity=lambda count, target: target,
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
    initial_sparsity: sparsity at ``begin_step``.

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
  begin_step = _check_int("begin_step", begin_step, 0, owner)
  end_step = _check_int("end_step", end_step, 0, owner)
  frequency = _check_int("frequency", frequency, 1, owner)
  if begin_step > end_step:
    raise ValueError(f"{owner}: begin_step ({begin_step}) is after end_step ({end_step}).")
  if not isinstance(power, (int, float)) or not math.isfinite(power) or power <= 0:
    raise ValueError(f"{owner}: power must be a positive number, got {power!r}.")
  if not isinstance(initial_sparsity, (int, float)) or not 0 <= initial_sparsity < 1:
    raise ValueError(f"{owner}: initial_sparsity must be in [0, 1), got {initial_sparsity!r}.")
  span = end_step - begin_step

  def is_update_step(count):
    in_range = (count >= begin_step) & (count <= end_step)
    return in_range & (((count - begin_step) % frequency == 0) | (count == end_step))

  def sparsity(count, target):
    if span == 0:
      return target
    progress = jnp.clip((count - begin_step) / span, 0.0, 1.0).astype(jnp.float32)
    remaining = (1.0 - progress) ** power
    return target + (initial_sparsity - target) * remaining

  return Schedule(is_update_step=is_update_step, sparsity=sparsity)
