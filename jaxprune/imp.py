"""Iterative magnitude pruning (IMP): cycles of training and pruning, with rewinding.

A run is a sequence of cycles. Cycle 0 trains the dense network; at the first update of each later
cycle the pruner removes a fraction of the weights that are still kept (by magnitude), then either
keeps the trained weights (fine-tuning, or learning-rate rewinding when the optimizer's schedule
restarts) or rewinds the kept weights to their values at initialisation or at an early step ``k``
(lottery tickets). The optimizer's statistics can be reset at the same moment.

Two options change the prune itself. ``activate_while_pruning=p_ap`` (AP, Liu et al. 2023): the
magnitude prune removes ``rate - p_ap`` of the kept weights, then ``p_ap`` more among the kept
*negative* weights that moved least over the cycle. ``rate=jaxprune.pq_rate(...)`` (SAP, Diao et al.
2023): each prune removes as many weights as the PQ index of the kept weights says
(`jaxprune.sap.sap_prune_count`), instead of a fixed fraction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import allocation as allocation_lib
from jaxprune import ap as ap_lib
from jaxprune import engine, rules, selection
from jaxprune import leaves as leaves_lib
from jaxprune import masks as masks_lib
from jaxprune import patterns as patterns_lib
from jaxprune import plan as plan_lib
from jaxprune import sap as sap_lib
from jaxprune import schedules as schedules_lib
from jaxprune import scores as scores_lib
from jaxprune.checks import check_bool, check_int, check_sparsity, number
from jaxprune.groups import Group
from jaxprune.typing import Masks, OptState, Params, PathSelector, Sparsity

if TYPE_CHECKING:
  from jaxprune.structured.channel_group import ChannelGroup

__all__ = ["CycleInfo", "IMPState", "get_cycle", "imp"]


class IMPState(NamedTuple):
  """State of `imp`.

  Attributes:
    count: number of updates so far (int32 scalar).
    cycle: number of prunes so far, i.e. the index of the current cycle (0 while training dense).
    masks: a boolean mask (or `jaxprune.masks.PackedMask`) per pruned leaf, ``None`` elsewhere.
    rewind_params: the weights that prunes rewind to (every floating-point leaf), stored at update
      ``k``; ``None`` when the run does not rewind to stored weights.
    norm_drop: relative norm drop of the pruned leaves caused by the latest prune,
      ``sqrt(| ||w_before||^2 - ||w_after||^2 |) / ||w_before||`` (0 before the first prune).
    pruned_fraction: fraction of the then-kept weights that the latest prune removed.
    cycle_ends: int32 ``[cycles + 1]``: the update count at which each cycle ends.
    cycle_sparsity: float32 ``[cycles + 1]``: the planned sparsity of the pruned leaves in each cycle
      (with ``rate=jaxprune.pq_rate(...)``, whose amounts are not known in advance: the sparsity each
      prune reached, written at the prune, NaN for the cycles not reached yet).
    score_state: the score's own state (``None`` for stateless scores).
    inner_state: the wrapped optimizer's state with ``inner=``, else ``optax.EmptyState()``.
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax states do
  cycle: jax.Array
  masks: Masks
  rewind_params: Params | None
  norm_drop: jax.Array
  pruned_fraction: jax.Array
  cycle_ends: jax.Array
  cycle_sparsity: jax.Array
  score_state: Any
  inner_state: OptState


class CycleInfo(NamedTuple):
  """Where an `imp` run stands, read from its state by `get_cycle`.

  Attributes:
    cycle: index of the cycle the current params belong to (0: dense training).
    step: updates done so far inside that cycle.
    length: the cycle's length in updates.
    at_end: whether the cycle's last update is done: the params are that cycle's final weights (the
      moment to evaluate), and the next update prunes (unless this was the last cycle).
    sparsity: the planned sparsity of the pruned leaves during this cycle.
    norm_drop: relative norm drop of the latest prune (see `IMPState`).
    pruned_fraction: fraction of the kept weights the latest prune removed.
  """

  cycle: jax.Array
  step: jax.Array
  length: jax.Array
  at_end: jax.Array
  sparsity: jax.Array
  norm_drop: jax.Array
  pruned_fraction: jax.Array


