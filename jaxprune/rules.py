"""Selection rules: how a mask update turns scores into new masks.

A rule runs on mask-update steps only. It receives a `RuleInputs` (the plan, the scores, the current
masks, the per-unit targets) and returns a `MaskUpdate`: the new masks and, when they differ, the
masks of the weights that train at this step. Two rules cover the methods of jaxprune:

- `prune`: keep the highest-scoring groups of each unit, as many as the schedule's sparsity leaves
  (layer-wise, by the distribution's shares, or with one global threshold). With ``monotone`` (the
  default for persistent masks) weights pruned earlier stay pruned.
- `drop_and_grow`: dynamic sparse training. Each unit drops its lowest-scoring active groups down
  to ``A_t - k`` and grows ``k`` inactive groups, by gradient magnitude or at random; ``A_t`` is the
  active count the schedule gives, ``k = min(round(f(t) A_t), G - A_t)``. Grown weights train from
  the next step on: on the update step only the survivors do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxprune import patterns as patterns_lib
from jaxprune import schedules as schedules_lib
from jaxprune import selection
from jaxprune.plan import Plan, Selection, Unit, num_pruned

__all__ = [
  "MaskUpdate",
  "Rule",
  "RuleInputs",
  "channel_scores",
  "drop_and_grow",
  "prune",
  "random_masks",
  "ranked_scores",
  "scheduled",
  "scores_of",
  "segment_sums",
  "segments",
  "threshold",
]


class RuleInputs(NamedTuple):
  """What a rule reads (leaf lists are indexed like ``jax.tree.leaves(params)``).

  Attributes:
    plan: the `jaxprune.plan.Plan`.
    selection: the `jaxprune.plan.Selection` options.
    schedule: the method's schedule.
    sparsity: the model-wide target (for a global threshold).
    final: per-unit final targets (``None``: global).
    initial: per-unit initial sparsities of a ramping schedule (``None`` entries otherwise).
    count: the update count.
    scores: the method's scores, one array per leaf (``None`` for leaves not pruned).
    params: the params' leaves.
    grads: the gradients' leaves (the incoming updates in a chain).
    old: the current masks, ``{leaf index: bool array}``.
    monotone: whether pruned weights must stay pruned.
    unit_scores: per-unit scores from the score's ``channel_fn`` (`channel_scores`): one array per
      unit, ``None`` for units it does not score; empty when it scores none. `scores_of` reads them.
    entry: the score's elementwise form ``(param, grad) -> score`` (`jaxprune.scores.Score.entry`),
      or ``None``. With it, `ranked_scores` streams the scores of units of single entries.
  """

  plan: Plan
  selection: Selection
  schedule: schedules_lib.Schedule
  sparsity: Any
  final: Sequence[Any]
  initial: Sequence[Any]
  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax states do
  scores: Sequence[Any]
  params: Sequence[Any]
  grads: Sequence[Any]
  old: Mapping[int, jax.Array]
  monotone: bool
  unit_scores: Sequence[Any] = ()
  entry: Callable[[jax.Array, Any], jax.Array] | None = None


def channel_scores(plan: Plan, channel_fn: Callable[..., Any] | None, inputs: Any) -> tuple:
  """The `RuleInputs.unit_scores` of a score: ``channel_fn(inputs, groups)`` over the plan's channel
  groups (`jaxprune.structured.ChannelGroup` units), ``None`` for the other units.

  Returns ``()`` when there is no ``channel_fn`` or no channel group.

  Raises:
    ValueError: for a result with too few arrays, or an array not of shape ``(group.size,)``.
  """
  js = [j for j, u in enumerate(plan.units) if u.channel_group is not None]
  if channel_fn is None or not js:
    return ()
  groups = [plan.units[j].channel_group for j in js]
  got = list(channel_fn(inputs, groups))
  if len(got) != len(groups):
    raise ValueError(
      f"{plan.owner}: the score's channel_fn returned {len(got)} arrays for {len(groups)} channel "
      "groups; return one per group."
    )
  out: list[Any] = [None] * len(plan.units)
  for j, g, s in zip(js, groups, got):
    assert g is not None  # js are the channel-group units
    if tuple(jnp.shape(s)) != (g.size,):
      raise ValueError(
        f"{plan.owner}: the score of group {g.name!r} (first member {g.members[0].path!r}) has "
        f"shape {tuple(jnp.shape(s))}, expected ({g.size},)."
      )
    out[j] = jnp.asarray(s).astype(jnp.float32)
  return tuple(out)


def scores_of(x: RuleInputs, j: int) -> jax.Array:
  """One float32 score per group of unit ``j``: its `RuleInputs.unit_scores` entry if there is one,
  else `jaxprune.plan.Unit.group_scores` of the leaf scores."""
  if x.unit_scores and x.unit_scores[j] is not None:
    return x.unit_scores[j]
  return x.plan.units[j].group_scores(x.scores)


class MaskUpdate(NamedTuple):
  """A rule's result: ``masks`` (``{leaf index: bool array}``) and ``train``, the masks of the weights
  that train at this step, or ``None`` when they are ``masks``."""

  masks: dict[int, jax.Array]
  train: dict[int, jax.Array] | None = None


class Rule(NamedTuple):
  """A selection rule: ``fn(RuleInputs) -> MaskUpdate``.

  Attributes:
    name: the rule's name.
    fn: the rule.
    separate_train: whether its ``train`` masks can differ from its masks (the engine then carries
      them through the update step).
    reads_grads: whether it reads ``grads`` itself (gradient growth), besides the method's score.
    uses_targets: whether it reads the sparsity targets (``final``, ``initial``); a rule that does
      not (`threshold`) lets its method go without a sparsity.
  """

  name: str
  fn: Callable[[RuleInputs], MaskUpdate]
  separate_train: bool = False
  reads_grads: bool = False
  uses_targets: bool = True


def scheduled(x: RuleInputs, target: Any, initial: Any) -> Any:
  """The schedule's sparsity at ``x.count`` for a unit with these final and initial sparsities."""
  if initial is None:
    return x.schedule.sparsity(x.count, target)
  return x.schedule.sparsity(x.count, target, initial)


