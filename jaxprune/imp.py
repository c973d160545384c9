"""Iterative magnitude pruning (IMP): cycles of training and pruning, with rewinding.

A run is a sequence of cycles. Cycle 0 trains the dense network; at the first update of each later
cycle the pruner removes a fraction of the weights that are still kept (by magnitude), then either
keeps the trained weights (fine-tuning, or learning-rate rewinding when the optimizer's schedule
restarts) or rewinds the kept weights to their values at initialisation or at an early step ``k``
(lottery tickets). The optimizer's statistics can be reset at the same moment.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import leaves as leaves_lib
from jaxprune import masks as masks_lib
from jaxprune import patterns as patterns_lib
from jaxprune import schedules as schedules_lib
from jaxprune import scores as scores_lib
from jaxprune import selection
from jaxprune.pruning import _engine, _mask_grads, _num_pruned, _project, check_sparsity
from jaxprune.schedules import _check_int

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
    cycle_sparsity: float32 ``[cycles + 1]``: the planned sparsity of the pruned leaves in each cycle.
    inner_state: the wrapped optimizer's state with ``inner=``, else ``optax.EmptyState()``.
  """

  count: jax.Array
  cycle: jax.Array
  masks: Any
  rewind_params: Any
  norm_drop: jax.Array
  pruned_fraction: jax.Array
  cycle_ends: jax.Array
  cycle_sparsity: jax.Array
  inner_state: Any


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
      raise ValueError(f"imp: cycle_steps has {len(cycle_steps)} entries; a run of cycles={cycles} "
                       f"has {cycles + 1} (the dense cycle, then one per prune).")
    return [_check_int(f"cycle_steps[{i}]", n, 1, "imp") for i, n in enumerate(cycle_steps)]
  return [_check_int("cycle_steps", cycle_steps, 1, "imp")] * (cycles + 1)


def _cycle_schedule(prune_steps: np.ndarray) -> schedules_lib.Schedule:
  """Prunes at each of ``prune_steps``; after ``c`` prunes a leaf of per-cycle rate ``r`` has
  sparsity ``1 - (1 - r) ** c``."""
  cycles = len(prune_steps)

  def is_update_step(count):
    return jnp.any(count == jnp.asarray(prune_steps, jnp.int32))

  def sparsity(count, rate):
    done = jnp.sum(count >= jnp.asarray(prune_steps, jnp.int32))
    if isinstance(rate, (int, float)):  # exact in float64, then one rounding to float32
      table = 1.0 - (1.0 - float(rate)) ** np.arange(cycles + 1, dtype=np.float64)
      return jnp.asarray(table, jnp.float32)[done]
    return 1.0 - (1.0 - jnp.asarray(rate, jnp.float32)) ** done.astype(jnp.float32)

  return schedules_lib.Schedule(is_update_step=is_update_step, sparsity=sparsity)


def get_cycle(opt_state: Any) -> CycleInfo:
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
    raise ValueError(f"get_cycle: the optimizer state must contain exactly one imp state, found "
                     f"{len(states)}.")
  state = jax.tree.map(leaves_lib.unwrap_variable, states[0], is_leaf=leaves_lib.is_variable)
  ends = state.cycle_ends
  starts = jnp.concatenate([jnp.zeros([1], ends.dtype), ends[:-1]])
  cycle = state.cycle
  return CycleInfo(cycle=cycle, step=state.count - starts[cycle], length=ends[cycle] - starts[cycle],
                   at_end=state.count == ends[cycle], sparsity=state.cycle_sparsity[cycle],
                   norm_drop=state.norm_drop, pruned_fraction=state.pruned_fraction)