def _lengths(cycles: int, cycle_steps: int | Sequence[int]) -> list[int]:
  if isinstance(cycle_steps, Sequence) and not isinstance(cycle_steps, str):
    if len(cycle_steps) != cycles + 1:
      raise ValueError(
        f"imp: cycle_steps has {len(cycle_steps)} entries; a run of cycles={cycles} "
        f"has {cycles + 1} (the dense cycle, then one per prune)."
      )
    return [check_int(f"cycle_steps[{i}]", n, 1, "imp") for i, n in enumerate(cycle_steps)]
  return [check_int("cycle_steps", cycle_steps, 1, "imp")] * (cycles + 1)


def _cycle_schedule(prune_steps: np.ndarray) -> schedules_lib.Schedule:
  """Prunes at each of ``prune_steps``; after ``c`` prunes a leaf of per-cycle rate ``r`` has
  sparsity ``1 - (1 - r) ** c``."""
  cycles = len(prune_steps)

  def is_update_step(count):
    return jnp.any(count == jnp.asarray(prune_steps, jnp.int32))

  def sparsity(count, rate, initial=None):
    del initial
    done = jnp.sum(count >= jnp.asarray(prune_steps, jnp.int32))
    if isinstance(rate, (int, float)):  # exact in float64, then one rounding to float32
      table = 1.0 - (1.0 - float(rate)) ** np.arange(cycles + 1, dtype=np.float64)
      return jnp.asarray(table, jnp.float32)[done]
    return 1.0 - (1.0 - jnp.asarray(rate, jnp.float32)) ** done.astype(jnp.float32)

  return schedules_lib.Schedule(is_update_step=is_update_step, sparsity=sparsity)


def _random_like(seed: int) -> rules.Rule:
  """The ``random_masks`` control: each unit (a leaf, a layer of a stacked leaf, a group) keeps as
  many groups as the magnitude prune would, chosen uniformly at random among those it keeps now."""
  draw = scores_lib.random(seed)

  def fn(x: rules.RuleInputs) -> rules.MaskUpdate:
    new = rules.prune.fn(x).masks
    drawn = draw.fn(scores_lib.ScoreInputs(list(x.params), None, x.count, None, {}))
    units = x.plan.units
    scores = [jnp.where(u.kept(x.old), u.group_scores(drawn), -jnp.inf) for u in units]
    keeps = jnp.stack([jnp.sum(u.kept(new), dtype=jnp.int32) for u in units])
    chosen = selection.top_k_masks(scores, keeps, segments=list(range(len(units))))
    return rules.MaskUpdate(x.plan.combine(chosen))

  return rules.Rule("random_like_magnitude", fn)


def _pq_prune(rate: sap_lib.PQRate, shared: bool) -> rules.Rule:
  """SAP's prune (Diao et al. 2023, ``Compression.compress`` with ``prune_mode 'si'``): the kept
  weights of each segment (all pruned leaves for a global distribution, each unit for a layer-wise
  one) lose `jaxprune.sap.sap_prune_count` of their ``d`` entries, those of lowest score."""

  def fn(x: rules.RuleInputs) -> rules.MaskUpdate:
    units = x.plan.units
    segments = [0] * len(units) if shared else list(range(len(units)))
    n_seg = max(segments) + 1
    old = [u.kept(x.old) for u in units]
    values = [jnp.where(m, u.group_scores(list(x.params)), 0.0) for m, u in zip(old, units)]
    kept = rules.segment_sums([jnp.sum(m, dtype=jnp.int32) for m in old], segments, n_seg)
    keeps = []
    for s in range(n_seg):
      parts = [v for v, t in zip(values, segments) if t == s]
      index = sap_lib.pq_index_of(parts, kept[s], rate.p, rate.q)
      keeps.append(kept[s] - sap_lib.sap_prune_count(kept[s], index, rate))
    scores = [jnp.where(m, rules.scores_of(x, j), -jnp.inf) for j, m in enumerate(old)]
    return rules.MaskUpdate(x.plan.combine(selection.top_k_masks(scores, keeps, segments=segments)))

  return rules.Rule("pq_prune", fn, uses_targets=False)


