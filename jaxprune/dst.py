"""Dynamic sparse training: masks that drop and regrow weights during training.

The machinery shared by `jaxprune.set_sparse`, `jaxprune.rigl` and `jaxprune.granet`. Every
``frequency`` updates between ``begin_step`` and ``end_step`` each pruned leaf

1. drops its smallest-magnitude active weights, keeping ``A_t - k`` of them, where ``A_t`` is the
   leaf's active count after the update (constant for SET and RigL, falling with the gradual
   schedule for GraNet) and ``k = round(f(t) * A_t)`` with ``f`` the drop-fraction schedule;
2. grows ``k`` weights among those inactive after the drop: the largest gradient magnitudes (RigL,
   GraNet) or uniformly at random (SET). ``k`` is capped at ``N - A_t``, the leaf's inactive count
   after the update, so a dense or nearly dense leaf (GraNet's start) is not partly reset.

The initial masks (random with the starting sparsity of each leaf, or dense) are installed at the
first update. A grown weight is exactly zero and so are its statistics in the wrapped optimizer (for any optax
optimizer: the parts of its state shaped like the params are found with
``optax.tree_utils.tree_map_params``), and on the update step itself it receives no update; it
trains from the next step on. Dropped weights become exactly zero and their statistics are zeroed
too. Steps between updates only mask the gradients and project the updates, like every pruner.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxprune import allocation as allocation_lib
from jaxprune import leaves as leaves_lib
from jaxprune import masks as masks_lib
from jaxprune import patterns as patterns_lib
from jaxprune import selection
from jaxprune.pruning import (
  PruningState,
  _mask_grads,
  _num_pruned,
  _plan,
  _project,
  check_sparsity,
)
from jaxprune.schedules import _check_int

__all__ = ["constant_drop_fraction", "cosine_drop_fraction", "dynamic_sparse"]

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


def _concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_drop_fraction(owner: str, value: Any) -> None:
  """Raises ``ValueError`` unless a concrete ``value`` is a number in ``[0, 1]`` (tracers pass)."""
  if isinstance(value, jax.core.Tracer):
    return
  try:
    number = float(value)
  except (TypeError, ValueError):
    number = None
  if isinstance(value, bool) or number is None or not 0 <= number <= 1:
    raise ValueError(f"{owner}: drop_fraction must be a number in [0, 1], got {value!r}.")


def dynamic_sparse(
    sparsity: float,
    *,
    grow: str,
    drop_fraction: DropFraction,
    frequency: int,
    begin_step: int,
    end_step: int,
    initial_sparsity: float | None = None,
    sparsity_power: float = 3.0,
    distribution: str | allocation_lib.Allocation = "erk",
    seed: int = 0,
    prune: leaves_lib.Selector = None,
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
    prune: which leaves are sparse, as in `jaxprune.pruning`.
    packed_masks: store masks as bits.
    inner: the optimizer to wrap (required: its statistics of grown weights are reset).
    name: the name used in error messages.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a `jaxprune.PruningState`.
  """
  if inner is None:
    raise ValueError(f"{name}: needs the inner= form (inner=optimizer): growth reads raw gradients and "
                     f"resets the optimizer's statistics of grown weights, which a chained pruner "
                     f"cannot reach.")
  check_sparsity(sparsity, f"{name}: sparsity")
  if initial_sparsity is not None:
    check_sparsity(initial_sparsity, f"{name}: initial_sparsity")
    if _concrete(initial_sparsity) and _concrete(sparsity) and initial_sparsity > sparsity:
      raise ValueError(f"{name}: initial_sparsity ({initial_sparsity}) is above sparsity ({sparsity}).")
  if grow not in ("gradient", "random"):
    raise ValueError(f"{name}: grow must be 'gradient' or 'random', got {grow!r}.")
  frequency = _check_int("frequency", frequency, 1, name)
  begin_step = _check_int("begin_step", begin_step, 0, name)
  end_step = _check_int("end_step", end_step, 1, name)
  if begin_step >= end_step:
    raise ValueError(f"{name}: begin_step ({begin_step}) must be before end_step ({end_step}).")
  if distribution == "global":
    raise ValueError(f"{name}: drop and growth counts are per leaf; distribution must allocate a "
                     f"sparsity to each leaf ('erk', 'er', 'uniform' or a function), got 'global'.")
  allocate = allocation_lib.get_allocation(distribution)
  if not isinstance(packed_masks, bool):
    raise TypeError(f"{name}: packed_masks must be a bool, got {packed_masks!r}.")
  inner = optax.with_extra_args_support(inner)
  key = jax.random.key(seed)
  span = end_step - begin_step

  def plan_for(params):
    return _plan(params, owner=name, prune=prune, pattern=patterns_lib.unstructured(), overrides={})

  def store(mask):
    return masks_lib.pack(mask) if packed_masks else mask

  def targets(plan):
    """(final, initial) per-leaf sparsities."""
    shapes = [leaf.shape for leaf in plan]
    final = allocate(sparsity, shapes)
    start = final if initial_sparsity is None else allocate(initial_sparsity, shapes)
    return final, start

  def active_count(plan, count):
    """Per-leaf active weights after the mask update at ``count`` (int32 [leaves])."""
    final, start = targets(plan)
    sizes = [math.prod(leaf.shape) for leaf in plan]
    if initial_sparsity is None:
      return jnp.stack([jnp.asarray(n - _num_pruned(s, n), jnp.int32) for s, n in zip(final, sizes)])
    progress = jnp.clip((jnp.asarray(count, jnp.float32) - begin_step) / span, 0.0, 1.0)
    remaining = (1.0 - progress) ** sparsity_power
    return jnp.stack([n - _num_pruned(s_f + (s_i - s_f) * remaining, n)
                      for s_f, s_i, n in zip(final, start, sizes)])

  def initial_masks(plan):
    """The masks of the first update: random with the starting sparsities, or all ones (dense)."""
    _, start = targets(plan)
    if all(isinstance(s, (int, float)) and s == 0 for s in start):  # a dense start
      return [jnp.ones(leaf.shape, bool) for leaf in plan]
    scores = [jax.random.uniform(jax.random.fold_in(key, i), leaf.shape) for i, leaf in enumerate(plan)]
    sizes = [math.prod(leaf.shape) for leaf in plan]
    keeps = jnp.stack([jnp.asarray(n - _num_pruned(s, n), jnp.int32) for s, n in zip(start, sizes)])
    return selection.top_k_masks(scores, keeps, segments=list(range(len(plan))))

  def init_fn(params):
    # All ones until the first update installs the initial masks, so that the masks in the state
    # always describe the params after the latest update (also inside optax.MultiSteps).
    plan = plan_for(params)
    leaves, treedef = jax.tree.flatten(leaves_lib.unwrap_variables(params))
    masks = [None] * len(leaves)
    for leaf in plan:
      masks[leaf.index] = store(jnp.ones(leaf.shape, bool))
    return PruningState(count=jnp.zeros([], jnp.int32), masks=jax.tree.unflatten(treedef, masks),
                        inner_state=inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(f"{name}: params must be given to update (tx.update(updates, state, params)).")
    plan = plan_for(params)
    treedef = jax.tree.structure(params)
    params_leaves = treedef.flatten_up_to(params)
    grads = treedef.flatten_up_to(updates)
    stored = treedef.flatten_up_to(state.masks)
    count = state.count
    current = selection.cond(count == 0, lambda: [store(m) for m in initial_masks(plan)],
                             lambda: [stored[leaf.index] for leaf in plan])
    for leaf, m in zip(plan, current):
      stored[leaf.index] = m
    is_update = ((count >= begin_step) & (count <= end_step)
                 & (((count - begin_step) % frequency == 0) | (count == end_step)))

    def mask_update():
      old = [masks_lib.unpack(stored[leaf.index]) for leaf in plan]
      active = active_count(plan, count)
      # k is at most the number of weights inactive after the update (N - A_t): a dense or nearly
      # dense leaf (GraNet's start) never has more of its weights reset than the schedule prunes.
      sizes = jnp.asarray([math.prod(leaf.shape) for leaf in plan], jnp.int32)
      grow_count = jnp.minimum(
          jnp.round(drop_fraction(count) * active.astype(jnp.float32)).astype(jnp.int32), sizes - active)
      drop_scores = [jnp.where(m, jnp.abs(params_leaves[leaf.index].astype(jnp.float32)), -jnp.inf)
                     for leaf, m in zip(plan, old)]
      segments = list(range(len(plan)))
      survivors = selection.top_k_masks(drop_scores, active - grow_count, segments=segments)
      if grow == "gradient":
        raw = [jnp.abs(grads[leaf.index].astype(jnp.float32)) for leaf in plan]
      else:
        draw = jax.random.fold_in(jax.random.fold_in(key, count), len(plan))
        raw = [jax.random.uniform(jax.random.fold_in(draw, i), leaf.shape) for i, leaf in enumerate(plan)]
      grow_scores = [jnp.where(s, -jnp.inf, r) for s, r in zip(survivors, raw)]
      grown = selection.top_k_masks(grow_scores, grow_count, segments=segments)
      new = [s | g for s, g in zip(survivors, grown)]
      return [store(m) for m in new], survivors

    def no_update():
      return ([stored[leaf.index] for leaf in plan],
              [masks_lib.unpack(stored[leaf.index]) for leaf in plan])

    new_stored, effective = selection.cond(is_update, mask_update, no_update)
    # On an update step only the survivors train; grown weights start from zero at the next step.
    masks = {leaf.index: m for leaf, m in zip(plan, effective)}
    for leaf, m in zip(plan, new_stored):
      stored[leaf.index] = m
    # Statistics are kept only for the weights that train at this step (the survivors, on an update
    # step): those of dropped and of grown weights (a dropped weight may regrow at once) are zeroed
    # before the optimizer runs, and with their gradients masked they stay zero through its update;
    # a grown weight thus starts from zero statistics at the next step. The select is applied to the
    # state *before* the update: XLA fuses it there, while a select (or a cond) on the state the
    # update returns costs copies of every moment buffer (5x the optimizer's time on a CPU).
    mask_tree = [jnp.ones((), bool)] * len(params_leaves)
    for leaf in plan:
      mask_tree[leaf.index] = masks[leaf.index]
    inner_state = optax.tree_utils.tree_map_params(
        inner, lambda x, m: jnp.where(m, x, jnp.zeros((), x.dtype)), state.inner_state,
        jax.tree.unflatten(treedef, mask_tree))
    masked = _mask_grads(plan, masks, grads)
    out, inner_state = inner.update(jax.tree.unflatten(treedef, masked), inner_state, params,
                                    **extra_args)
    out = _project(plan, masks, treedef.flatten_up_to(out), params_leaves)
    return jax.tree.unflatten(treedef, out), PruningState(
        count=optax.safe_increment(count), masks=jax.tree.unflatten(treedef, stored),
        inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
