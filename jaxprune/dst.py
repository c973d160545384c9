"""Dynamic sparse training: masks that drop and regrow weights during training.

The declaration shared by `jaxprune.set_sparse`, `jaxprune.rigl` and `jaxprune.granet` on the engine
(`jaxprune.engine`) with the `jaxprune.rules.drop_and_grow` rule. Every ``frequency`` updates
between ``begin_step`` and ``end_step`` each pruned leaf (or group, or block of a block pattern)

1. drops its lowest-magnitude active groups, keeping ``A_t - k`` of them, where ``A_t`` is the
   leaf's active count after the update (constant for SET and RigL, falling with the gradual
   schedule for GraNet) and ``k = round(f(t) * A_t)`` with ``f`` the drop-fraction schedule;
2. grows ``k`` groups among those inactive after the drop: the largest gradient magnitudes (RigL,
   GraNet) or uniformly at random (SET). ``k`` is capped at ``N - A_t``, the leaf's inactive count
   after the update, so a dense or nearly dense leaf (GraNet's start) is not partly reset.

The initial masks (random with the starting sparsity of each leaf, or dense) are installed at the
first update. A grown weight is exactly zero and so are its statistics in the wrapped optimizer (for
any optax optimizer: the parts of its state shaped like the params are found with
``optax.tree_utils.tree_map_params``), and on the update step itself it receives no update; it
trains from the next step on. Dropped weights become exactly zero and their statistics are zeroed
too. Steps between updates only mask the gradients and project the updates, like every pruner.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxprune import engine, rules
from jaxprune import patterns as patterns_lib
from jaxprune import plan as plan_lib
from jaxprune import schedules as schedules_lib
from jaxprune import scores as scores_lib
from jaxprune.checks import check_bool, check_int, check_sparsity, is_traced
from jaxprune.groups import Group
from jaxprune.typing import Distribution, PathSelector, Sparsity

__all__ = [
  "constant_drop_fraction",
  "cosine_drop_fraction",
  "drop_fraction_schedule",
  "dynamic_sparse",
]

DropFraction = Callable[[jax.Array], jax.Array]


def cosine_drop_fraction(alpha: float, end_step: int) -> DropFraction:
  """RigL's annealing: ``f(t) = alpha / 2 * (1 + cos(pi * t / end_step))``, 0 from ``end_step`` on."""

  def f(count):
    t = jnp.minimum(jnp.asarray(count, jnp.float32), end_step)
    return alpha / 2 * (1 + jnp.cos(jnp.pi * t / end_step))

  return f


def constant_drop_fraction(alpha: float) -> DropFraction:
  """``f(t) = alpha`` (SET's ``zeta``)."""
  return lambda count: jnp.full((), alpha, jnp.float32)


def drop_fraction_schedule(
  kind: str, alpha: float, end_step: int | None, *, name: str
) -> DropFraction:
  """The drop fraction of schedule ``kind``: ``"cosine"`` (RigL's) or ``"constant"`` (SET's).

  Args:
    kind: ``"cosine"`` or ``"constant"``.
    alpha: the drop fraction at the first update.
    end_step: where the cosine reaches 0 (required for ``"cosine"``).
    name: the caller, for the error messages.

  Returns:
    ``count -> drop fraction``.

  Raises:
    ValueError: for another ``kind``, or ``"cosine"`` without a positive ``end_step``.
  """
  if kind == "constant":
    return constant_drop_fraction(alpha)
  if kind != "cosine":
    raise ValueError(f"{name}: drop_schedule must be 'cosine' or 'constant', got {kind!r}.")
  if end_step is None or int(end_step) < 1:
    raise ValueError(
      f"{name}: drop_schedule='cosine' anneals to 0 at end_step, which must be a positive "
      f"step; got end_step={end_step!r}."
    )
  return cosine_drop_fraction(alpha, int(end_step))