def imp(
    sparsity: float | jax.Array | None = None,
    *,
    cycles: int,
    cycle_steps: int | Sequence[int],
    rate: float | jax.Array | None = None,
    distribution: str = "global",
    leaf_rates: Mapping[str, float] | None = None,
    rewind: int | str | None = None,
    reset_optimizer: bool = False,
    reinit: Callable[[jax.Array], Any] | None = None,
    random_masks: bool = False,
    seed: int = 0,
    score_fn: scores_lib.ScoreFn | None = None,
    pattern: patterns_lib.Pattern | None = None,
    prune: leaves_lib.Selector = None,
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
    rate: the fraction of the remaining weights pruned at each prune (0.2 for Frankle & Carbin).
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
    score_fn: ``(params, grads, count) -> scores``; magnitude by default.
    pattern: what is pruned together (unstructured, block or channel, see `jaxprune.patterns`).
    prune: which leaves are pruned, as in `jaxprune.pruning`.
    packed_masks: store masks as bits.
    inner: an optimizer to wrap; without it `imp` must be the last link of a chain. Its update
      receives the extra arguments ``imp_count``, ``imp_norm_drop`` and ``imp_pruned_fraction``
      (read by `jaxprune.retraining.allr`; transformations that do not use them ignore them).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an `IMPState`; `get_cycle` reads
    the cycle index and its sparsity from it.

  Raises:
    ValueError: for ``cycles < 1``, a cycle length below 1, a ``cycle_steps`` list of the wrong
      length, both or neither of ``sparsity`` and ``rate``, a rate or sparsity outside ``[0, 1)``, a
      rewind step outside the first cycle, ``reset_optimizer`` without ``inner``, ``reinit`` without
      ``rewind``, an unknown distribution, N:M patterns, or ``random_masks`` with a structured pattern.
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
    <https://arxiv.org/abs/2003.02389>`_, 2020
  """
  cycles = _check_int("cycles", cycles, 1, "imp")
  lengths = _lengths(cycles, cycle_steps)
  ends = np.cumsum(lengths)
  prune_steps = ends[:-1]  # the first update of cycles 1..n
  if (sparsity is None) == (rate is None):
    raise ValueError(f"imp: give exactly one of sparsity (reached in the last cycle) and rate (per "
                     f"cycle), got sparsity={sparsity!r}, rate={rate!r}.")
  if sparsity is not None:
    check_sparsity(sparsity, "imp: sparsity")
    if isinstance(sparsity, (int, float)):
      rate = 1.0 - (1.0 - float(sparsity)) ** (1.0 / cycles)
    else:
      rate = 1.0 - (1.0 - jnp.asarray(sparsity, jnp.float32)) ** (1.0 / cycles)
  else:
    check_sparsity(rate, "imp: rate")
  if distribution not in ("global", "uniform"):
    raise ValueError(f"imp: distribution must be 'global' or 'uniform', got {distribution!r}.")
  pattern = patterns_lib.unstructured() if pattern is None else pattern
  if isinstance(pattern, patterns_lib.NM):
    raise ValueError("imp: N:M patterns fix the sparsity; use magnitude_pruning with n_m instead.")
  if rewind == "init":
    rewind = 0
  if rewind is not None:
    if isinstance(rewind, str):
      raise ValueError(f"imp: rewind must be None, 'init' or an update count, got {rewind!r}.")
    rewind = _check_int("rewind", rewind, 0, "imp")
    if rewind >= lengths[0]:
      raise ValueError(f"imp: rewind step {rewind} is beyond the first cycle, which ends after "
                       f"{lengths[0]} updates (cycle_steps[0]); the rewind point must be stored "
                       f"before the first prune.")
  for flag_name, flag in (("reset_optimizer", reset_optimizer), ("random_masks", random_masks),
                          ("packed_masks", packed_masks)):
    if not isinstance(flag, bool):
      raise TypeError(f"imp: {flag_name} must be a bool, got {flag!r}.")
  if reset_optimizer and inner is None:
    raise ValueError("imp: reset_optimizer=True needs the inner= form: in optax.chain the pruner "
                     "cannot reach the optimizer's statistics. Use imp(..., inner=optimizer).")
  if reinit is not None:
    if not callable(reinit):
      raise TypeError(f"imp: reinit must be a function key -> params, got {reinit!r}.")
    if rewind is None:
      raise ValueError("imp: reinit replaces the weights that a prune rewinds to; it needs rewind "
                       "('init' or a step), got rewind=None.")
  if random_masks and not isinstance(pattern, patterns_lib.Unstructured):
    raise ValueError(f"imp: random_masks needs the unstructured pattern, got {pattern!r}.")
  random_scores = scores_lib.random(seed)  # also validates the seed
  engine = _engine(
      scores_lib.magnitude if score_fn is None else score_fn, rate,
      distribution=distribution, pattern=pattern, schedule=_cycle_schedule(prune_steps),
      prune=prune, overrides=leaf_rates, packed_masks=packed_masks, name="imp")
  stores_rewind = rewind is not None and reinit is None
  if inner is not None:
    inner = optax.with_extra_args_support(inner)

  def planned_sparsity(plan) -> jax.Array:
    """Sparsity of the pruned leaves in each cycle, from the counts the selection keeps."""
    total = sum(math.prod(leaf.shape) for leaf in plan)
    shared = [leaf for leaf in plan if leaf.override is None and distribution == "global"]
    shared_groups = sum(pattern.num_groups(leaf.shape) for leaf in shared)
    shared_size = sum(math.prod(leaf.shape) for leaf in shared)
    rows = [jnp.zeros([], jnp.float32)]
    for step in prune_steps:
      count = jnp.asarray(step, jnp.int32)
      zeros = jnp.zeros([], jnp.float32)
      if shared:
        pruned = _num_pruned(engine.schedule.sparsity(count, rate), shared_groups)
        zeros += jnp.asarray(pruned, jnp.float32) * (shared_size / shared_groups)
      for leaf in plan:
        if leaf in shared:
          continue
        groups = pattern.num_groups(leaf.shape)
        leaf_rate = rate if leaf.override is None else leaf.override
        pruned = _num_pruned(engine.schedule.sparsity(count, leaf_rate), groups)
        zeros += jnp.asarray(pruned, jnp.float32) * (math.prod(leaf.shape) / groups)
      rows.append(zeros / max(total, 1))
    return jnp.stack(rows)

  def init_fn(params):
    plan = engine.plan_for(params)
    rewind_params = None
    if stores_rewind:
      inexact = lambda p: jnp.issubdtype(jnp.asarray(p).dtype, jnp.inexact)
      rewind_params = jax.tree.map(lambda p: jnp.copy(p) if inexact(p) else None,
                                   leaves_lib.unwrap_variables(params))
    return IMPState(
        count=jnp.zeros([], jnp.int32), cycle=jnp.zeros([], jnp.int32),
        masks=engine.init_masks(params), rewind_params=rewind_params,
        norm_drop=jnp.zeros([], jnp.float32), pruned_fraction=jnp.zeros([], jnp.float32),
        cycle_ends=jnp.asarray(ends, jnp.int32), cycle_sparsity=planned_sparsity(plan),
        inner_state=optax.EmptyState() if inner is None else inner.init(params))

  def random_like(plan, new, old, params, count):
    """Masks keeping, per leaf, as many entries as ``new`` does, at random among ``old``'s."""
    drawn = jax.tree.structure(params).flatten_up_to(random_scores(params, None, count))
    scores = [jnp.where(old[leaf.index], drawn[leaf.index], -jnp.inf) for leaf in plan]
    keeps = jnp.stack([jnp.sum(m, dtype=jnp.int32) for m in new])
    return selection.top_k_masks(scores, keeps, segments=list(range(len(plan))))

  def update_fn(updates, state, params=None, **extra_args):
    plan = engine.plan_for(params)
    treedef = jax.tree.structure(params)
    params_leaves = treedef.flatten_up_to(params)
    stored = treedef.flatten_up_to(state.masks)
    count = state.count
    prune_now = engine.schedule.is_update_step(count)

    def prune_step():
      old = {leaf.index: masks_lib.unpack(stored[leaf.index]) for leaf in plan}
      new = engine.compute_masks(plan, updates, params, count, old)
      if random_masks:
        new = random_like(plan, new, old, params, count)
      square = lambda x: jnp.sum(jnp.square(x.astype(jnp.float32)))
      before = sum(square(jnp.where(old[leaf.index], params_leaves[leaf.index], 0)) for leaf in plan)
      after = sum(square(jnp.where(m, params_leaves[leaf.index], 0)) for leaf, m in zip(plan, new))
      drop = jnp.where(before > 0, jnp.sqrt(jnp.abs(before - after) / jnp.maximum(before, 1e-30)), 0.0)
      kept_before = sum(jnp.sum(old[leaf.index], dtype=jnp.float32) for leaf in plan)
      kept_after = sum(jnp.sum(m, dtype=jnp.float32) for m in new)
      fraction = jnp.where(kept_before > 0, 1 - kept_after / jnp.maximum(kept_before, 1.0), 0.0)
      return [engine.store(m) for m in new], drop.astype(jnp.float32), fraction.astype(jnp.float32)

    kept = [stored[leaf.index] for leaf in plan]
    new_stored, norm_drop, pruned_fraction = selection.cond(
        prune_now, prune_step, lambda: (kept, state.norm_drop, state.pruned_fraction))
    masks = {}
    for leaf, m in zip(plan, new_stored):
      stored[leaf.index] = m
      masks[leaf.index] = masks_lib.unpack(m)
    cycle = state.cycle + prune_now.astype(jnp.int32)

    rewind_params = state.rewind_params
    if stores_rewind and rewind > 0:
      copy = lambda: [None if r is None else p.astype(r.dtype) for p, r in
                      zip(params_leaves, treedef.flatten_up_to(rewind_params))]
      rewind_params = jax.tree.unflatten(treedef, selection.cond(
          count == rewind, copy, lambda: treedef.flatten_up_to(state.rewind_params)))

    inner_state = state.inner_state
    if reset_optimizer:
      # The prune step re-initialises the optimizer and feeds it no gradient, so the next step is
      # its first. Its params-shaped statistics are reset *before* its update (a zero gradient keeps
      # them at their initial zeros): XLA fuses a select there, while one on the state the update
      # returns copies every moment buffer. Its other leaves (step counts, injected hyperparameters)
      # are reset after the update (see below).
      fresh = inner.init(params)
      inner_state = jax.tree.map(lambda f, s: jnp.where(prune_now, f, s), fresh, inner_state)
    if inner is not None:
      grads = treedef.flatten_up_to(updates)
      if reset_optimizer:
        grads = [jnp.where(prune_now, jnp.zeros((), g.dtype), g) for g in grads]
      grads = _mask_grads(plan, masks, grads)
      # The prune statistics reach schedules that read them (`jaxprune.retraining.allr`).
      updates, inner_state = inner.update(
          jax.tree.unflatten(treedef, grads), inner_state, params, **extra_args, imp_count=count,
          imp_norm_drop=norm_drop, imp_pruned_fraction=pruned_fraction)
    out = treedef.flatten_up_to(updates)

    if rewind is not None:
      def rewound(targets):
        return [u if t is None or not jnp.issubdtype(t.dtype, jnp.inexact)
                else (t.astype(u.dtype) - p.astype(u.dtype))
                for u, p, t in zip(out, params_leaves, targets)]

      if reinit is None:
        # An elementwise select, not a cond: XLA fuses it with the projection and the optimizer's
        # arithmetic, so steps between prunes only read the stored weights once more. (A cond
        # returning the updates blocks that fusion and cost ~20% of the step on a 10M MLP.)
        moved = rewound(treedef.flatten_up_to(rewind_params))
        out = [jnp.where(prune_now, m, u) for m, u in zip(moved, out)]
      else:
        def fresh():
          drawn = leaves_lib.unwrap_variables(reinit(jax.random.fold_in(jax.random.key(seed), cycle)))
          expected = jax.tree.structure(leaves_lib.unwrap_variables(params))
          if jax.tree.structure(drawn) != expected:
            raise ValueError(f"imp: reinit returned a tree of structure {jax.tree.structure(drawn)}, "
                             f"expected the params' structure {expected}.")
          return rewound(expected.flatten_up_to(drawn))
        out = selection.cond(prune_now, fresh, lambda: out)  # drawing is too costly for every step
    out = _project(plan, masks, out, params_leaves)

    if reset_optimizer:
      is_param = optax.tree_utils.tree_map_params(inner, lambda _: True, fresh,
                                                  transform_non_params=lambda _: False)
      inner_state = jax.tree.map(lambda f, s, p: s if p else jnp.where(prune_now, f, s), fresh,
                                 inner_state, is_param)

    new_state = IMPState(
        count=optax.safe_increment(count), cycle=cycle, masks=jax.tree.unflatten(treedef, stored),
        rewind_params=rewind_params, norm_drop=norm_drop, pruned_fraction=pruned_fraction,
        cycle_ends=state.cycle_ends, cycle_sparsity=state.cycle_sparsity, inner_state=inner_state)
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
