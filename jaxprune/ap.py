"""Activate-while-Pruning (AP): part of each prune taken among the negative weights that moved least.

Liu, Ghosh, Tan & Motani observe that pruning raises the *dynamic dead neuron rate* (ReLU units
whose output is zero; `jaxprune.analysis.dead_neuron_rate`) and remove, at each prune, a small
share ``p_ap`` of the weights among the kept *negative* weights whose movement ``|w - w_start|``
since the last prune is smallest, the rest of the prune by magnitude as usual. The count of every
prune is unchanged, so a run reaches exactly the sparsity it reaches without AP.

Two pieces, for any magnitude pruner on the engine: `rule` (the prune) and `movement` (its score,
``|w - w_start|``, with ``w_start`` kept in the score's state). `jaxprune.imp` takes them with
``activate_while_pruning=p_ap`` (the authors' setting: IMP), `jaxprune.magnitude_pruning` with
the same argument (gradual pruning: each mask update of the schedule is a prune).

References:
  Liu, Ghosh, Tan & Motani, `AP: selective activation for de-sparsifying pruned neural networks
  <https://arxiv.org/abs/2212.06145>`_, TMLR 2023 (code ``Martin1937/AP-Activate-While-Pruning-``,
  ``resnet_20.py``: ``prune_by_percentile_lt`` then ``prune_by_percentile_ap``)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune import leaves as leaves_lib
from jaxprune import rules, selection
from jaxprune import scores as scores_lib

__all__ = ["movement", "rule"]


def rule(fraction: Any) -> rules.Rule:
  """AP's prune: the magnitude prune, with ``fraction`` of the kept weights taken among the kept
  negative weights of smallest movement.

  In each segment (all units under one global threshold, or each unit with a target of its own;
  `jaxprune.rules.segments`), of the ``d`` weights kept before the prune, the magnitude prune keeps
  ``K + n`` (``K``: what the plain prune keeps; ``n = floor(fraction * d)``, at most ``d - K``),
  then the ``n`` kept negative weights of smallest score (the movement, `movement`) are pruned.
  Should fewer than ``n`` negative weights be left, the rest is pruned by magnitude, so every
  segment keeps exactly ``K``: the sparsity is the same with and without AP. The rule reads the
  magnitudes from the params and the movement from the method's scores.

  Args:
    fraction: ``p_ap``, a fraction of the kept weights in ``[0, 1)`` (a number or a traced scalar,
      e.g. under ``optax.inject_hyperparams``).

  Returns:
    A `jaxprune.rules.Rule`.
  """

  def fn(x: rules.RuleInputs) -> rules.MaskUpdate:
    units = x.plan.units
    segments, keeps = rules.segments(x)
    n_seg = len(keeps)
    old = [u.kept(x.old) for u in units]
    magnitude = [jnp.abs(w) for w in x.params]
    mag = [u.group_scores(magnitude) for u in units]
    kept_before = rules.segment_sums([jnp.sum(m, dtype=jnp.int32) for m in old], segments, n_seg)
    keep = [jnp.asarray(k, jnp.int32) for k in keeps]
    frac = jnp.asarray(fraction, jnp.float32)
    extra = [
      jnp.clip(jnp.floor(frac * d.astype(jnp.float32)).astype(jnp.int32), 0, jnp.maximum(d - k, 0))
      for d, k in zip(kept_before, keep)
    ]
    ranked = lambda kept, score: [jnp.where(m, s, -jnp.inf) for m, s in zip(kept, score)]
    first = selection.top_k_masks(
      ranked(old, mag), [k + e for k, e in zip(keep, extra)], segments=segments
    )
    negative = [u.group_scores(list(x.params)) < 0 for u in units]
    candidates = [a & n for a, n in zip(first, negative)]
    available = rules.segment_sums(
      [jnp.sum(c, dtype=jnp.int32) for c in candidates], segments, n_seg
    )
    moved = [-x.plan.units[j].group_scores(x.scores) for j in range(len(units))]
    removed = selection.top_k_masks(
      ranked(candidates, moved),
      [jnp.minimum(e, a) for e, a in zip(extra, available)],
      segments=segments,
    )
    second = [a & ~r for a, r in zip(first, removed)]
    final = selection.top_k_masks(ranked(second, mag), keep, segments=segments)
    return rules.MaskUpdate(x.plan.combine(final))

  return rules.Rule("activate_while_pruning", fn)


def movement(is_update_step: Callable[[jax.Array], jax.Array]) -> scores_lib.Score:
  """AP's score: ``|w - w_start|``, the movement since the last prune.

  ``w_start`` (in the score's state, one copy of the params) is captured at update 0 and at the
  update after each mask update, that is from the weights the prune left (after rewinding, for
  IMP with rewinding).

  Args:
    is_update_step: the pruner's schedule's ``is_update_step`` (``count -> bool``).

  Returns:
    A `jaxprune.scores.Score` with state.
  """

  def init(params):
    return jax.tree.map(jnp.copy, params)

  def update(state, x):
    # A branch, not a select: the steps between prunes leave the copy untouched instead of
    # rewriting it from itself.
    capture = (x.count == 0) | is_update_step(x.count - 1)
    return selection.cond(
      capture,
      lambda: jax.tree.map(lambda s, w: w.astype(s.dtype), state, x.params),
      lambda: state,
    )

  def fn(x):
    flat, treedef = jax.tree.flatten(x.params)
    start = leaves_lib.flatten_up_to(treedef, x.state)
    pruned = set(range(len(flat)) if x.pruned is None else x.pruned)
    return jax.tree.unflatten(
      treedef,
      [
        jnp.abs(w.astype(jnp.float32) - s.astype(jnp.float32)) if i in pruned else None
        for i, (w, s) in enumerate(zip(flat, start))
      ],
    )

  return scores_lib.Score("cycle_movement", fn, init=init, update=update)