def segments(x: RuleInputs) -> tuple[list[int], list[Any]]:
  """The segment of each unit and the groups each segment keeps at ``x.count``, as `prune` selects.

  Segment 0 holds the units that share a global threshold (those without a target of their own);
  every unit with a target of its own has a segment of its own. For rules that select among the
  units with `jaxprune.selection.top_k_masks` (``segments=``) and must keep `prune`'s counts.

  Args:
    x: the rule's inputs.

  Returns:
    ``(segment of each unit, groups kept in each segment)``; the counts are ints or int32 scalars.
  """
  units = x.plan.units
  keeps: list[Any] = []
  shared = [j for j, t in enumerate(x.final) if t is None]
  if shared:
    groups = sum(units[j].num_groups for j in shared)
    keeps.append(groups - num_pruned(scheduled(x, x.sparsity, x.initial[shared[0]]), groups))
  out = []
  for j, unit in enumerate(units):
    if x.final[j] is None:
      out.append(0)
    else:
      out.append(len(keeps))
      target = scheduled(x, x.final[j], x.initial[j])
      keeps.append(unit.num_groups - num_pruned(target, unit.num_groups))
  return out, keeps


def segment_sums(values: Sequence[jax.Array], segments: Sequence[int], n: int) -> list[jax.Array]:
  """The sums of the int32 scalars ``values`` by segment (``n`` segments, ``segments[i]`` the
  segment of ``values[i]``)."""
  out = [jnp.zeros([], jnp.int32)] * n
  for v, s in zip(values, segments):
    out[s] = out[s] + v
  return out


def _streamable(x: RuleInputs, j: int, unit: Unit) -> bool:
  return (
    x.entry is not None
    and isinstance(unit.pattern, patterns_lib.Unstructured)
    and not (x.unit_scores and x.unit_scores[j] is not None)
  )