def _planned_sparsity(
  plan: plan_lib.Plan,
  final: Sequence[Any],
  rate: Any,
  schedule: schedules_lib.Schedule,
  prune_steps: np.ndarray,
) -> jax.Array:
  """Sparsity of the pruned leaves in each cycle, from the counts the selection keeps."""
  total = sum(u.size for u in plan.units)
  shared = [u for u, t in zip(plan.units, final) if t is None]
  shared_groups = sum(u.num_groups for u in shared)
  shared_size = sum(u.size for u in shared)
  rows = [jnp.zeros([], jnp.float32)]
  for step in prune_steps:
    count = jnp.asarray(step, jnp.int32)
    zeros = jnp.zeros([], jnp.float32)
    if shared:
      pruned = plan_lib.num_pruned(schedule.sparsity(count, rate), shared_groups)
      zeros += jnp.asarray(pruned, jnp.float32) * (shared_size / shared_groups)
    for unit, target in zip(plan.units, final):
      if target is None:
        continue
      pruned = plan_lib.num_pruned(schedule.sparsity(count, target), unit.num_groups)
      zeros += jnp.asarray(pruned, jnp.float32) * (unit.size / unit.num_groups)
    rows.append(zeros / max(total, 1))
  return jnp.stack(rows)


def _norm_drop(
  info: engine.StepInfo, old: Mapping[int, jax.Array], result: rules.MaskUpdate
) -> dict[str, jax.Array]:
  """The relative norm drop and the pruned fraction of a prune (see `IMPState`)."""
  p, masked = info.params, info.plan.masked
  square = lambda x: jnp.sum(jnp.square(x.astype(jnp.float32)))
  before = sum(square(jnp.where(old[i], p[i], 0)) for i in masked)
  after = sum(square(jnp.where(result.masks[i], p[i], 0)) for i in masked)
  drop = jnp.where(before > 0, jnp.sqrt(jnp.abs(before - after) / jnp.maximum(before, 1e-30)), 0.0)
  kept_before = sum(jnp.sum(old[i], dtype=jnp.float32) for i in masked)
  kept_after = sum(jnp.sum(result.masks[i], dtype=jnp.float32) for i in masked)
  fraction = jnp.where(kept_before > 0, 1 - kept_after / jnp.maximum(kept_before, 1.0), 0.0)
  return {"norm_drop": drop.astype(jnp.float32), "pruned_fraction": fraction.astype(jnp.float32)}


def _offer(info: engine.StepInfo, fields: Mapping[str, Any]) -> dict[str, jax.Array]:
  return {
    "imp_count": info.count,
    "imp_norm_drop": fields["norm_drop"],
    "imp_pruned_fraction": fields["pruned_fraction"],
  }


