"""The pruning transformation every jaxprune pruner is built on."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune import allocation as allocation_lib
from jaxprune import leaves as leaves_lib
from jaxprune import masks as masks_lib
from jaxprune import patterns as patterns_lib
from jaxprune import schedules as schedules_lib
from jaxprune import selection
from jaxprune.scores import ScoreFn

__all__ = ["PruningState", "pruning", "check_sparsity"]


class PruningState(NamedTuple):
  """State of a pruning transformation.

  Attributes:
    count: number of updates so far (int32 scalar).
    masks: a tree shaped like the params: a boolean mask (``True`` = kept) or a
      `jaxprune.masks.PackedMask` for each pruned leaf, ``None`` for the others.
    inner_state: the wrapped optimizer's state with ``inner=``, else ``optax.EmptyState()``.
  """

  count: jax.Array
  masks: Any
  inner_state: Any


def check_sparsity(value: Any, what: str) -> None:
  """Raises ``ValueError`` unless a concrete ``value`` is a number in ``[0, 1)``.

  Traced values (inside ``jit`` or ``inject_hyperparams``' update) cannot be checked and pass.
  """
  if isinstance(value, jax.core.Tracer):
    return
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise TypeError(f"{what} must be a number in [0, 1), got {value!r}.") from None
  if isinstance(value, bool) or not (0.0 <= number < 1.0):  # NaN fails every comparison.
    raise ValueError(f"{what} must be in [0, 1), got {value!r}.")


def _num_pruned(sparsity: Any, size: int) -> Any:
  """``round(sparsity * size)``: exact for Python numbers, float32 for arrays."""
  if isinstance(sparsity, (int, float)):
    return round(sparsity * size)
  return jnp.round(jnp.asarray(sparsity, jnp.float32) * size).astype(jnp.int32)


class _Leaf(NamedTuple):
  index: int  # position in jax.tree.leaves(params)
  name: str
  shape: tuple[int, ...]
  override: Any  # per-leaf sparsity from `overrides`, or None


def _plan(params: Any, *, owner: str, prune: leaves_lib.Selector, pattern: patterns_lib.Pattern,
          overrides: Mapping[str, Any]) -> list[_Leaf]:
  """The pruned leaves of ``params``, validated."""
  if params is None:
    raise ValueError(f"{owner}: params must be given to update (tx.update(updates, state, params)).")
  named = leaves_lib.named_leaves(params)
  flags = leaves_lib.prunable_paths(params, prune, owner=owner)
  pruned = [(i, name, tuple(jnp.shape(leaf))) for i, ((name, leaf), f) in enumerate(zip(named, flags))
            if f]
  matched_by = {}
  for pattern_str in overrides:
    hits = [name for _, name, _ in pruned if re.fullmatch(pattern_str, name)]
    if not hits:
      raise ValueError(f"{owner}: override pattern {pattern_str!r} matches no pruned leaf; pruned leaves "
                       f"are {[name for _, name, _ in pruned]}.")
    for name in hits:
      if name in matched_by:
        raise ValueError(f"{owner}: leaf {name!r} is matched by two override patterns, "
                         f"{matched_by[name]!r} and {pattern_str!r}.")
      matched_by[name] = pattern_str
  plan = []
  for index, name, shape in pruned:
    try:
      pattern.validate(name, shape)
    except ValueError as e:
      raise ValueError(f"{owner}: {e}") from None
    override = overrides[matched_by[name]] if name in matched_by else None
    if override is not None:
      check_sparsity(override, f"{owner}: override sparsity for leaf {name!r}")
    plan.append(_Leaf(index, name, shape, override))
  return plan


class _Engine(NamedTuple):
  """What every mask-keeping transformation shares: the validated plan and the mask computation."""

  plan_for: Callable[[Any], list[_Leaf]]
  init_masks: Callable[[Any], Any]  # params -> tree of stored all-True masks
  compute_masks: Callable[..., list[jax.Array]]  # (plan, grads, params, count, old) -> masks
  store: Callable[[jax.Array], Any]
  schedule: schedules_lib.Schedule


def _mask_grads(plan: list[_Leaf], masks: Mapping[int, jax.Array], grads: list[Any]) -> list[Any]:
  """Zeroes the gradients of pruned entries (before a wrapped optimizer sees them)."""
  grads = list(grads)
  for leaf in plan:
    g = grads[leaf.index]
    grads[leaf.index] = jnp.where(masks[leaf.index], g, jnp.zeros((), g.dtype))
  return grads


def _project(plan: list[_Leaf], masks: Mapping[int, jax.Array], updates: list[Any],
             params: list[Any]) -> list[Any]:
  """Updates that leave every pruned entry exactly 0 after ``optax.apply_updates``."""
  updates = list(updates)
  for leaf in plan:
    u, p = updates[leaf.index], params[leaf.index]
    updates[leaf.index] = jnp.where(masks[leaf.index], u, -p.astype(u.dtype))
  return updates


def _engine(score_fn: ScoreFn, sparsity: Any, *, distribution: Any, pattern: Any, schedule: Any,
            prune: leaves_lib.Selector, overrides: Any, packed_masks: bool, name: str) -> _Engine:
  """Validates a pruner's arguments and builds its mask machinery."""
  pattern = patterns_lib.unstructured() if pattern is None else pattern
  schedule = schedules_lib.one_shot(0) if schedule is None else schedule
  overrides = dict(overrides or {})
  if not isinstance(pattern, (patterns_lib.Unstructured, patterns_lib.Block, patterns_lib.Channel,
                              patterns_lib.NM)):
    raise TypeError(f"{name}: pattern must come from jaxprune.patterns, got {pattern!r}.")
  if not isinstance(schedule, schedules_lib.Schedule):
    raise TypeError(f"{name}: schedule must be a jaxprune.schedules.Schedule, got {schedule!r}.")
  is_nm = isinstance(pattern, patterns_lib.NM)
  if is_nm:
    if sparsity is not None or overrides:
      raise ValueError(f"{name}: an N:M pattern fixes the sparsity at 1 - n/m = "
                       f"{1 - pattern.n / pattern.m}; pass sparsity=None and no overrides, got "
                       f"sparsity={sparsity!r}, overrides={overrides!r}.")
    if distribution != "uniform":
      raise ValueError(f"{name}: an N:M pattern selects within groups; distribution must be "
                       f"'uniform', got {distribution!r}.")
  else:
    if sparsity is None:
      raise ValueError(f"{name}: sparsity is required (only N:M patterns fix it themselves).")
    check_sparsity(sparsity, f"{name}: sparsity")
  allocate = allocation_lib.get_allocation(distribution)
  if not isinstance(packed_masks, bool):
    raise TypeError(f"{name}: packed_masks must be a bool, got {packed_masks!r}.")

  def plan_for(params):
    return _plan(params, owner=name, prune=prune, pattern=pattern, overrides=overrides)

  def store(mask):
    return masks_lib.pack(mask) if packed_masks else mask

  def init_masks(params):
    plan = plan_for(params)
    leaves, treedef = jax.tree.flatten(leaves_lib.unwrap_variables(params))
    masks = [None] * len(leaves)
    for leaf in plan:
      masks[leaf.index] = store(jnp.ones_like(leaves[leaf.index], dtype=bool))
    return jax.tree.unflatten(treedef, masks)

  def leaf_targets(plan):
    """Per-leaf final sparsities; for global, None for the leaves that share the threshold."""
    free = [leaf for leaf in plan if leaf.override is None]
    if allocate is None:
      shared = [None] * len(free)
    else:
      shared = allocate(sparsity, [leaf.shape for leaf in free])
    shared = iter(shared)
    return [leaf.override if leaf.override is not None else next(shared) for leaf in plan]

  def compute_masks(plan, grads, params, count, old):
    scores = jax.tree.structure(params).flatten_up_to(score_fn(params, grads, count))
    targets = leaf_targets(plan)
    new = {}
    # One batched selection: each layer-wise leaf is its own segment; the leaves sharing the global
    # threshold form segment 0.
    groups, segments, keeps, selected = [], [], [], []
    shared = [leaf for leaf, target in zip(plan, targets) if target is None and not is_nm]
    if shared:
      num_groups = sum(pattern.num_groups(leaf.shape) for leaf in shared)
      keeps.append(num_groups - _num_pruned(schedule.sparsity(count, sparsity), num_groups))
    for leaf, target in zip(plan, targets):
      score = scores[leaf.index].astype(jnp.float32)
      score = jnp.where(old[leaf.index], score, -jnp.inf)  # pruned weights stay pruned
      if is_nm:
        new[leaf.index] = pattern.mask(score)
        continue
      groups.append(pattern.group_scores(score))
      selected.append(leaf)
      if target is None:
        segments.append(0)
      else:
        segments.append(len(keeps))
        num_groups = pattern.num_groups(leaf.shape)
        keeps.append(num_groups - _num_pruned(schedule.sparsity(count, target), num_groups))
    for leaf, group_mask in zip(selected, selection.top_k_masks(groups, keeps, segments=segments)):
      new[leaf.index] = pattern.expand(group_mask, leaf.shape)
    return [new[leaf.index] for leaf in plan]

  return _Engine(plan_for, init_masks, compute_masks, store, schedule)


def pruning(
    score_fn: ScoreFn,
    sparsity: float | jax.Array | None = None,
    *,
    distribution: str | allocation_lib.Allocation = "uniform",
    pattern: patterns_lib.Pattern | None = None,
    schedule: schedules_lib.Schedule | None = None,
    prune: leaves_lib.Selector = None,
    overrides: Mapping[str, float] | None = None,
    packed_masks: bool = False,
    inner: optax.GradientTransformation | None = None,
    name: str = "pruning",
) -> optax.GradientTransformationExtraArgs:
  """A pruning transformation: keeps masks in its state and zeroes the pruned weights at every step.

  At each update the masks are first recomputed if ``schedule`` says so (from ``score_fn``, keeping
  the highest scores; weights pruned earlier stay pruned), then the updates are projected so that
  ``optax.apply_updates`` leaves every pruned weight exactly ``0``: the update of a pruned weight is
  ``-w``. Used as the last link of ``optax.chain(optimizer, pruner)`` it sees the optimizer's updates;
  with ``inner=optimizer`` it sees raw gradients (scores such as saliency use them), masks them before
  the optimizer so that its statistics of pruned weights stay zero, and projects the optimizer's output.

  Args:
    score_fn: ``(params, grads, count) -> scores``, see `jaxprune.scores`.
    sparsity: target fraction of pruned weights, in ``[0, 1)``. Must be ``None`` for N:M patterns,
      which fix it at ``1 - n / m``.
    distribution: ``"uniform"`` (each leaf pruned to ``sparsity``), ``"erk"``, ``"er"``, ``"global"``
      (one threshold over all pruned leaves) or a function ``(sparsity, shapes) -> sparsities``.
    pattern: what is pruned together, see `jaxprune.patterns`; unstructured by default.
    schedule: when masks are recomputed, see `jaxprune.schedules`; by default once, at the first
      update (``one_shot(0)``).
    prune: which leaves are pruned: ``None`` (floating-point leaves with ``ndim >= 2``), a regular
      expression or list of them matched in full against ``/``-joined leaf paths, or a predicate
      ``(path, leaf) -> bool``.
    overrides: ``{path regex: sparsity}`` for leaves pruned to their own sparsity (left out of the
      distribution; they follow the schedule like the others).
    packed_masks: store masks as bits (8x less memory); `jaxprune.get_masks` still returns booleans.
    inner: an optimizer to wrap. Without it the pruner must be the last link of a chain.
    name: the name used in error messages.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a `PruningState`.

  Raises:
    ValueError: for a sparsity outside ``[0, 1)`` or NaN, an unknown distribution, an override
      pattern matching no pruned leaf, a pattern that does not fit a leaf (N:M group not dividing the
      axis, block larger than the leaf), or ``params=None`` in update.
    TypeError: for a non-floating-point leaf selected for pruning.
  """
  engine = _engine(score_fn, sparsity, distribution=distribution, pattern=pattern, schedule=schedule,
                   prune=prune, overrides=overrides, packed_masks=packed_masks, name=name)
  plan_for, compute_masks, store = engine.plan_for, engine.compute_masks, engine.store
  if inner is not None:
    inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    inner_state = optax.EmptyState() if inner is None else inner.init(params)
    return PruningState(count=jnp.zeros([], jnp.int32), masks=engine.init_masks(params),
                        inner_state=inner_state)

  def update_fn(updates, state, params=None, **extra_args):
    plan = plan_for(params)
    treedef = jax.tree.structure(params)
    params_leaves = treedef.flatten_up_to(params)
    stored = treedef.flatten_up_to(state.masks)

    def recompute():
      # Unpacking the current masks is only needed here, not on steps that keep them.
      old = {leaf.index: masks_lib.unpack(stored[leaf.index]) for leaf in plan}
      return [store(m) for m in compute_masks(plan, updates, params, state.count, old)]

    kept = [stored[leaf.index] for leaf in plan]
    new_stored = selection.cond(engine.schedule.is_update_step(state.count), recompute, lambda: kept)
    masks = {}
    for leaf, m in zip(plan, new_stored):
      stored[leaf.index] = m
      masks[leaf.index] = masks_lib.unpack(m)

    inner_state = state.inner_state
    if inner is not None:
      grads = _mask_grads(plan, masks, treedef.flatten_up_to(updates))
      updates, inner_state = inner.update(jax.tree.unflatten(treedef, grads), inner_state, params,
                                          **extra_args)
    out = _project(plan, masks, treedef.flatten_up_to(updates), params_leaves)
    new_state = PruningState(count=optax.safe_increment(state.count),
                             masks=jax.tree.unflatten(treedef, stored), inner_state=inner_state)
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