def ranked_scores(x: RuleInputs, j: int, *, masked: bool) -> jax.Array | selection.Streamed:
  """Unit ``j``'s group scores as `jaxprune.selection.top_k_masks` takes them, with the groups
  not kept in ``x.old`` at ``-inf`` when ``masked``.

  For a unit of single entries scored elementwise (``x.entry``), a `jaxprune.selection.Streamed`
  of the param, the gradient and the old mask: the selection then computes the scores a piece at a
  time and never holds them at the leaf's size. Otherwise the array of `scores_of`.
  """
  unit = x.plan.units[j]
  if not _streamable(x, j, unit):
    score = scores_of(x, j)
    return jnp.where(unit.kept(x.old), score, -jnp.inf) if masked else score
  entry = x.entry
  assert entry is not None  # _streamable
  ((index, _),) = unit.members
  grad = x.grads[index] if x.grads else None

  def fn(w, g, *old):
    score = entry(w, g).astype(jnp.float32)
    return jnp.where(old[0], score, -jnp.inf) if old else score

  operands = (x.params[index], grad) + ((x.old[index],) if masked else ())
  return selection.Streamed(fn, operands, unit.layer)


def _prune(x: RuleInputs) -> MaskUpdate:
  units = x.plan.units
  unit_masks: list[Any] = [None] * len(units)
  ranked, scores, keeps, segments = [], [], [], []
  shared = [j for j, (u, t) in enumerate(zip(units, x.final)) if t is None and not u.is_nm]
  if shared:  # segment 0: one threshold over all units without a target of their own
    groups = sum(units[j].num_groups for j in shared)
    keeps.append(groups - num_pruned(scheduled(x, x.sparsity, x.initial[shared[0]]), groups))
  for j, unit in enumerate(units):
    score = ranked_scores(x, j, masked=x.monotone)
    if isinstance(unit.pattern, patterns_lib.NM):
      # Within a group of m fewer than n entries may be live; pruned ones (-inf) stay pruned.
      assert isinstance(score, jax.Array)  # only units of single entries stream
      mask = unit.pattern.mask(score)
      unit_masks[j] = mask & unit.kept(x.old) if x.monotone else mask
      continue
    ranked.append(j)
    scores.append(score)
    if x.final[j] is None:
      segments.append(0)
    else:
      segments.append(len(keeps))
      keeps.append(
        unit.num_groups - num_pruned(scheduled(x, x.final[j], x.initial[j]), unit.num_groups)
      )
  if ranked:
    for j, m in zip(ranked, selection.top_k_masks(scores, keeps, segments=segments)):
      unit_masks[j] = m
  return MaskUpdate(x.plan.combine(unit_masks))


prune = Rule("prune", _prune)
"""Keep the highest scores, to the schedule's sparsity (see the module docstring)."""


def _threshold(x: RuleInputs) -> MaskUpdate:
  masks: dict[int, jax.Array] = {}
  for unit in x.plan.units:
    if not (isinstance(unit.pattern, patterns_lib.Unstructured) and unit.layer is None):
      raise ValueError(
        f"{x.plan.owner}: the threshold rule keeps single entries; unit {unit.name!r} is a "
        f"{type(unit.pattern).__name__} pattern or a layer of a stacked leaf."
      )
    ((index, _),) = unit.members
    mask = jnp.asarray(x.scores[index]) > 0
    masks[index] = mask & x.old[index] if x.monotone else mask
  return MaskUpdate(masks)


threshold = Rule("threshold", _threshold, uses_targets=False)
"""Keep every entry whose score is above ``0``: the rule of learned masks, whose score carries its
own threshold (``sigmoid(S) - tau`` for soft movement pruning, the mask logits for SCL). The
sparsity is whatever the scores make it; unstructured units only."""


