"""`structured_pruning`: training with channel-group masks, on the engine; the network-slimming
penalty on norm scales.

A structured pruner removes whole channels of `jaxprune.structured.ChannelGroup` values (read off a
function by `jaxprune.structured.dependency_groups`, or written by hand): every position of a
removed channel, in every member, is exactly zero after each ``optax.apply_updates``, so that
`jaxprune.structured.slim` can then cut the arrays down (`keeps_from_state` gives it the keeps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import engine, rules
from jaxprune import leaves as leaves_lib
from jaxprune import masks as masks_lib
from jaxprune import plan as plan_lib
from jaxprune import schedules as schedules_lib
from jaxprune import scores as scores_lib
from jaxprune.checks import check_bool, check_int, is_traced, number
from jaxprune.imp import imp
from jaxprune.structured import importance as importance_lib
from jaxprune.structured.channel_group import ChannelGroup
from jaxprune.typing import OptState, PathSelector, Sparsity

__all__ = ["keeps_from_state", "network_slimming_penalty", "structured_pruning"]


def _rule(round_to: int, min_keep: int, normalize: str | None) -> rules.Rule:
  """Keeps `jaxprune.structured.importance.kept_count` channels per group (or, for groups without
  a target of their own, one threshold over their normalised scores); removed channels stay
  removed."""

  def fn(x: rules.RuleInputs) -> rules.MaskUpdate:
    units = x.plan.units
    ratios = [None if t is None else rules.scheduled(x, t, i) for t, i in zip(x.final, x.initial)]
    shared = [j for j, t in enumerate(x.final) if t is None]
    shared_ratio = rules.scheduled(x, x.sparsity, x.initial[shared[0]]) if shared else None
    masks = importance_lib.keep_channels(
      [rules.scores_of(x, j) for j in range(len(units))],
      ratios,
      shared_ratio,
      live=[u.kept(x.old) for u in units] if x.monotone else None,
      round_to=round_to,
      min_keep=min_keep,
      normalize=normalize,
    )
    return rules.MaskUpdate(x.plan.combine(masks))

  return rules.Rule("structured", fn)


def _check_cycles(cycles: Any, cycle_steps: Any, owner: str) -> int:
  cycles = check_int("cycles", cycles, 1, owner)
  if cycle_steps is None:
    raise ValueError(f"{owner}: cycles needs cycle_steps (the length of every cycle in updates).")
  if isinstance(cycle_steps, Sequence) and not isinstance(cycle_steps, str):
    if len(cycle_steps) != cycles + 1:
      raise ValueError(
        f"{owner}: cycle_steps has {len(cycle_steps)} entries; a run of cycles={cycles} has "
        f"{cycles + 1} (the dense cycle, then one per prune)."
      )
    for i, n in enumerate(cycle_steps):
      check_int(f"cycle_steps[{i}]", n, 1, owner)
  else:
    check_int("cycle_steps", cycle_steps, 1, owner)
  return cycles


def structured_pruning(
  sparsity: Sparsity,
  *,
  groups: Sequence[ChannelGroup],
  importance: str | scores_lib.Score = "l1",
  schedule: schedules_lib.Schedule | None = None,
  scope: str = "per_group",
  round_to: int = 1,
  min_keep: int = 1,
  normalize: str | None = "mean",
  overrides: Mapping[str, float] | None = None,
  cycles: int | None = None,
  cycle_steps: int | Sequence[int] | None = None,
  reinitialize: bool = False,
  packed_masks: bool = False,
  inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Structured pruning: removes whole channels of channel groups, one-shot, gradually or in cycles.

  On a mask update each group keeps its most important channels (``importance``) and every position
  of the others, in every member, is masked; after each ``optax.apply_updates`` those positions are
  exactly zero, and channels removed once stay removed. Three timings:

  - one-shot (the default): at the first update, to ``sparsity``;
  - gradual: ``schedule=jaxprune.schedules.polynomial(...)``, the fraction of removed channels
    rising to ``sparsity``;
  - iterative cycles (DropNet): ``cycles=n, cycle_steps=...``: cycle 0 trains the dense network and
    the first update of each later cycle removes a fraction ``1 - (1 - sparsity) ** (1 / n)`` of
    the channels still kept, so that ``sparsity`` is reached after ``n`` prunes. With
    ``reinitialize=True`` the kept weights are reset to their initial values at each prune (as
    `jaxprune.imp` with ``rewind="init"``, whose cycles these are: the state is a
    `jaxprune.IMPState` and `jaxprune.get_cycle` reads it).

  Counts are exact: with ``scope="per_group"`` a group of ``size`` channels at (scheduled) ratio
  ``s`` keeps `jaxprune.structured.importance.kept_count` channels, ``size - round(s * size)``
  rounded to a multiple of ``round_to`` where possible and never below ``min_keep``. With
  ``scope="global"`` one threshold runs over the normalised scores of all groups (see
  `jaxprune.structured.importance.select`). Only the groups' members carry masks.

  Under ``optax.inject_hyperparams`` (a traced ``sparsity``) pass
  ``static_args=("round_to", "min_keep", "cycles")``: it turns every int argument into an array.

  Args:
    sparsity: the fraction of channels removed, in ``[0, 1)``.
    groups: the `jaxprune.structured.ChannelGroup` values to prune.
    importance: ``"l1"``, ``"l2"`` (group magnitude, summed over members), ``"taylor"``,
      ``"norm_scale"``, ``"random"``, ``"mean_activation"`` (reads
      ``tx.update(..., activations={group name: array})`` at every update), or a
      `jaxprune.scores.Score` (see `jaxprune.structured.importance.as_score`, which also gives
      these with other options).
    schedule: when masks change, see `jaxprune.schedules`; ``one_shot(0)`` by default. Not with
      ``cycles``.
    scope: ``"per_group"`` or ``"global"``.
    round_to: kept channel counts are multiples of this where possible (8 suits accelerators).
    min_keep: the fewest channels a group keeps, at least 1.
    normalize: how each group's scores are normalised before a global threshold (see
      `jaxprune.structured.importance.normalized`); within a group it changes nothing.
    overrides: ``{group name regex: ratio}`` for groups pruned to their own ratio (per cycle, with
      ``cycles``).
    cycles: the number of prunes of an iterative run, or ``None``.
    cycle_steps: with ``cycles``, the length in updates of every cycle, or a sequence of
      ``cycles + 1`` lengths (the first is the dense training).
    reinitialize: with ``cycles``, reset the kept weights (and every other floating-point leaf) to
      their values at initialisation at each prune; the prune step's own gradient update is dropped.
    packed_masks: store masks as bits.
    inner: an optimizer to wrap. Without it the pruner must be the last link of a chain (Taylor
      importance then reads the chain's updates instead of the gradients).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a `jaxprune.PruningState` (a
    `jaxprune.IMPState` with ``cycles``); `keeps_from_state` reads the kept channels from it.

  Raises:
    ValueError: for a sparsity outside ``[0, 1)``, no groups, a bad scope, normalisation or
      importance name, ``round_to``/``min_keep`` below 1, ``schedule`` with ``cycles``, ``cycles``
      without ``cycle_steps`` (or with a list of the wrong length), ``reinitialize`` without
      ``cycles``, ``"norm_scale"`` with a group without a norm scale member; at ``init``, a member
      that names no leaf or a position in two groups.
    TypeError: for groups that are not `jaxprune.structured.ChannelGroup` values, a schedule that is
      not a `jaxprune.schedules.Schedule`, non-integer counts.

  Example:
    Remove half of the hidden features of a two-layer MLP, at the first update:

    >>> import jax, jax.numpy as jnp, numpy as np, optax
    >>> from jaxprune.structured import ChannelGroup, Member
    >>> from jaxprune.structured_pruning import keeps_from_state, structured_pruning
    >>> params = {'l0': {'kernel': jnp.array([[1.0, -2.0, 0.1, 3.0]]), 'bias': jnp.ones(4)},
    ...           'l1': {'kernel': jnp.ones((4, 2))}}
    >>> c = np.arange(4)[:, None]
    >>> hidden = ChannelGroup('l0/kernel:1', 4, (Member('l0/kernel', 1, c), Member('l0/bias', 0, c),
    ...                                          Member('l1/kernel', 0, c)))
    >>> tx = structured_pruning(0.5, groups=[hidden], inner=optax.sgd(0.0))
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> keeps_from_state(state, [hidden])[0]
    array([False,  True, False,  True])
    >>> params['l0']['bias']
    Array([0., 1., 0., 1.], dtype=float32)

  References:
    Li et al., `Pruning filters for efficient ConvNets <https://arxiv.org/abs/1608.08710>`_, 2017;
    Liu et al., `Learning efficient convolutional networks through network slimming
    <https://arxiv.org/abs/1708.06519>`_, 2017;
    Molchanov et al., `Importance estimation for neural network pruning
    <https://arxiv.org/abs/1906.10771>`_, 2019;
    Tan & Motani, `DropNet: reducing neural network complexity via iterative pruning
    <https://arxiv.org/abs/2207.06646>`_, ICML 2020
  """
  name = "structured_pruning"
  groups = importance_lib.check_groups(groups, name)
  if not groups:
    raise ValueError(f"{name}: give at least one channel group (groups=[...]).")
  importance_lib._check_selection(scope, round_to, min_keep, normalize, name)
  score = importance_lib.as_score(importance, owner=name)
  if isinstance(importance, str) and importance == "norm_scale":
    for group in groups:
      importance_lib.scale_members(group, owner=name)
  check_bool("reinitialize", reinitialize, name)
  check_bool("packed_masks", packed_masks, name)
  if schedule is not None and not isinstance(schedule, schedules_lib.Schedule):
    raise TypeError(f"{name}: schedule must be a jaxprune.schedules.Schedule, got {schedule!r}.")
  distribution = "uniform" if scope == "per_group" else "global"
  selection = plan_lib.make_selection(
    name,
    sparsity=sparsity,
    prune=[],
    distribution=distribution,
    overrides=overrides,
    groups=groups,
  )
  rule = _rule(round_to, min_keep, normalize)
  if cycles is None:
    if cycle_steps is not None or reinitialize:
      raise ValueError(
        f"{name}: cycle_steps and reinitialize belong to iterative runs; give cycles= too."
      )
    method = engine.Method(
      name,
      score,
      sparsity,
      selection,
      schedules_lib.one_shot(0) if schedule is None else schedule,
      rule=rule,
      packed_masks=packed_masks,
    )
    return engine.transformation(method, inner)
  if schedule is not None:
    raise ValueError(f"{name}: cycles set their own schedule; give schedule or cycles, not both.")
  cycles = _check_cycles(cycles, cycle_steps, name)
  assert cycle_steps is not None  # _check_cycles refuses None
  # IMP's cycles, rewinding and state, with this method's score and selection.
  base = imp(
    sparsity,
    cycles=cycles,
    cycle_steps=cycle_steps,
    distribution=distribution,
    rewind="init" if reinitialize else None,
    prune=[],
    overrides=overrides,
    groups=groups,
    packed_masks=packed_masks,
  )
  method = engine.method_of(base)._replace(name=name, score=score, rule=rule)
  return engine.transformation(method, inner)