def get_cycle(opt_state: OptState) -> CycleInfo:
  """The cycle an `imp` run is in, read from any optimizer state that contains one.

  A training loop can evaluate when ``at_end`` is true, without counting steps itself.

  Args:
    opt_state: an optimizer state containing exactly one `imp` state (inside ``optax.chain``,
      ``inject_hyperparams``, an ``nnx.Optimizer``, ...).

  Returns:
    A `CycleInfo` of scalar arrays (usable inside ``jit``).

  Raises:
    ValueError: if the state holds no `imp` state or several.

  Example:
    >>> import jax.numpy as jnp, optax, jaxprune
    >>> params = {'w': jnp.arange(1.0, 9.0).reshape(2, 4)}
    >>> tx = jaxprune.imp(rate=0.5, cycles=2, cycle_steps=3, inner=optax.sgd(0.0))
    >>> state = tx.init(params)
    >>> for _ in range(4):
    ...   updates, state = tx.update({'w': jnp.zeros((2, 4))}, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> info = jaxprune.get_cycle(state)
    >>> int(info.cycle), int(info.step), bool(info.at_end), float(info.sparsity)
    (1, 1, False, 0.5)
  """
  states = masks_lib.find_states(opt_state, lambda x: isinstance(x, IMPState))
  if len(states) != 1:
    raise ValueError(
      f"get_cycle: the optimizer state must contain exactly one imp state, found {len(states)}."
    )
  state = jax.tree.map(leaves_lib.unwrap_variable, states[0], is_leaf=leaves_lib.is_variable)
  ends = state.cycle_ends
  starts = jnp.concatenate([jnp.zeros([1], ends.dtype), ends[:-1]])
  cycle = state.cycle
  return CycleInfo(
    cycle=cycle,
    step=state.count - starts[cycle],
    length=ends[cycle] - starts[cycle],
    at_end=state.count == ends[cycle],
    sparsity=state.cycle_sparsity[cycle],
    norm_drop=state.norm_drop,
    pruned_fraction=state.pruned_fraction,
  )