def random_masks(plan: Plan, sparsities: Sequence[Any], key: jax.Array) -> dict[int, jax.Array]:
  """Masks keeping, in each unit, ``G - round(s G)`` groups chosen uniformly at random.

  Unit ``j`` draws from ``fold_in(key, j)``.
  """
  if not plan.units:
    return {}
  draws = [
    jax.random.uniform(jax.random.fold_in(key, j), u.group_shape(plan.shapes))
    for j, u in enumerate(plan.units)
  ]
  keeps = jnp.stack(
    [
      jnp.asarray(u.num_groups - num_pruned(s, u.num_groups), jnp.int32)
      for u, s in zip(plan.units, sparsities)
    ]
  )
  chosen = selection.top_k_masks(draws, keeps, segments=list(range(len(plan.units))))
  return plan.combine(chosen)


def _grow_gradient(g: jax.Array, survivor: jax.Array) -> jax.Array:
  return jnp.where(survivor, -jnp.inf, jnp.abs(g.astype(jnp.float32)))


def drop_and_grow(
  *, grow: str, drop_fraction: Callable[[jax.Array], jax.Array], seed: int = 0
) -> Rule:
  """The rule of dynamic sparse training (see the module docstring).

  Args:
    grow: ``"gradient"`` (largest mean ``|g|`` per group: RigL, GraNet) or ``"random"`` (SET).
    drop_fraction: ``count -> f``, the fraction of active groups dropped and regrown.
    seed: seed of random growth; update ``t`` draws from ``fold_in(fold_in(key(seed), t), U)``.

  Returns:
    A `Rule` whose train masks are the survivors of the drop.

  Raises:
    ValueError: for an unknown ``grow``.
  """
  if grow not in ("gradient", "random"):
    raise ValueError(f"drop_and_grow: grow must be 'gradient' or 'random', got {grow!r}.")

  def fn(x: RuleInputs) -> MaskUpdate:
    units = x.plan.units
    segments = list(range(len(units)))
    sizes = jnp.asarray([u.num_groups for u in units], jnp.int32)
    active = jnp.stack(
      [
        jnp.asarray(u.num_groups - num_pruned(scheduled(x, t, i), u.num_groups), jnp.int32)
        for u, t, i in zip(units, x.final, x.initial)
      ]
    )
    # k is at most the number of groups inactive after the update (G - A_t): a dense or nearly
    # dense unit (GraNet's start) never has more of its weights reset than the schedule prunes.
    k = jnp.minimum(
      jnp.round(drop_fraction(x.count) * active.astype(jnp.float32)).astype(jnp.int32),
      sizes - active,
    )
    drop = [ranked_scores(x, j, masked=True) for j in range(len(units))]
    survivors = selection.top_k_masks(drop, active - k, segments=segments)
    if grow == "gradient":
      # None for leaves without a unit, as in x.scores: units read their members only.
      magnitudes: list[Any] = [
        None if g is None else jnp.abs(g.astype(jnp.float32)) for g in x.grads
      ]
      growth: list[Any] = []
      for u, s in zip(units, survivors):
        if isinstance(u.pattern, patterns_lib.Unstructured) and u.layer is None:
          ((index, _),) = u.members  # streamed: |g| is never held at the leaf's size
          growth.append(selection.Streamed(_grow_gradient, (x.grads[index], s)))
        else:
          growth.append(jnp.where(s, -jnp.inf, u.group_scores(magnitudes)))
      grown = selection.top_k_masks(growth, k, segments=segments)
    else:
      # The key is made in the traced step, not closed over: a constant key made under
      # jax.set_mesh would carry that mesh's explicit axes into the step's auto-mode work.
      draw = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), x.count), len(units))
      raw = [
        jax.random.uniform(jax.random.fold_in(draw, j), jnp.shape(s))
        for j, s in enumerate(survivors)
      ]
      grown = selection.top_k_masks(
        [jnp.where(s, -jnp.inf, r) for s, r in zip(survivors, raw)], k, segments=segments
      )
    new = [s | g for s, g in zip(survivors, grown)]
    return MaskUpdate(x.plan.combine(new), x.plan.combine(survivors))

  return Rule(f"drop_and_grow({grow})", fn, separate_train=True, reads_grads=grow == "gradient")
