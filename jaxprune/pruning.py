"""`pruning`: a pruner from any score, on the engine; the factory under magnitude, random and
saliency pruning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import optax

from jaxprune import engine, rules
from jaxprune import patterns as patterns_lib
from jaxprune import plan as plan_lib
from jaxprune import schedules as schedules_lib
from jaxprune import scores as scores_lib
from jaxprune.checks import check_bool
from jaxprune.engine import PruningState
from jaxprune.groups import Group
from jaxprune.typing import Distribution, PathSelector, Sparsity

__all__ = ["PruningState", "pruning"]


def pruning(
  score_fn: scores_lib.Score | scores_lib.ScoreFn,
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
  inner: optax.GradientTransformation | None = None,
  rule: rules.Rule | None = None,
  name: str = "pruning",
) -> optax.GradientTransformationExtraArgs:
  """A pruning transformation: keeps masks in its state and zeroes the pruned weights at every step.

  At each update the masks are first recomputed if ``schedule`` says so (from the score, keeping
  the highest scores; weights pruned earlier stay pruned), then the updates are projected so that
  ``optax.apply_updates`` leaves every pruned weight exactly ``0``: the update of a pruned weight is
  ``-w``. Used as the last link of ``optax.chain(optimizer, pruner)`` it sees the optimizer's updates;
  with ``inner=optimizer`` it sees raw gradients (scores such as saliency use them), masks them before
  the optimizer, and projects the optimizer's output.

  Args:
    score_fn: a `jaxprune.scores.Score`, or a function ``(params, grads, count) -> scores``.
    sparsity: target fraction of pruned weights, in ``[0, 1)``. Must be ``None`` for N:M patterns,
      which fix it at ``1 - n / m``.
    distribution: ``"uniform"`` (each leaf pruned to ``sparsity``), ``"erk"``, ``"er"``, ``"global"``
      (one threshold over all pruned leaves) or a function ``(sparsity, shapes) -> sparsities``.
    pattern: what is pruned together, see `jaxprune.patterns`; unstructured by default.
    schedule: when masks are recomputed, see `jaxprune.schedules`; by default once, at the first
      update (``one_shot(0)``).
    prune: which leaves are pruned (`jaxprune.leaves.Selector`); by default the kernels of dense,
      convolution and attention layers (see `jaxprune.leaves.default_prunable`).
    overrides: ``{path regex: sparsity}`` for leaves (or groups) pruned to their own sparsity (left
      out of the distribution; they follow the schedule like the others).
    groups: `jaxprune.groups.Group` units of coupled slices of several leaves, pruned whole.
    packed_masks: store masks as bits (8x less memory); `jaxprune.get_masks` still returns booleans.
    application: ``"persistent"`` (pruned weights exactly zero) or ``"ephemeral"`` (weights stay
      dense and trained; masks recomputed from them at every update step and applied in the forward
      pass with `jaxprune.ephemeral.masked_params`).
    inner: an optimizer to wrap. Without it the pruner must be the last link of a chain.
    rule: how a mask update turns the scores into masks, a `jaxprune.rules.Rule`; by default
      `jaxprune.rules.prune` (the highest scores, as many as the schedule keeps).
    name: the name used in error messages.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a `jaxprune.PruningState`.

  Raises:
    ValueError: for a sparsity outside ``[0, 1)`` or NaN, an unknown distribution, an override
      pattern matching no pruned leaf, a pattern that does not fit a leaf (N:M group not dividing the
      axis, block larger than the leaf), or ``params=None`` in update.
    TypeError: for a non-floating-point leaf selected for pruning, or a sparsity that is not a number.

  Example:
    Keep the smallest weights instead (a custom score):

    >>> import jax, jax.numpy as jnp, optax, jaxprune
    >>> score = lambda params, grads, count: jax.tree.map(lambda w: -jnp.abs(w), params)
    >>> tx = jaxprune.pruning(score, 0.5, inner=optax.sgd(0.0))
    >>> params = {'w': jnp.array([[1.0, -2.0], [3.0, -4.0]])}
    >>> _, state = tx.update(params, tx.init(params), params)
    >>> jaxprune.get_masks(state)['w']
    Array([[ True,  True],
           [False, False]], dtype=bool)
  """
  score = scores_lib.as_score(score_fn, name)
  selection = plan_lib.make_selection(
    name,
    sparsity=sparsity,
    prune=prune,
    pattern=pattern,
    distribution=distribution,
    overrides=overrides,
    groups=groups,
  )
  schedule = schedules_lib.one_shot(0) if schedule is None else schedule
  if not isinstance(schedule, schedules_lib.Schedule):
    raise TypeError(f"{name}: schedule must be a jaxprune.schedules.Schedule, got {schedule!r}.")
  check_bool("packed_masks", packed_masks, name)
  if rule is not None and not isinstance(rule, rules.Rule):
    raise TypeError(f"{name}: rule must be a jaxprune.rules.Rule, got {rule!r}.")
  method = engine.Method(
    name,
    score,
    sparsity,
    selection,
    schedule,
    rule=rules.prune if rule is None else rule,
    application=application,
    packed_masks=packed_masks,
  )
  return engine.transformation(method, inner)