def dynamic_sparse(
  sparsity: Sparsity,
  *,
  grow: str,
  drop_fraction: DropFraction,
  frequency: int,
  begin_step: int,
  end_step: int,
  initial_sparsity: float | None = None,
  sparsity_power: float = 3.0,
  distribution: Distribution = "erk",
  seed: int = 0,
  pattern: patterns_lib.Pattern | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, float] | None = None,
  groups: Sequence[Group] = (),
  packed_masks: bool = False,
  inner: optax.GradientTransformation | None = None,
  name: str = "dynamic_sparse",
) -> optax.GradientTransformationExtraArgs:
  """A drop-and-grow transformation (see the module docstring); the methods configure it.

  Args:
    sparsity: each leaf's final sparsity is ``distribution``'s share of it.
    grow: ``"gradient"`` (largest ``|g|``) or ``"random"``.
    drop_fraction: ``count -> f``, the fraction of the active weights dropped and regrown.
    frequency: updates between mask updates (``dT``).
    begin_step: first update count that changes the masks.
    end_step: last update count that changes the masks (masks change at ``begin_step``, every
      ``frequency`` updates after it, and at ``end_step``; never after).
    initial_sparsity: ``None``: the sparsity is constant (``sparsity`` from the start: SET, RigL);
      otherwise the overall sparsity at the start, rising with the cubic schedule of Zhu & Gupta to
      ``sparsity`` at ``end_step`` (GraNet; 0 starts dense).
    sparsity_power: exponent of that schedule.
    distribution: ``"erk"``, ``"er"``, ``"uniform"`` or a function ``(sparsity, shapes) -> list``.
    seed: seed of the initial random mask and of random growth.
    pattern: what is dropped and grown together: unstructured, block or channel.
    prune: which leaves are sparse, as in `jaxprune.pruning`.
    overrides: ``{path regex: sparsity}`` for leaves kept at their own sparsity.
    groups: `jaxprune.groups.Group` units spanning several leaves.
    packed_masks: store masks as bits.
    inner: the optimizer to wrap (required: its statistics of grown weights are reset).
    name: the name used in error messages.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a `jaxprune.PruningState`.

  Raises:
    ValueError: for bad sparsities, steps, ``distribution="global"``, an N:M pattern, or no ``inner``.
  """
  needs_inner = (
    "growth reads raw gradients and resets the optimizer's statistics of grown "
    "weights, which a chained pruner cannot reach."
  )
  if inner is None:
    raise ValueError(f"{name}: needs the inner= form (inner=optimizer): {needs_inner}")
  check_sparsity(sparsity, f"{name}: sparsity")
  frequency = check_int("frequency", frequency, 1, name)
  begin_step = check_int("begin_step", begin_step, 0, name)
  end_step = check_int("end_step", end_step, 1, name)
  if begin_step >= end_step:
    raise ValueError(f"{name}: begin_step ({begin_step}) must be before end_step ({end_step}).")
  if initial_sparsity is not None:
    check_sparsity(initial_sparsity, f"{name}: initial_sparsity")
    if not is_traced(initial_sparsity) and not is_traced(sparsity) and initial_sparsity > sparsity:
      raise ValueError(
        f"{name}: initial_sparsity ({initial_sparsity}) is above sparsity ({sparsity})."
      )
  if distribution == "global":
    raise ValueError(
      f"{name}: drop and growth counts are per leaf; distribution must allocate a "
      f"sparsity to each leaf ('erk', 'er', 'uniform' or a function), got 'global'."
    )
  if isinstance(pattern, patterns_lib.NM):
    raise ValueError(
      f"{name}: an N:M pattern fixes which weights are kept in every group of m; "
      f"drop and grow needs an unstructured, block or channel pattern."
    )
  check_bool("packed_masks", packed_masks, name)
  selection = plan_lib.make_selection(
    name,
    sparsity=sparsity,
    prune=prune,
    pattern=pattern,
    distribution=distribution,
    overrides=overrides,
    groups=groups,
  )
  if initial_sparsity is None:
    schedule = schedules_lib.periodic(begin_step, end_step, frequency)
  else:
    schedule = schedules_lib.polynomial(
      begin_step, end_step, frequency, sparsity_power, initial_sparsity=initial_sparsity
    )

  def initial_masks(plan, final, initial):
    """Random with the starting sparsities, or all kept (a dense start)."""
    start = final if initial_sparsity is None else initial
    if all(isinstance(s, (int, float)) and s == 0 for s in start):
      return {i: jnp.ones(plan.shapes[i], bool) for i in plan.masked}
    return rules.random_masks(plan, start, jax.random.key(seed))  # made in the step

  method = engine.Method(
    name,
    scores_lib.magnitude,
    sparsity,
    selection,
    schedule,
    rule=rules.drop_and_grow(grow=grow, drop_fraction=drop_fraction, seed=seed),
    initial_masks=initial_masks,
    statistics="zero_inactive",
    needs_inner=needs_inner,
    packed_masks=packed_masks,
  )
  return engine.transformation(method, inner)
