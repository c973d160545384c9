"""`prune`: masks from scores in one call, through the same selection as every pruner."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jaxprune import leaves as leaves_lib
from jaxprune import masks as masks_lib
from jaxprune import patterns as patterns_lib
from jaxprune import plan as plan_lib
from jaxprune import rules
from jaxprune import schedules as schedules_lib
from jaxprune import scores as scores_lib
from jaxprune.groups import Group
from jaxprune.typing import Distribution, Masks, Params, PathSelector, Scores, Sparsity, Updates

if TYPE_CHECKING:
  from jaxprune.structured.channel_group import ChannelGroup

__all__ = ["prune"]


def prune(
  params: Params,
  sparsity: Sparsity | None = None,
  *,
  score: scores_lib.Score | scores_lib.ScoreFn = scores_lib.magnitude,
  scores: Scores | None = None,
  grads: Updates | None = None,
  distribution: Distribution = "uniform",
  pattern: patterns_lib.Pattern | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, float] | None = None,
  groups: Sequence[Group | ChannelGroup] = (),
  keep: Masks | None = None,
  name: str = "prune",
  **extra_args: Any,
) -> Masks:
  """Masks keeping the highest scores of ``params``, with exactly the requested sparsity.

  The functional, one-shot form of the selection that every jaxprune transformation runs: the same
  leaves, patterns, groups, distributions (layer-wise, global, ER, ERK), overrides and exact counts.

  Args:
    params: the params.
    sparsity: the model-wide target in ``[0, 1)`` (``None`` for N:M patterns).
    score: a `jaxprune.scores.Score` (or ``(params, grads, count) -> scores``); magnitude by default.
    scores: precomputed scores, a tree shaped like the params, instead of ``score``.
    grads: the gradients, for scores that read them.
    distribution, pattern, prune, overrides, groups: as in `jaxprune.pruning`.
    keep: current masks (a tree shaped like the params); weights they prune stay pruned.
    name: the name used in error messages.
    **extra_args: the extra arguments the score declares (`jaxprune.scores.Score.extra_args`).

  Returns:
    A tree shaped like the params: a boolean mask (``True`` = kept) for each pruned leaf, ``None``
    for the others.

  Raises:
    ValueError: as `jaxprune.pruning`, and for a score that reads gradients without ``grads``, or
      both ``score`` and ``scores``.

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> params = {'w': jnp.array([[1.0, -4.0], [3.0, 2.0]]), 'b': jnp.ones(2)}
    >>> masks = jaxprune.prune(params, 0.5)
    >>> masks['w'], masks['b']
    (Array([[False,  True],
           [ True, False]], dtype=bool), None)
  """
  sel = plan_lib.make_selection(
    name,
    sparsity=sparsity,
    prune=prune,
    pattern=pattern,
    distribution=distribution,
    overrides=overrides,
    groups=groups,
  )
  plan = plan_lib.make_plan(params, sel, name)
  final, initial = plan_lib.targets(plan, sel, sparsity)
  leaves, treedef = jax.tree.flatten(leaves_lib.unwrap_variables(params))
  grad_leaves = [None] * len(leaves) if grads is None else leaves_lib.flatten_up_to(treedef, grads)
  unit_scores: tuple = ()
  given_scores = scores is not None
  if scores is None:
    score = scores_lib.as_score(score, name)
    if score.reads_grads and grads is None:
      raise ValueError(f"{name}: the score {score.name!r} reads gradients; pass grads=.")
    missing = [a for a in score.extra_args if a not in extra_args]
    if missing:
      raise ValueError(
        f"{name}: the score {score.name!r} reads the arguments {missing}; pass "
        f"{missing[0]}=... to prune."
      )
    tree = jax.tree.unflatten(treedef, leaves)
    scores = score(tree, grads, 0, **extra_args)
    if score.channel_fn is not None:  # channel groups scored directly (jaxprune.structured)
      inputs = scores_lib.ScoreInputs(tree, grads, jnp.zeros([], jnp.int32), None, extra_args)
      if score.init is not None:
        inputs = inputs._replace(state=score.init(tree))
      if score.update is not None:
        inputs = inputs._replace(state=score.update(inputs.state, inputs))
      unit_scores = rules.channel_scores(plan, score.channel_fn, inputs)
  elif score is not scores_lib.magnitude:
    raise ValueError(f"{name}: give score or scores, not both.")
  score_leaves = leaves_lib.flatten_up_to(treedef, scores)
  kept = None if keep is None else leaves_lib.flatten_up_to(treedef, keep)
  # Without keep, nothing is pruned yet: the rule then reads no old masks (monotone=False), so
  # streamed scores carry no all-ones operand.
  old = {
    i: jnp.ones(plan.shapes[i], bool)
    if kept is None or kept[i] is None
    else masks_lib.unpack(leaves_lib.unwrap_variable(kept[i]))
    for i in plan.masked
  }
  streamed_score = score if isinstance(score, scores_lib.Score) and not given_scores else None
  result = rules.prune.fn(
    rules.RuleInputs(
      plan,
      sel,
      schedules_lib.one_shot(0),
      sparsity,
      final,
      initial,
      jnp.zeros([], jnp.int32),
      score_leaves,
      leaves,
      grad_leaves,
      old,
      keep is not None,
      unit_scores,
      None if streamed_score is None else streamed_score.entry,
    )
  )
  out: list[jax.Array | None] = [None] * len(leaves)
  for i, m in result.masks.items():
    out[i] = m
  return jax.tree.unflatten(treedef, out)
