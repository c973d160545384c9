"""Gradual grow-and-prune (GaP): partitions of the model grown dense and pruned back, in turn.

The cyclic schedule of Ma et al. (C-GaP) on the engine (`jaxprune.engine`). The pruned units (the
kernels, or the units of ``pattern=`` and ``groups=``) are split into ``kappa`` partitions. The run
starts sparse: at the first update every unit gets a random mask at its target (its share of
``sparsity`` under ``distribution``). Then, from ``begin_step`` on, every ``step_length`` updates
is a GaP *step*; at its first update

1. the partition grown by the previous step is pruned back to its target by magnitude, among all
   its weights (the ones kept before and the ones it grew);
2. the next partition, cyclically, is grown dense: all its weights are active, the ones pruned so
   far starting from exactly zero, with zeroed optimizer statistics.

A round is ``kappa`` steps (each partition dense once); after ``rounds`` rounds, the last step's
partition is pruned back too, and the masks stay fixed for the rest of training (the paper's
fine-tuning). The mask-update counts are ``begin_step + j * step_length`` for ``j = 0 ..
kappa * rounds``. Between them only the dense partition differs from a sparse network: every
other unit keeps exactly its target count of weights.

References:
  Ma, Qin, Sun, Hou, Yuan, Xu, Wang, Chen, Jin & Xie, `Effective model sparsification by scheduled
  grow-and-prune methods <https://arxiv.org/abs/2106.09857>`_, ICLR 2022 (code:
  ``boone891214/GaP``)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import engine, rules, selection
from jaxprune import patterns as patterns_lib
from jaxprune import plan as plan_lib
from jaxprune import schedules as schedules_lib
from jaxprune import scores as scores_lib
from jaxprune.checks import check_bool, check_int, check_sparsity
from jaxprune.groups import Group
from jaxprune.typing import Distribution, PathSelector, Sparsity

__all__ = ["gap", "gap_steps", "partition_units"]

Partitions = int | Sequence[str | Sequence[str]]


def gap_steps(partitions: int, step_length: int, rounds: int, begin_step: int = 0) -> list[int]:
  """The update counts at which `gap` changes its masks.

  Args:
    partitions: ``kappa``, the number of partitions.
    step_length: updates per GaP step.
    rounds: the number of rounds (``kappa`` steps each).
    begin_step: the first mask update.

  Returns:
    ``[begin_step + j * step_length for j in 0 .. kappa * rounds]``: the first grows partition 0,
    the last prunes the last partition back (the start of fine-tuning).

  Example:
    >>> from jaxprune import grow_and_prune
    >>> grow_and_prune.gap_steps(3, 100, 2, begin_step=50)
    [50, 150, 250, 350, 450, 550, 650]
  """
  return [begin_step + j * step_length for j in range(partitions * rounds + 1)]


def _check_partitions(partitions: Any, owner: str) -> int | list[list[str]]:
  if isinstance(partitions, (bool, float)) or partitions is None:
    raise TypeError(
      f"{owner}: partitions must be an int (kappa) or a list of path regexes (one entry per "
      f"partition), got {partitions!r}."
    )
  if isinstance(partitions, (int, np.integer)):
    return check_int("partitions", partitions, 1, owner)
  if isinstance(partitions, str) or not isinstance(partitions, Sequence) or not partitions:
    raise TypeError(
      f"{owner}: partitions must be an int (kappa) or a non-empty list of path regexes, got "
      f"{partitions!r}."
    )
  out = []
  for entry in partitions:
    patterns = [entry] if isinstance(entry, str) else list(entry)
    for p in patterns:
      if not isinstance(p, str):
        raise TypeError(f"{owner}: partition patterns must be regexes (str), got {p!r}.")
      try:
        re.compile(p)
      except re.error as e:
        raise ValueError(f"{owner}: partition pattern {p!r} is not a valid regex: {e}.") from None
    out.append(patterns)
  return out


def partition_units(names: Sequence[str], partitions: Partitions, owner: str = "gap") -> list[int]:
  """The partition of each unit, from its name.

  Args:
    names: the units' names, in order (the pruned leaves' paths, or the groups' names).
    partitions: ``kappa`` (an int): the units in order, cut into ``kappa`` contiguous runs of
      sizes differing by at most one (the first runs the longer); or one entry per partition, a
      regex or a list of regexes matched in full against the names.
    owner: the name used in error messages.

  Returns:
    One partition index per unit.

  Raises:
    ValueError: for more partitions than units, a unit in no partition or in several, or an
      empty partition (each message names the unit or the pattern).
    TypeError: for partitions that are neither an int nor a list of regexes.

  Example:
    >>> from jaxprune import grow_and_prune
    >>> grow_and_prune.partition_units(['l0/kernel', 'l1/kernel', 'l2/kernel'], 2)
    [0, 0, 1]
    >>> names = ['l0/kernel', 'l1/kernel', 'l2/kernel']
    >>> grow_and_prune.partition_units(names, [['l1.*'], ['l0.*', 'l2.*']])
    [1, 0, 1]
  """
  checked = _check_partitions(partitions, owner)
  if isinstance(checked, int):
    if checked > len(names):
      raise ValueError(
        f"{owner}: partitions={checked} is more than the {len(names)} pruned units {list(names)}."
      )
    base, extra = divmod(len(names), checked)
    out = []
    for p in range(checked):
      out += [p] * (base + (1 if p < extra else 0))
    return out
  out = []
  for name in names:
    hits = [p for p, patterns in enumerate(checked) if any(re.fullmatch(x, name) for x in patterns)]
    if len(hits) != 1:
      where = "no partition" if not hits else f"partitions {hits}"
      raise ValueError(f"{owner}: unit {name!r} is in {where}; each unit must be in exactly one.")
    out.append(hits[0])
  empty = [checked[p] for p in range(len(checked)) if p not in out]
  if empty:
    raise ValueError(f"{owner}: partition {empty[0]!r} matches no pruned unit of {list(names)}.")
  return out


def _schedule(steps: list[int]) -> schedules_lib.Schedule:
  def is_update_step(count):
    return jnp.any(jnp.asarray(count) == jnp.asarray(steps, jnp.int32))

  return schedules_lib.Schedule(
    is_update_step=is_update_step, sparsity=lambda count, target, initial=None: target
  )


def _rule(
  partitions: Partitions, kappa_rounds: int, step_length: int, begin_step: int
) -> rules.Rule:
  def fn(x: rules.RuleInputs) -> rules.MaskUpdate:
    units = x.plan.units
    part = partition_units([u.name for u in units], partitions, x.plan.owner)
    kappa = max(part) + 1
    phase = (x.count - begin_step) // step_length
    grown = jnp.where(phase < kappa_rounds, phase % kappa, -1)
    pruned = jnp.where(phase >= 1, (phase - 1) % kappa, -1)
    keeps = []
    for u, t, i in zip(units, x.final, x.initial):
      keeps.append(
        jnp.asarray(u.num_groups - plan_lib.num_pruned(rules.scheduled(x, t, i), u.num_groups))
      )
    # Magnitude among all the weights of each unit (those of the partition grown last are all
    # active); only the units of the partition pruned back at this step use it.
    chosen = selection.top_k_masks(
      [rules.ranked_scores(x, j, masked=False) for j in range(len(units))],
      jnp.stack(keeps).astype(jnp.int32),
      segments=list(range(len(units))),
    )
    out = []
    for j, (u, magnitude) in enumerate(zip(units, chosen)):
      old = u.kept(x.old)
      new = jnp.where(part[j] == pruned, magnitude, old)
      out.append(jnp.where(part[j] == grown, jnp.ones_like(old), new))
    return rules.MaskUpdate(x.plan.combine(out))

  return rules.Rule("grow_and_prune", fn)


def gap(
  sparsity: Sparsity,
  *,
  partitions: Partitions,
  step_length: int,
  rounds: int,
  begin_step: int = 0,
  distribution: Distribution = "uniform",
  seed: int = 0,
  pattern: patterns_lib.Pattern | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, float] | None = None,
  groups: Sequence[Group] = (),
  packed_masks: bool = False,
  inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Cyclic gradual grow-and-prune (C-GaP): one partition dense at a time, the rest sparse.

  See the module docstring (`jaxprune.grow_and_prune`) for the schedule. Every unit's target is
  its share of ``sparsity`` under ``distribution``; at every update the units outside the dense
  partition hold exactly ``round(s * size)`` zeros, and after the last mask update (`gap_steps`)
  every unit does.
  Pruned weights are exactly zero after every update, as with every jaxprune pruner.

  Args:
    sparsity: the target sparsity, in ``[0, 1)``.
    partitions: ``kappa``: the pruned units (in the params' order) cut into ``kappa`` contiguous
      partitions; or one entry per partition, a regex or a list of regexes matched against the
      units' names (`partition_units`).
    step_length: updates per GaP step (the paper's step: some epochs).
    rounds: the number of rounds; each grows every partition once.
    begin_step: the first mask update (partition 0 grows there); until then the network trains
      with its random sparse start.
    distribution: how ``sparsity`` is shared among the units: ``"uniform"`` (default; the paper's
      uniform sparsity), ``"erk"``, ``"er"`` or a function. Not ``"global"``: each partition is
      pruned back to its units' own counts.
    seed: seed of the random initial masks.
    pattern: what is pruned together: unstructured (default), block or channel.
    prune: which leaves are pruned, as in `jaxprune.pruning`.
    overrides: ``{path regex: sparsity}`` for units pruned to their own target.
    groups: `jaxprune.groups.Group` units spanning several leaves.
    packed_masks: store masks as bits.
    inner: the optimizer to wrap (required: the statistics of grown weights start at zero).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a `jaxprune.PruningState`.

  Raises:
    ValueError: for a sparsity outside ``[0, 1)``, ``partitions``, ``step_length`` or ``rounds``
      below 1, a negative ``begin_step``, ``distribution="global"``, an N:M pattern, no ``inner``,
      and (at ``init``) more partitions than pruned units or a unit in no or several partitions.
    TypeError: for non-integer counts or partitions of the wrong type.

  Example:
    Three partitions (one kernel each), steps of 2 updates, one round, then fine-tuning:

    >>> import jax, jax.numpy as jnp, optax, jaxprune
    >>> params = {f'l{i}': {'kernel': jnp.ones((4, 4))} for i in range(3)}
    >>> tx = jaxprune.gap(0.5, partitions=3, step_length=2, rounds=1, inner=optax.sgd(0.1))
    >>> state = tx.init(params)
    >>> for t in range(3):  # updates 0, 1, 2: l0 grown at 0, pruned back and l1 grown at 2
    ...   updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> [int((~m['kernel']).sum()) for m in jaxprune.get_masks(state).values()]
    [8, 0, 8]

  References:
    Ma et al., `Effective model sparsification by scheduled grow-and-prune methods
    <https://arxiv.org/abs/2106.09857>`_, ICLR 2022
  """
  name = "gap"
  needs_inner = (
    "grown weights start from zero with zeroed optimizer statistics, which a chained pruner "
    "cannot reach."
  )
  if inner is None:
    raise ValueError(f"{name}: needs the inner= form (inner=optimizer): {needs_inner}")
  check_sparsity(sparsity, f"{name}: sparsity")
  _check_partitions(partitions, name)
  step_length = check_int("step_length", step_length, 1, name)
  rounds = check_int("rounds", rounds, 1, name)
  begin_step = check_int("begin_step", begin_step, 0, name)
  check_bool("packed_masks", packed_masks, name)
  if distribution == "global":
    raise ValueError(
      f"{name}: each partition is pruned back to its units' own counts; distribution must "
      f"allocate a sparsity to each unit ('uniform', 'erk', 'er' or a function), got 'global'."
    )
  if isinstance(pattern, patterns_lib.NM):
    raise ValueError(
      f"{name}: an N:M pattern fixes which weights are kept in every group of m; grow and "
      f"prune needs an unstructured, block or channel pattern."
    )
  selection_ = plan_lib.make_selection(
    name,
    sparsity=sparsity,
    prune=prune,
    pattern=pattern,
    distribution=distribution,
    overrides=overrides,
    groups=groups,
  )
  kappa = int(partitions) if isinstance(partitions, (int, np.integer)) else len(partitions)
  steps = gap_steps(kappa, step_length, rounds, begin_step)

  def initial_masks(plan, final, initial):
    """Random masks at each unit's target: the sparse start (partitions checked at init)."""
    return rules.random_masks(plan, final, jax.random.key(seed))

  method = engine.Method(
    name,
    scores_lib.magnitude,
    sparsity,
    selection_,
    _schedule(steps),
    rule=_rule(partitions, kappa * rounds, step_length, begin_step),
    monotone=False,
    initial_masks=initial_masks,
    statistics="zero_inactive",
    needs_inner=needs_inner,
    packed_masks=packed_masks,
  )
  tx = engine.transformation(method, inner)
  init = tx.init

  def init_fn(params):
    plan = plan_lib.make_plan(params, selection_, name)
    partition_units([u.name for u in plan.units], partitions, name)  # bad partitions fail here
    return init(params)

  init_fn.jaxprune_method = method  # type: ignore[attr-defined]
  return optax.GradientTransformationExtraArgs(init_fn, tx.update)