def imp(
  sparsity: Sparsity | None = None,
  *,
  cycles: int,
  cycle_steps: int | Sequence[int],
  rate: Sparsity | sap_lib.PQRate | None = None,
  distribution: str = "global",
  leaf_rates: Mapping[str, float] | None = None,
  rewind: int | str | None = None,
  reset_optimizer: bool = False,
  reinit: Callable[[jax.Array], Params] | None = None,
  random_masks: bool = False,
  seed: int = 0,
  activate_while_pruning: Sparsity | None = None,
  score_fn: scores_lib.Score | scores_lib.ScoreFn | None = None,
  pattern: patterns_lib.Pattern | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, float] | None = None,
  groups: Sequence[Group | ChannelGroup] = (),
  packed_masks: bool = False,
  inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Iterative magnitude pruning with fine-tuning, weight rewinding or learning-rate rewinding.

  The run has ``cycles + 1`` training cycles: cycle 0 trains the dense network, and the first update
  of cycle ``c >= 1`` prunes a fraction ``rate`` of the weights still kept (``1 - (1 - rate) ** c``
  of each pruned leaf is then zero), by magnitude unless ``score_fn`` says otherwise. What follows
  the prune:

  - ``rewind=None``: the trained weights are kept (fine-tuning). With ``reset_optimizer=True`` the
    wrapped optimizer restarts, schedule included: learning-rate rewinding (Renda et al.). In the
    chain form, restart the schedule with `jaxprune.retraining.lrw` instead.
  - ``rewind="init"`` or ``rewind=k``: the kept weights (biases and other unpruned floating-point
    leaves too) are set back to their values at update ``k`` (``"init"`` is ``k = 0``, the lottery
    ticket; ``k > 0`` is late rewinding). The weights are stored in the state at update ``k``. The
    prune step's own gradient update is dropped. Rewinding goes through an additive update
    ``t - w``, so a rewound weight equals the stored ``t`` up to the rounding of ``w + (t - w)``
    (half an ulp of the larger of the two); pruned weights are exactly zero.

  After every update, pruned weights are exactly zero, as with every jaxprune pruner. Updates after
  the last cycle keep the final masks.

  Args:
    sparsity: the sparsity reached in the last cycle; the per-cycle rate is then
      ``1 - (1 - sparsity) ** (1 / cycles)``. Give this or ``rate``.
    cycles: the number of prunes, at least 1.
    cycle_steps: the length in updates of every cycle, or a sequence of ``cycles + 1`` lengths
      (the first is the dense training, which may be longer than the retraining cycles).
    rate: the fraction of the remaining weights pruned at each prune (0.2 for Frankle & Carbin), or
      ``jaxprune.pq_rate(p, q, eta=, gamma=, beta=)``: SAP's adaptive amount (Diao et al. 2023), each
      prune removing the `jaxprune.sap.sap_prune_count` of the kept weights' PQ index, by the score
      (magnitude), over all pruned leaves (``"global"``) or per leaf (``"uniform"``). The sparsity of
      each cycle is then known only once it is reached (`IMPState`); unstructured, without
      ``leaf_rates``, ``random_masks`` or ``activate_while_pruning``. With
      ``optax.inject_hyperparams`` a `jaxprune.sap.PQRate` is passed through as it is (static).
    distribution: ``"global"`` (one magnitude threshold over all pruned leaves) or ``"uniform"``
      (each leaf loses ``rate`` of its own remaining weights).
    leaf_rates: ``{path regex: rate}`` for leaves pruned at their own per-cycle rate, layer-wise (the
      lottery-ticket output layer prunes at half the rate of the hidden layers).
    rewind: ``None`` (keep the trained weights), ``"init"`` or an update count ``k`` inside the first
      cycle.
    reset_optimizer: re-initialise the wrapped optimizer's state (momentum, Adam moments, its step
      count and hence its schedule) at every prune. The prune step then feeds the optimizer no
      gradient (the kept weights do not move on that step), so the next update is the fresh
      optimizer's first. Needs ``inner=``.
    reinit: control experiment: ``key -> params`` (e.g. ``lambda key: model.init(key, x)['params']``);
      at each prune the kept weights are set to a fresh draw ``reinit(fold_in(key(seed), cycle))``
      instead of the stored ones, and the next masks come from training those. Needs ``rewind``.
      (Frankle & Carbin's control instead trains each ticket's own mask from a fresh initialisation:
      `jaxprune.static_sparse` with ``masks=jaxprune.get_masks(state)``.)
    random_masks: control experiment: each prune removes, in each leaf, as many weights as the
      magnitude prune would, chosen uniformly at random among the kept ones (seeded by ``seed``).
    seed: seed of ``reinit`` and ``random_masks``.
    activate_while_pruning: ``p_ap``, AP's share of each prune (Liu et al. 2023; 0.02 with
      ``rate=0.2`` in the authors' code): the magnitude prune removes ``rate - p_ap`` of the kept
      weights, and ``floor(p_ap * d)`` more (``d``: the weights kept before the prune) are removed
      among the kept *negative* weights whose movement ``|w - w_start|`` over the cycle is smallest,
      ``w_start`` being the weights the cycle started from (the initialisation for cycle 0, the
      weights after the previous prune, hence the rewound ones when rewinding). The cycle's sparsity
      is unchanged (exactly as without AP). Kept per global threshold or per leaf like the prune;
      magnitude scores, unstructured pattern, no ``groups``. The cycle starts live in the score's
      state (one copy of the params). ``None`` (default): no AP.
    score_fn: a `jaxprune.scores.Score` or ``(params, grads, count) -> scores``; magnitude by
      default.
    pattern: what is pruned together (unstructured, block or channel, see `jaxprune.patterns`).
    prune: which leaves are pruned, as in `jaxprune.pruning`.
    overrides: the name every method uses for ``leaf_rates`` (per-cycle rates here); give one of
      the two.
    groups: `jaxprune.groups.Group` (or `jaxprune.structured.ChannelGroup`) units spanning several
      leaves, pruned whole.
    packed_masks: store masks as bits.
    inner: an optimizer to wrap; without it `imp` must be the last link of a chain.

  Offers its inner optimizer (declared in its `jaxprune.engine.Hooks`): the extra update arguments
  ``imp_count`` (imp's update count, which survives optimizer resets), ``imp_norm_drop`` and
  ``imp_pruned_fraction`` (of the latest prune, see `IMPState`). `jaxprune.retraining.allr` reads
  them; transformations that do not use them ignore them.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an `IMPState`; `get_cycle` reads
    the cycle index and its sparsity from it.

  Raises:
    ValueError: for ``cycles < 1``, a cycle length below 1, a ``cycle_steps`` list of the wrong
      length, both or neither of ``sparsity`` and ``rate``, a rate or sparsity outside ``[0, 1)``, a
      rewind step outside the first cycle, ``reset_optimizer`` without ``inner``, ``reinit`` without
      ``rewind``, an unknown distribution, N:M patterns, ``random_masks`` with a structured pattern,
      ``activate_while_pruning`` outside ``[0, rate]`` or with a structured pattern, groups, a
      ``score_fn`` or ``random_masks``, or a `jaxprune.sap.PQRate` with a structured pattern, groups,
      ``leaf_rates``, ``random_masks`` or ``activate_while_pruning``.
    TypeError: for non-integer cycle counts or lengths.

  Example:
    Lottery tickets on a model with ``params`` (20% of the remaining weights per round, 10% for the
    output layer, rewinding to initialisation and restarting Adam each round):

    >>> import optax, jaxprune
    >>> tx = jaxprune.imp(rate=0.2, cycles=10, cycle_steps=5000, distribution='uniform',
    ...                   leaf_rates={'.*output.*': 0.1}, rewind='init', reset_optimizer=True,
    ...                   inner=optax.adam(1.2e-3))

  References:
    Han et al., `Learning both weights and connections for efficient neural networks
    <https://arxiv.org/abs/1506.02626>`_, 2015;
    Frankle & Carbin, `The lottery ticket hypothesis: finding sparse, trainable neural networks
    <https://arxiv.org/abs/1803.03635>`_, 2019;
    Frankle et al., `Linear mode connectivity and the lottery ticket hypothesis
    <https://arxiv.org/abs/1912.05671>`_, 2020;
    Renda, Frankle & Carbin, `Comparing rewinding and fine-tuning in neural network pruning
    <https://arxiv.org/abs/2003.02389>`_, 2020;
    Liu, Ghosh, Tan & Motani, `AP: selective activation for de-sparsifying pruned neural networks
    <https://arxiv.org/abs/2212.06145>`_, TMLR 2023 (code: ``Martin1937/AP-Activate-While-Pruning-``,
    ``resnet_20.py``);
    Diao et al., `Pruning deep neural networks from a sparsity perspective
    <https://arxiv.org/abs/2302.05601>`_, ICLR 2023 (code:
    ``diaoenmao/Pruning-Deep-Neural-Networks-from-a-Sparsity-Perspective``)
  """
  cycles = check_int("cycles", cycles, 1, "imp")
  lengths = _lengths(cycles, cycle_steps)
  ends = np.cumsum(lengths)
  prune_steps = ends[:-1]  # the first update of cycles 1..n
  if (sparsity is None) == (rate is None):
    raise ValueError(
      f"imp: give exactly one of sparsity (reached in the last cycle) and rate (per "
      f"cycle), got sparsity={sparsity!r}, rate={rate!r}."
    )
  pq = rate if isinstance(rate, sap_lib.PQRate) else None
  if pq is not None:
    rate = 0.0  # the plan's placeholder: the PQ rule sets its own counts
    for name, value in (
      ("leaf_rates", leaf_rates),
      ("overrides", overrides),
      ("activate_while_pruning", activate_while_pruning),
    ):
      if value is not None:
        raise ValueError(
          f"imp: rate=pq_rate(...) sets every prune's amount; {name} cannot be used."
        )
    if random_masks or groups or not isinstance(pattern, (type(None), patterns_lib.Unstructured)):
      raise ValueError(
        f"imp: rate=pq_rate(...) prunes single weights: no random_masks, groups or structured "
        f"pattern, got random_masks={random_masks!r}, groups={groups!r}, pattern={pattern!r}."
      )
  assert not isinstance(rate, sap_lib.PQRate)  # replaced by the placeholder above
  if sparsity is not None:
    check_sparsity(sparsity, "imp: sparsity")
    if isinstance(sparsity, (int, float)):
      rate = 1.0 - (1.0 - float(sparsity)) ** (1.0 / cycles)
    else:
      rate = 1.0 - (1.0 - jnp.asarray(sparsity, jnp.float32)) ** (1.0 / cycles)
  else:
    check_sparsity(rate, "imp: rate")
  layered = (
    isinstance(distribution, allocation_lib.Stacked) and distribution.distribution == "uniform"
  )
  if distribution not in ("global", "uniform") and not layered:
    raise ValueError(
      f"imp: distribution must be 'global' or 'uniform' (or jaxprune.allocation.stacked("
      f"'uniform', ...)), got {distribution!r}."
    )
  if isinstance(pattern, patterns_lib.NM):
    raise ValueError("imp: N:M patterns fix the sparsity; use magnitude_pruning with n_m instead.")
  assert rate is not None and not isinstance(rate, sap_lib.PQRate)  # a number from here on
  if rewind == "init":
    rewind = 0
  if rewind is not None:
    if isinstance(rewind, str):
      raise ValueError(f"imp: rewind must be None, 'init' or an update count, got {rewind!r}.")
    rewind = check_int("rewind", rewind, 0, "imp")
    if rewind >= lengths[0]:
      raise ValueError(
        f"imp: rewind step {rewind} is beyond the first cycle, which ends after "
        f"{lengths[0]} updates (cycle_steps[0]); the rewind point must be stored "
        f"before the first prune."
      )
  for flag_name, flag in (
    ("reset_optimizer", reset_optimizer),
    ("random_masks", random_masks),
    ("packed_masks", packed_masks),
  ):
    check_bool(flag_name, flag, "imp")
  if reinit is not None:
    if not callable(reinit):
      raise TypeError(f"imp: reinit must be a function key -> params, got {reinit!r}.")
    if rewind is None:
      raise ValueError(
        "imp: reinit replaces the weights that a prune rewinds to; it needs rewind "
        "('init' or a step), got rewind=None."
      )
  if activate_while_pruning is not None:
    check_sparsity(activate_while_pruning, "imp: activate_while_pruning")
    ap, per_cycle = (number(v, "imp") for v in (activate_while_pruning, rate))
    if ap is not None and per_cycle is not None and ap > per_cycle:
      raise ValueError(
        f"imp: activate_while_pruning ({activate_while_pruning!r}) is AP's share of each prune and "
        f"must not exceed the per-cycle rate ({per_cycle!r})."
      )
    if score_fn is not None or random_masks or groups:
      raise ValueError(
        "imp: activate_while_pruning follows a magnitude prune of single weights: it cannot be "
        f"used with score_fn, random_masks or groups, got score_fn={score_fn!r}, "
        f"random_masks={random_masks!r}, groups={groups!r}."
      )
    if not isinstance(pattern, (type(None), patterns_lib.Unstructured)):
      raise ValueError(
        f"imp: activate_while_pruning prunes single (negative) weights, got pattern={pattern!r}."
      )
  if leaf_rates is not None and overrides is not None:
    raise ValueError(
      "imp: overrides and leaf_rates are the same option (per-leaf rates); give one."
    )
  selection_ = plan_lib.make_selection(
    "imp",
    sparsity=rate,
    prune=prune,
    pattern=pattern,
    distribution=distribution,
    overrides=leaf_rates if overrides is None else overrides,
    groups=groups,
  )
  if random_masks and not isinstance(selection_.pattern, patterns_lib.Unstructured):
    raise ValueError(f"imp: random_masks needs the unstructured pattern, got {pattern!r}.")
  scores_lib.random(seed)  # checks the seed of random_masks and reinit
  rule = _random_like(seed) if random_masks else rules.prune
  if activate_while_pruning is not None:
    rule = ap_lib.rule(activate_while_pruning)
  if pq is not None:
    rule = _pq_prune(pq, selection_.distribution == "global")
  schedule = _cycle_schedule(prune_steps)
  stores_rewind = rewind is not None and reinit is None

  def init(plan, leaves, treedef):
    inexact = lambda x: jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
    rewind_params = None
    if stores_rewind:
      rewind_params = jax.tree.unflatten(
        treedef, [jnp.copy(x) if inexact(x) else None for x in leaves]
      )
    if pq is None:
      final, _ = plan_lib.targets(plan, selection_, rate)
      planned = _planned_sparsity(plan, final, rate, schedule, prune_steps)
    else:  # known once reached: written by each prune (on_update)
      planned = jnp.full([cycles + 1], jnp.nan, jnp.float32).at[0].set(0.0)
    return dict(
      cycle=jnp.zeros([], jnp.int32),
      rewind_params=rewind_params,
      norm_drop=jnp.zeros([], jnp.float32),
      pruned_fraction=jnp.zeros([], jnp.float32),
      cycle_ends=jnp.asarray(ends, jnp.int32),
      cycle_sparsity=planned,
    )

  def on_update(info, old, result):
    fields = _norm_drop(info, old, result)
    if pq is not None:  # the sparsity this prune reached, over the pruned leaves
      units = info.plan.units
      kept = sum(jnp.sum(u.kept(result.masks), dtype=jnp.float32) for u in units)
      total = sum(u.num_groups for u in units)
      reached = 1.0 - kept / max(total, 1)
      fields["cycle_sparsity"] = info.state.cycle_sparsity.at[info.state.cycle + 1].set(reached)
    return fields

  def every_step(info, fields):
    del fields
    state = info.state
    out = {"cycle": state.cycle + info.is_update.astype(jnp.int32)}
    if stores_rewind and rewind is not None and rewind > 0:
      copy = lambda: [
        None if r is None else x.astype(r.dtype)
        for x, r in zip(info.params, leaves_lib.flatten_up_to(info.treedef, state.rewind_params))
      ]
      out["rewind_params"] = jax.tree.unflatten(
        info.treedef,
        selection.cond(
          info.count == rewind,
          copy,
          lambda: leaves_lib.flatten_up_to(info.treedef, state.rewind_params),
        ),
      )
    return out

  def rewound(info, out, targets):
    return [
      u
      if t is None or not jnp.issubdtype(t.dtype, jnp.inexact)
      else (t.astype(u.dtype) - x.astype(u.dtype))
      for u, x, t in zip(out, info.params, targets)
    ]

  def updates(info, fields, out):
    if rewind is None:
      return out
    if reinit is None:
      # An elementwise select, not a cond: XLA fuses it with the projection and the optimizer's
      # arithmetic, so steps between prunes only read the stored weights once more. (A cond
      # returning the updates blocks that fusion and cost ~20% of the step on a 10M MLP.)
      stored = fields.get("rewind_params", info.state.rewind_params)
      moved = rewound(info, out, leaves_lib.flatten_up_to(info.treedef, stored))
      return [jnp.where(info.is_update, m, u) for m, u in zip(moved, out)]

    def fresh():
      key = jax.random.fold_in(jax.random.key(seed), fields["cycle"])
      drawn = leaves_lib.unwrap_variables(reinit(key))
      if jax.tree.structure(drawn) != info.treedef:
        raise ValueError(
          f"imp: reinit returned a tree of structure {jax.tree.structure(drawn)}, "
          f"expected the params' structure {info.treedef}."
        )
      return rewound(info, out, leaves_lib.flatten_up_to(info.treedef, drawn))

    return selection.cond(
      info.is_update, fresh, lambda: out
    )  # drawing is too costly for every step

  hooks = engine.Hooks(
    state_class=IMPState,
    init=init,
    update_fields=("norm_drop", "pruned_fraction")
    + (("cycle_sparsity",) if pq is not None else ()),
    on_update=on_update,
    every_step=every_step,
    offers=("imp_count", "imp_norm_drop", "imp_pruned_fraction"),
    offer=_offer,
    updates=updates,
  )
  score = scores_lib.magnitude if score_fn is None else scores_lib.as_score(score_fn, "imp")
  if activate_while_pruning is not None:
    score = ap_lib.movement(_cycle_schedule(prune_steps).is_update_step)
  method = engine.Method(
    "imp",
    score,
    None if pq is not None else rate,
    selection_,
    schedule,
    rule=rule,
    statistics="reset" if reset_optimizer else "keep",
    packed_masks=packed_masks,
    hooks=hooks,
  )
  return engine.transformation(method, inner)
