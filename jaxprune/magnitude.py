"""Magnitude pruning: remove the weights of smallest absolute value."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import optax

from jaxprune import ap, scores
from jaxprune import patterns as patterns_lib
from jaxprune import schedules as schedules_lib
from jaxprune.checks import check_sparsity
from jaxprune.groups import Group
from jaxprune.pruning import pruning
from jaxprune.typing import Distribution, PathSelector, Sparsity

__all__ = ["magnitude_pruning"]


def magnitude_pruning(
  sparsity: Sparsity | None = None,
  *,
  distribution: Distribution = "uniform",
  pattern: patterns_lib.Pattern | None = None,
  schedule: schedules_lib.Schedule | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, float] | None = None,
  groups: Sequence[Group] = (),
  packed_masks: bool = False,
  application: str = "persistent",
  activate_while_pruning: Sparsity | None = None,
  inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Prunes the weights of smallest magnitude ``|w|``, one-shot or gradually.

  Layer-wise by default (each pruned leaf loses exactly ``round(sparsity * size)`` weights);
  ``distribution="global"`` uses one threshold over all pruned leaves. With
  ``schedule=jaxprune.schedules.polynomial(...)`` this is Zhu & Gupta's gradual magnitude pruning.

  Args:
    sparsity: target fraction of pruned weights, in ``[0, 1)`` (``None`` with an N:M pattern).
    distribution: ``"uniform"``, ``"erk"``, ``"er"``, ``"global"`` or an allocation function.
    pattern: a `jaxprune.patterns` pattern; unstructured by default.
    schedule: a `jaxprune.schedules` schedule; by default the masks are computed at the first update
      and then stay fixed.
    prune: which leaves to prune (default: the kernels, see `jaxprune.leaves.default_prunable`).
    overrides: ``{path regex: sparsity}`` per-leaf (or per-group) targets.
    groups: `jaxprune.groups.Group` units spanning several leaves, pruned whole.
    packed_masks: keep masks as bits in the state.
    application: ``"persistent"`` (pruned weights exactly zero) or ``"ephemeral"`` (see
      `jaxprune.pruning`).
    activate_while_pruning: ``p_ap`` in ``[0, 1)``, Activate-while-Pruning (Liu et al. 2023,
      `jaxprune.ap`): at each mask update, ``floor(p_ap * d)`` of the prune (``d``: the weights
      kept before it; at most the whole prune) is taken among the kept negative weights whose
      movement since the previous mask update is smallest, the rest by magnitude; the sparsity is
      exactly the one without AP. Unstructured, persistent masks, no ``groups``; the weights at the
      last mask update live in the state (one copy of the params). ``None`` (default): no AP.
    inner: an optimizer to wrap instead of chaining.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a `jaxprune.PruningState`.

  Raises:
    ValueError, TypeError: for bad arguments (see `jaxprune.pruning`), and for
      ``activate_while_pruning`` outside ``[0, 1)`` or with a structured pattern, groups or
      ephemeral masks.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxprune
    >>> params = {'w': jax.random.normal(jax.random.key(0), (8, 8)), 'b': jnp.zeros(8)}
    >>> tx = optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning(0.75))
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> int((params['w'] == 0).sum())
    48

  References:
    Han et al., `Learning both weights and connections for efficient neural networks
    <https://arxiv.org/abs/1506.02626>`_, 2015; Zhu & Gupta, `To prune, or not to prune
    <https://arxiv.org/abs/1710.01878>`_, 2017
  """
  name = "magnitude_pruning"
  score: scores.Score = scores.magnitude
  rule = None
  if activate_while_pruning is not None:
    check_sparsity(activate_while_pruning, f"{name}: activate_while_pruning")
    if (
      groups
      or application != "persistent"
      or not isinstance(pattern, (type(None), patterns_lib.Unstructured))
    ):
      raise ValueError(
        f"{name}: activate_while_pruning prunes single (negative) weights of persistent masks; "
        f"got pattern={pattern!r}, groups={groups!r}, application={application!r}."
      )
    if schedule is not None and not isinstance(schedule, schedules_lib.Schedule):
      raise TypeError(f"{name}: schedule must be a jaxprune.schedules.Schedule, got {schedule!r}.")
    steps = schedules_lib.one_shot(0) if schedule is None else schedule
    score, rule = ap.movement(steps.is_update_step), ap.rule(activate_while_pruning)
  return pruning(
    score,
    sparsity,
    distribution=distribution,
    pattern=pattern,
    schedule=schedule,
    prune=prune,
    overrides=overrides,
    groups=groups,
    packed_masks=packed_masks,
    application=application,
    inner=inner,
    rule=rule,
    name=name,
  )