def keeps_from_state(opt_state: OptState, groups: Sequence[ChannelGroup]) -> list[np.ndarray]:
  """The kept channels of each group, read from the masks of a pruner's state (for ``slim``).

  Channel ``c`` is kept if any of its positions in any member is kept (a member's mask may also
  carry another group's removed channels along its other axes).

  Args:
    opt_state: an optimizer state containing the pruner (anywhere, as for `jaxprune.get_masks`).
    groups: the channel groups the pruner was built with.

  Returns:
    One NumPy boolean array of length ``group.size`` per group.

  Raises:
    ValueError: if the state holds no pruner, or a member has no mask in it.
    TypeError: for traced masks (call it outside ``jit``).

  Example:
    See `structured_pruning`.
  """
  owner = "keeps_from_state"
  groups = importance_lib.check_groups(groups, owner)
  masks = masks_lib.get_masks(opt_state)
  named = dict(leaves_lib.named_leaves(leaves_lib.unwrap_variables(masks)))
  out = []
  for group in groups:
    keep = np.zeros(group.size, bool)
    for member in group.members:
      mask = named.get(member.path)
      if mask is None:
        raise ValueError(
          f"{owner}: group {group.name!r} (first member {group.members[0].path!r}): member "
          f"{member.path!r} has no mask in the state; was the pruner built with these groups?"
        )
      if is_traced(mask):
        raise TypeError(f"{owner}: the masks are traced; call it outside jit.")
      mask = np.asarray(mask)
      axis = member.axis % mask.ndim
      taken = np.moveaxis(np.take(mask, np.asarray(member.index), axis=axis), axis, 0)
      keep |= taken.reshape(group.size, -1).any(axis=1)
    out.append(keep)
  return out


def network_slimming_penalty(
  l1: float | jax.Array = 1e-4,
  *,
  groups: Sequence[ChannelGroup] | None = None,
  prune: PathSelector = None,
) -> optax.GradientTransformationExtraArgs:
  """Network slimming's sparsity penalty: adds ``l1 * sign(gamma)`` to the gradients of norm scales.

  The subgradient of ``l1 * sum |gamma|``: chained before the optimizer, it drives the scales of
  unimportant channels towards zero, so that ``importance="norm_scale"`` separates them clearly::

    tx = optax.chain(network_slimming_penalty(1e-4), optax.sgd(0.1, momentum=0.9))

  Which leaves are penalised: with ``groups``, the norm-scale members of those groups (last path
  key ``scale``); with ``prune``, the leaves it selects (a regular expression, a list of them or a
  predicate, as for every pruner); by default every leaf whose last path key is ``scale`` (the
  scales of Flax's ``BatchNorm``, ``LayerNorm`` and ``GroupNorm``). Other leaves pass unchanged.

  Args:
    l1: the penalty's weight, a non-negative number (or scalar array).
    groups: channel groups whose scale members are penalised.
    prune: a selection of the leaves to penalise (`jaxprune.leaves.Selector`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with an empty state; its update needs ``params``.

  Raises:
    ValueError: for a negative ``l1``, both ``groups`` and ``prune``, groups without any scale
      member, ``params=None`` in update, or a selection that matches no leaf.
    TypeError: for an ``l1`` that is not a number.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune.structured_pruning import network_slimming_penalty
    >>> params = {'bn': {'scale': jnp.array([0.5, -2.0, 0.0]), 'bias': jnp.ones(3)}}
    >>> grads = {'bn': {'scale': jnp.zeros(3), 'bias': jnp.zeros(3)}}
    >>> tx = network_slimming_penalty(0.1)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates['bn']['scale']
    Array([ 0.1, -0.1,  0. ], dtype=float32)

  References:
    Liu et al., `Learning efficient convolutional networks through network slimming
    <https://arxiv.org/abs/1708.06519>`_, ICCV 2017
  """
  owner = "network_slimming_penalty"
  value = number(l1, f"{owner}: l1")
  if value is not None and not value >= 0:
    raise ValueError(f"{owner}: l1 must be a non-negative number, got {l1!r}.")
  if groups is not None and prune is not None:
    raise ValueError(f"{owner}: give groups or prune, not both.")
  scales: set[str] | None = None
  if groups is not None:
    groups = importance_lib.check_groups(groups, owner)
    scales = {m.path for g in groups for m in g.members if m.path.rsplit("/", 1)[-1] == "scale"}
    if not scales:
      raise ValueError(f"{owner}: none of the groups has a norm scale member (a '.../scale' leaf).")

  def flags_of(params: Any) -> list[bool]:
    named = leaves_lib.named_leaves(leaves_lib.unwrap_variables(params))
    if scales is not None:
      missing = sorted(scales - {n for n, _ in named})
      if missing:
        raise ValueError(f"{owner}: the scales {missing} of the groups are not leaves of params.")
      return [n in scales for n, _ in named]
    if prune is not None:
      return leaves_lib.prunable_paths(params, prune, owner=owner)
    return [
      n.rsplit("/", 1)[-1] == "scale" and jnp.issubdtype(jnp.result_type(x), jnp.floating)
      for n, x in named
    ]

  def penalise(updates: Any, params: Any) -> Any:
    if params is None:
      raise ValueError(
        f"{owner}: params must be given to update (tx.update(updates, state, params))."
      )
    treedef = jax.tree.structure(params)
    u = leaves_lib.flatten_up_to(treedef, updates)
    p = leaves_lib.flatten_up_to(treedef, params)
    flags = flags_of(params)
    out = [g + (l1 * jnp.sign(w)).astype(g.dtype) if flag else g for g, w, flag in zip(u, p, flags)]
    return jax.tree.unflatten(treedef, out)

  # A stateless gradient transformation: optax supplies the (empty) state and the extra arguments.
  return optax.with_extra_args_support(optax.stateless(penalise))
