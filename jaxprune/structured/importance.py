"""The importance of channels, and which channels a structured prune keeps.

Each importance function scores the channels of `jaxprune.structured.ChannelGroup` values: it
returns one float32 array of length ``group.size`` per group, in the order of ``groups``. Channel
``c`` of a group is the positions ``member.index[c]`` along ``member.axis`` of every member (its
slice of a layer's kernel and bias, of the next norm's scale and shift, the next layer's input rows):

- `magnitude`: the L1 or L2 norm of the channel's weights in each member, aggregated over members
  (sum, mean or max);
- `norm_scale`: ``|gamma|`` of the norm scales among the members (network slimming);
- `taylor`: the first-order Taylor estimate ``|sum w * g|`` of the loss change when the channel is
  removed;
- `mean_activation`: the mean absolute activation of the channel over a batch (DropNet);
- `random`: uniform draws, a control.

`select` turns scores into keeps (one boolean array per group, what `jaxprune.structured.keep_masks`
and `jaxprune.structured.slim` take) with exact counts: per group, or with one threshold over the
normalised scores of all groups; counts rounded to a multiple of ``round_to`` (accelerators want
channel counts that are multiples of 8) and never below ``min_keep``. `as_score` gives the
`jaxprune.scores.Score` of a named importance, the form `jaxprune.structured_pruning` trains with.

Example:
  A two-layer MLP whose hidden features form one group (``l0``'s outputs, its bias, ``l1``'s inputs):

  >>> import jax.numpy as jnp, numpy as np
  >>> from jaxprune.structured import ChannelGroup, Member, importance
  >>> params = {'l0': {'kernel': jnp.array([[1.0, -2.0, 0.5], [1.0, 2.0, 0.5]]),
  ...                  'bias': jnp.zeros(3)},
  ...           'l1': {'kernel': jnp.array([[1.0], [0.0], [3.0]])}}
  >>> c = np.arange(3)[:, None]
  >>> hidden = ChannelGroup('l0/kernel:1', 3, (Member('l0/kernel', 1, c), Member('l0/bias', 0, c),
  ...                                          Member('l1/kernel', 0, c)))
  >>> [scores] = importance.magnitude(params, [hidden])
  >>> scores
  Array([3., 4., 4.], dtype=float32)
  >>> [keep] = importance.select([hidden], [scores], 1 / 3)
  >>> keep
  Array([False,  True,  True], dtype=bool)

References:
  Li et al., `Pruning filters for efficient ConvNets <https://arxiv.org/abs/1608.08710>`_, 2017;
  Liu et al., `Learning efficient convolutional networks through network slimming
  <https://arxiv.org/abs/1708.06519>`_, 2017;
  Molchanov et al., `Importance estimation for neural network pruning
  <https://arxiv.org/abs/1906.10771>`_, 2019;
  Tan & Motani, `DropNet: reducing neural network complexity via iterative pruning
  <https://arxiv.org/abs/2207.06646>`_, ICML 2020;
  Fang et al., `DepGraph: towards any structural pruning <https://arxiv.org/abs/2301.12900>`_, 2023
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import leaves as leaves_lib
from jaxprune import scores as scores_lib
from jaxprune import selection
from jaxprune.checks import check_int, check_sparsity, number
from jaxprune.plan import num_pruned
from jaxprune.structured.channel_group import ChannelGroup, Member
from jaxprune.typing import ArrayLike, Params, Sparsity, Updates

__all__ = [
  "IMPORTANCES",
  "NORMALIZATIONS",
  "REDUCTIONS",
  "as_score",
  "check_groups",
  "keep_channels",
  "kept_count",
  "magnitude",
  "mean_activation",
  "norm_scale",
  "normalized",
  "random",
  "scale_members",
  "select",
  "taylor",
]

IMPORTANCES = ("l1", "l2", "taylor", "norm_scale", "random", "mean_activation")
"""The importances `as_score` (and ``jaxprune.structured_pruning(importance=...)``) know by name."""

REDUCTIONS = ("sum", "mean", "max")
"""How per-member scores of a channel are aggregated over the members of its group."""

NORMALIZATIONS = (None, "sum", "mean", "max", "l2", "minmax")
"""Normalisations of one group's scores (see `normalized`)."""

SCOPES = ("per_group", "global")


def _label(group: ChannelGroup) -> str:
  first = group.members[0].path if group.members else "none"
  return f"group {group.name!r} (first member {first!r})"


def check_groups(groups: Sequence[ChannelGroup], owner: str) -> list[ChannelGroup]:
  """``groups`` as a list, each checked to be a `ChannelGroup` whose members' index arrays have
  shape ``(size, k)``.

  Raises:
    TypeError: for something other than a sequence of `ChannelGroup` values.
    ValueError: for a group with no members, a size below 1 or an index of another shape.
  """
  if isinstance(groups, ChannelGroup) or not isinstance(groups, Sequence):
    raise TypeError(f"{owner}: groups must be a list of ChannelGroup values, got {groups!r}.")
  out = []
  for group in groups:
    if not isinstance(group, ChannelGroup):
      raise TypeError(
        f"{owner}: groups must be jaxprune.structured.ChannelGroup values, got {group!r}."
      )
    if not group.members:
      raise ValueError(f"{owner}: group {group.name!r} has no members.")
    size = group.size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
      raise ValueError(f"{owner}: {_label(group)}: size must be a positive int, got {size!r}.")
    for member in group.members:
      if not isinstance(member, Member):
        raise TypeError(f"{owner}: {_label(group)}: members must be Member values, got {member!r}.")
      index = np.asarray(member.index)
      if (
        not np.issubdtype(index.dtype, np.integer)
        or index.ndim != 2
        or index.shape[0] != size
        or index.shape[1] < 1
      ):
        raise ValueError(
          f"{owner}: {_label(group)}: the index of member {member.path!r} must be an integer "
          f"array of shape ({size}, k) with k >= 1, got {index.dtype}{list(index.shape)}."
        )
    out.append(group)
  return out


def _named(tree: Any) -> dict[str, Any]:
  return dict(leaves_lib.named_leaves(leaves_lib.unwrap_variables(tree)))


def _channels(
  named: Mapping[str, Any], group: ChannelGroup, member: Member, owner: str, what: str = "params"
) -> jax.Array:
  """The member's leaf at each channel's positions, float32 of shape ``(size, k * rest)``."""
  if member.path not in named:
    raise ValueError(
      f"{owner}: {_label(group)}: member {member.path!r} is not a leaf of the {what}; leaf names "
      f"are {sorted(named)}."
    )
  x = jnp.asarray(named[member.path])
  if not -x.ndim <= member.axis < x.ndim:
    raise ValueError(
      f"{owner}: {_label(group)}: axis {member.axis} is out of range for member {member.path!r} "
      f"of shape {x.shape}."
    )
  axis = member.axis % x.ndim
  index = np.asarray(member.index)
  if index.min() < 0 or index.max() >= x.shape[axis]:
    raise ValueError(
      f"{owner}: {_label(group)}: member {member.path!r} has positions outside "
      f"[0, {x.shape[axis]}) along axis {axis}."
    )
  taken = jnp.take(x.astype(jnp.float32), jnp.asarray(index), axis=axis)
  return jnp.moveaxis(taken, (axis, axis + 1), (0, 1)).reshape(group.size, -1)


def _check_choice(value: Any, choices: Sequence[Any], what: str, owner: str) -> None:
  if not any(value is c or (isinstance(value, str) and value == c) for c in choices):
    raise ValueError(f"{owner}: {what} must be one of {tuple(choices)}, got {value!r}.")


def _reduce(per_member: list[jax.Array], reduce: str) -> jax.Array:
  stacked = jnp.stack(per_member)
  if reduce == "sum":
    return jnp.sum(stacked, axis=0)
  if reduce == "mean":
    return jnp.mean(stacked, axis=0)
  return jnp.max(stacked, axis=0)


def normalized(scores: ArrayLike, how: str | None, *, live: ArrayLike | None = None) -> jax.Array:
  """One group's scores, normalised so that groups of different scales compare.

  Every normalisation but ``"minmax"`` divides by a positive number, so the order of the channels
  of a group never changes (a denominator of 0 is replaced by 1).

  Args:
    scores: float array of shape ``(size,)``.
    how: ``None`` (unchanged), ``"sum"``, ``"mean"`` or ``"max"`` (divide by the sum, mean or
      maximum of ``|scores|``), ``"l2"`` (divide by the L2 norm), ``"minmax"`` (``(s - min) /
      (max - min)``).
    live: optional boolean array of shape ``(size,)``: the statistics are taken over these
      channels only (the channels still kept during training); the others are returned unchanged.

  Returns:
    A float32 array of shape ``(size,)``.

  Raises:
    ValueError: for an unknown ``how``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune.structured import importance
    >>> importance.normalized(jnp.array([1.0, 2.0, 3.0]), 'mean')
    Array([0.5, 1. , 1.5], dtype=float32)
  """
  _check_choice(how, NORMALIZATIONS, "normalize", "normalized")
  s = jnp.asarray(scores).astype(jnp.float32)
  if how is None:
    return s
  on = jnp.ones(s.shape, bool) if live is None else jnp.asarray(live, bool)
  a = jnp.where(on, jnp.abs(s), 0.0)
  safe = lambda d: jnp.where(d > 0, d, 1.0)
  if how == "sum":
    out = s / safe(jnp.sum(a))
  elif how == "mean":
    out = s / safe(jnp.sum(a) / jnp.maximum(jnp.sum(on, dtype=jnp.float32), 1.0))
  elif how == "max":
    out = s / safe(jnp.max(a))
  elif how == "l2":
    out = s / safe(jnp.sqrt(jnp.sum(a * a)))
  else:
    lo = jnp.min(jnp.where(on, s, jnp.inf))
    hi = jnp.max(jnp.where(on, s, -jnp.inf))
    out = (s - lo) / safe(hi - lo)
  return jnp.where(on, out, s)


def _finish(out: list[jax.Array], normalize: str | None) -> list[jax.Array]:
  return [normalized(s, normalize) for s in out]


def magnitude(
  params: Params,
  groups: Sequence[ChannelGroup],
  *,
  p: float = 1,
  reduce: str = "sum",
  normalize: str | None = None,
) -> list[jax.Array]:
  """Group magnitude: the L_p norm of each channel's weights, aggregated over the group's members.

  Channel ``c`` scores ``reduce_m ||w_m[c]||_p``, where ``w_m[c]`` are the entries of member ``m`` at
  the channel's positions (all of them: the positions along the member's axis, every index of the
  other axes). With ``p=1`` and ``reduce="sum"`` this is the L1 norm of every weight of the channel.

  Args:
    params: the params the groups were read from.
    groups: the channel groups.
    p: the norm's order, a positive number (1, 2, ``float('inf')``).
    reduce: ``"sum"``, ``"mean"`` or ``"max"`` over the members.
    normalize: a normalisation of each group's scores (`normalized`), or ``None``.

  Returns:
    One float32 array of length ``group.size`` per group.

  Raises:
    ValueError: for a bad ``p``, ``reduce`` or ``normalize``, or a member that names no leaf of
      ``params`` (the error names the group and its first member).

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from jaxprune.structured import ChannelGroup, Member, importance
    >>> params = {'w': jnp.array([[3.0, 0.0], [4.0, 1.0]])}
    >>> group = ChannelGroup('w:1', 2, (Member('w', 1, np.arange(2)[:, None]),))
    >>> importance.magnitude(params, [group], p=2)[0]
    Array([5., 1.], dtype=float32)

  References:
    Li et al., `Pruning filters for efficient ConvNets <https://arxiv.org/abs/1608.08710>`_, 2017;
    Fang et al., `DepGraph <https://arxiv.org/abs/2301.12900>`_, 2023
  """
  owner = "magnitude"
  order = number(p, f"{owner}: p")
  if order is None or not order > 0:
    raise ValueError(f"{owner}: p must be a positive number, got {p!r}.")
  _check_choice(reduce, REDUCTIONS, "reduce", owner)
  _check_choice(normalize, NORMALIZATIONS, "normalize", owner)
  named = _named(params)
  out = []
  for group in check_groups(groups, owner):
    per = []
    for member in group.members:
      a = jnp.abs(_channels(named, group, member, owner))
      if order == 1:
        per.append(jnp.sum(a, axis=1))
      elif order == 2:
        per.append(jnp.sqrt(jnp.sum(a * a, axis=1)))
      elif math.isinf(order):
        per.append(jnp.max(a, axis=1))
      else:
        per.append(jnp.sum(a**order, axis=1) ** (1.0 / order))
    out.append(_reduce(per, reduce))
  return _finish(out, normalize)


def norm_scale(
  params: Params,
  groups: Sequence[ChannelGroup],
  *,
  names: Sequence[str] = ("scale",),
  reduce: str = "sum",
  normalize: str | None = None,
) -> list[jax.Array]:
  """Network slimming: ``|gamma|``, the magnitude of the norm scales among each group's members.

  The scale members are those whose last path key is in ``names`` (``BatchNorm_0/scale``). Channel
  ``c`` scores ``reduce_m mean |gamma_m[c]|`` over the scale members (a scale has one position per
  channel, so this is ``|gamma[c]|`` for a group with one norm). Train with
  `jaxprune.structured_pruning.network_slimming_penalty` to push unimportant scales to zero.

  Args:
    params: the params the groups were read from.
    groups: the channel groups; each must have a scale member.
    names: the last path keys that name a norm's scale.
    reduce: ``"sum"``, ``"mean"`` or ``"max"`` over the scale members.
    normalize: a normalisation of each group's scores (`normalized`), or ``None``.

  Returns:
    One float32 array of length ``group.size`` per group.

  Raises:
    ValueError: for a group without a scale member (naming the group and its first member), a bad
      ``reduce`` or ``normalize``, or a member that names no leaf of ``params``.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from jaxprune.structured import ChannelGroup, Member, importance
    >>> params = {'conv': {'kernel': jnp.ones((3, 3, 1, 2))},
    ...           'bn': {'scale': jnp.array([-0.5, 2.0])}}
    >>> c = np.arange(2)[:, None]
    >>> group = ChannelGroup('conv/kernel:3', 2, (Member('conv/kernel', 3, c), Member('bn/scale', 0, c)))
    >>> importance.norm_scale(params, [group])[0]
    Array([0.5, 2. ], dtype=float32)

  References:
    Liu et al., `Learning efficient convolutional networks through network slimming
    <https://arxiv.org/abs/1708.06519>`_, ICCV 2017
  """
  owner = "norm_scale"
  _check_choice(reduce, REDUCTIONS, "reduce", owner)
  _check_choice(normalize, NORMALIZATIONS, "normalize", owner)
  named = _named(params)
  out = []
  for group in check_groups(groups, owner):
    members = scale_members(group, names, owner)
    out.append(
      _reduce(
        [jnp.mean(jnp.abs(_channels(named, group, m, owner)), axis=1) for m in members], reduce
      )
    )
  return _finish(out, normalize)


def scale_members(
  group: ChannelGroup, names: Sequence[str] = ("scale",), owner: str = "norm_scale"
) -> list[Member]:
  """The members of ``group`` whose last path key is in ``names``; a ``ValueError`` if none is."""
  members = [m for m in group.members if m.path.rsplit("/", 1)[-1] in tuple(names)]
  if not members:
    raise ValueError(
      f"{owner}: {_label(group)} has no norm scale member (a leaf whose last path key is one of "
      f"{tuple(names)}), so it has no scale to rank its channels by; leave it out or use another "
      "importance."
    )
  return members


def taylor(
  params: Params,
  grads: Updates,
  groups: Sequence[ChannelGroup],
  *,
  normalize: str | None = None,
) -> list[jax.Array]:
  """First-order Taylor importance: ``|sum w * g|`` over every weight of the channel.

  Removing channel ``c`` (setting its weights ``w`` to zero) changes the loss by about
  ``-sum w * g`` over the channel's positions in every member; its magnitude is the score (the
  square of Molchanov et al. ranks the channels of a group the same way). Average ``grads`` over a
  few batches for a less noisy estimate.

  Args:
    params: the params the groups were read from.
    grads: the gradients of the loss, a tree shaped like ``params``.
    groups: the channel groups.
    normalize: a normalisation of each group's scores (`normalized`), or ``None``.

  Returns:
    One float32 array of length ``group.size`` per group.

  Raises:
    ValueError: for a member that names no leaf of ``params`` or ``grads``, or a bad
      ``normalize``.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from jaxprune.structured import ChannelGroup, Member, importance
    >>> params = {'w': jnp.array([[1.0, 2.0], [3.0, 4.0]])}
    >>> grads = {'w': jnp.array([[1.0, 1.0], [-1.0, 0.5]])}
    >>> group = ChannelGroup('w:1', 2, (Member('w', 1, np.arange(2)[:, None]),))
    >>> importance.taylor(params, grads, [group])[0]  # |1 - 3|, |2 + 2|
    Array([2., 4.], dtype=float32)

  References:
    Molchanov et al., `Importance estimation for neural network pruning
    <https://arxiv.org/abs/1906.10771>`_, CVPR 2019
  """
  owner = "taylor"
  _check_choice(normalize, NORMALIZATIONS, "normalize", owner)
  if grads is None:
    raise ValueError(f"{owner}: needs the gradients (grads=None).")
  named, named_grads = _named(params), _named(grads)
  out = []
  for group in check_groups(groups, owner):
    total = jnp.zeros(group.size, jnp.float32)
    for member in group.members:
      w = _channels(named, group, member, owner)
      g = _channels(named_grads, group, member, owner, what="gradients")
      total = total + jnp.sum(w * g, axis=1)
    out.append(jnp.abs(total))
  return _finish(out, normalize)


def mean_activation(
  activations: Mapping[str, ArrayLike] | Sequence[ArrayLike],
  groups: Sequence[ChannelGroup],
  *,
  axis: int = -1,
  normalize: str | None = None,
) -> list[jax.Array]:
  """DropNet: the mean absolute activation of each channel over a batch.

  A channel whose output is (nearly) always zero after its nonlinearity can be removed at little
  cost. The activations of a group are the output of its layer after the nonlinearity (what the
  next layer reads), with the channels along ``axis``; channel ``c`` scores the mean of
  ``|a[..., c]|`` over every other axis (batch, and spatial axes of a convolution). With Flax, the
  activations come from ``self.sow`` or ``model.apply(..., capture_intermediates=True)``.

  Args:
    activations: ``{group name: activations}``, or one array per group in the order of ``groups``.
    groups: the channel groups.
    axis: the channel axis of every activation array.
    normalize: a normalisation of each group's scores (`normalized`), or ``None``.

  Returns:
    One float32 array of length ``group.size`` per group.

  Raises:
    ValueError: for a group without activations, or whose activations do not have ``group.size``
      entries along ``axis`` (naming the group and its first member).

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from jaxprune.structured import ChannelGroup, Member, importance
    >>> group = ChannelGroup('w:1', 2, (Member('w', 1, np.arange(2)[:, None]),))
    >>> acts = {'w:1': jnp.array([[0.0, 1.0], [2.0, -3.0]])}  # (batch, channels)
    >>> importance.mean_activation(acts, [group])[0]
    Array([1., 2.], dtype=float32)

  References:
    Tan & Motani, `DropNet: reducing neural network complexity via iterative pruning
    <https://arxiv.org/abs/2207.06646>`_, ICML 2020
  """
  owner = "mean_activation"
  _check_choice(normalize, NORMALIZATIONS, "normalize", owner)
  groups = check_groups(groups, owner)
  if isinstance(activations, Mapping):
    missing = [g for g in groups if g.name not in activations]
    if missing:
      raise ValueError(
        f"{owner}: no activations for {_label(missing[0])}; give {{group name: array}} for every "
        f"group, got keys {sorted(activations)}."
      )
    arrays = [activations[g.name] for g in groups]
  else:
    if len(activations) != len(groups):
      raise ValueError(
        f"{owner}: got {len(activations)} activation arrays for {len(groups)} groups; give one "
        "per group (or a mapping {group name: array})."
      )
    arrays = list(activations)
  out = []
  for group, a in zip(groups, arrays):
    a = jnp.asarray(a)
    if a.ndim == 0 or not -a.ndim <= axis < a.ndim or a.shape[axis] != group.size:
      raise ValueError(
        f"{owner}: the activations of {_label(group)} have shape {a.shape}; expected "
        f"{group.size} channels along axis {axis}."
      )
    a = jnp.moveaxis(jnp.abs(a.astype(jnp.float32)), axis, -1)
    out.append(jnp.mean(a.reshape(-1, group.size), axis=0))
  return _finish(out, normalize)


def random(
  groups: Sequence[ChannelGroup], seed: int = 0, *, step: ArrayLike = 0
) -> list[jax.Array]:
  """Uniform random scores, a control: group ``j`` draws from ``fold_in(fold_in(key(seed), step), j)``.

  Args:
    groups: the channel groups.
    seed: the integer seed.
    step: mixed into the key, so that a pruner draws afresh at each mask update (its update count).

  Returns:
    One float32 array of length ``group.size`` per group.

  Raises:
    TypeError: for a seed that is not an integer.

  Example:
    >>> import numpy as np
    >>> from jaxprune.structured import ChannelGroup, Member, importance
    >>> group = ChannelGroup('w:1', 4, (Member('w', 1, np.arange(4)[:, None]),))
    >>> importance.random([group], seed=0)[0].shape
    (4,)
  """
  scores_lib.random(seed)  # checks the seed
  key = jax.random.fold_in(jax.random.key(seed), jnp.asarray(step, jnp.int32))
  return [
    jax.random.uniform(jax.random.fold_in(key, j), (g.size,), jnp.float32)
    for j, g in enumerate(check_groups(groups, "random"))
  ]


def _round_count(exact: Any, size: int, round_to: int, min_keep: int) -> jax.Array:
  """The kept count nearest ``exact`` among the multiples of ``round_to`` in ``[1, size]`` and
  ``size`` itself (ties: the larger), raised to at least ``min_keep`` (int32)."""
  r = round_to if size >= round_to else 1  # no multiple fits: exact counts
  top = size // r * r
  exact = jnp.asarray(exact, jnp.int32)
  down = exact // r * r
  up = jnp.where(down + r <= top, down + r, size)
  nearest = jnp.where((down == 0) | (up - exact <= exact - down), up, down)
  kept = jnp.where((exact == down) & (down > 0), exact, nearest)
  floor = -(-min(min_keep, size) // r) * r
  return jnp.maximum(kept, floor if floor <= top else size).astype(jnp.int32)


def kept_count(size: int, ratio: Sparsity, *, round_to: int = 1, min_keep: int = 1) -> jax.Array:
  """How many of a group's ``size`` channels a prune to ``ratio`` keeps.

  ``round(ratio * size)`` channels are removed; the kept count is then rounded to the nearest of
  the multiples of ``round_to`` up to ``size`` and ``size`` itself (ties: the larger; a group with
  fewer than ``round_to`` channels keeps the exact count), and raised to the smallest such count
  that is at least ``min_keep``.

  Args:
    size: the group's channel count.
    ratio: the fraction of channels removed, in ``[0, 1)`` (may be traced).
    round_to: kept counts are multiples of this where possible.
    min_keep: the floor (at least 1: a group never loses every channel).

  Returns:
    An int32 scalar.

  Example:
    >>> from jaxprune.structured import importance
    >>> int(importance.kept_count(64, 0.3)), int(importance.kept_count(64, 0.3, round_to=8))
    (45, 48)
    >>> int(importance.kept_count(10, 0.95, min_keep=2))
    2
  """
  return _round_count(size - num_pruned(ratio, size), size, round_to, min_keep)


def keep_channels(
  scores: Sequence[jax.Array],
  ratios: Sequence[Any],
  shared_ratio: Any = None,
  *,
  live: Sequence[jax.Array] | None = None,
  round_to: int = 1,
  min_keep: int = 1,
  normalize: str | None = "mean",
) -> list[jax.Array]:
  """The selection of `select` on arrays (works under ``jit``): one boolean mask per score array.

  Groups with a ratio of their own (``ratios[j]`` not ``None``) keep `kept_count` channels each;
  the others share one threshold over their normalised scores at ``shared_ratio``, after each has
  kept its ``min_keep`` best channels. ``live`` (boolean, like ``scores``) restricts the selection
  to channels still kept: the others are never revived.
  """
  n = len(scores)
  sizes = [int(jnp.shape(s)[0]) for s in scores]
  alive = [None] * n if live is None else list(live)
  ranked = []
  for s, on in zip(scores, alive):
    s = normalized(s, normalize, live=on)
    ranked.append(s if on is None else jnp.where(on, s, -jnp.inf))
  live_counts = [
    jnp.asarray(size, jnp.int32) if on is None else jnp.sum(on, dtype=jnp.int32)
    for size, on in zip(sizes, alive)
  ]
  counts: list[Any] = [None] * n
  for j in range(n):
    if ratios[j] is not None:
      k = kept_count(sizes[j], ratios[j], round_to=round_to, min_keep=min_keep)
      counts[j] = jnp.minimum(k, live_counts[j])
  masks: list[Any] = [None] * n
  shared = [j for j in range(n) if ratios[j] is None]
  if shared:
    total = sum(sizes[j] for j in shared)
    floors = [jnp.minimum(min(min_keep, sizes[j]), live_counts[j]) for j in shared]
    reserved = selection.top_k_masks(
      [ranked[j] for j in shared], floors, segments=list(range(len(shared)))
    )
    boosted = [jnp.where(r, jnp.inf, ranked[j]) for r, j in zip(reserved, shared)]
    k = jnp.asarray(total - num_pruned(shared_ratio, total), jnp.int32)
    k = jnp.minimum(k, sum(live_counts[j] for j in shared))
    k = jnp.maximum(k, sum(floors))
    picked = selection.top_k_masks(boosted, k)
    for j, b, m in zip(shared, boosted, picked):
      if round_to > 1:  # round the threshold's count of each group, then select within it
        ranked[j] = b
        exact = jnp.sum(m, dtype=jnp.int32)
        counts[j] = jnp.minimum(_round_count(exact, sizes[j], round_to, min_keep), live_counts[j])
      else:
        masks[j] = m
  own = [j for j in range(n) if masks[j] is None]
  if own:
    chosen = selection.top_k_masks(
      [ranked[j] for j in own], [counts[j] for j in own], segments=list(range(len(own)))
    )
    for j, m in zip(own, chosen):
      masks[j] = m
  return masks


def _check_selection(scope: str, round_to: int, min_keep: int, normalize: Any, owner: str) -> None:
  _check_choice(scope, SCOPES, "scope", owner)
  check_int("round_to", round_to, 1, owner)
  check_int("min_keep", min_keep, 1, owner)
  _check_choice(normalize, NORMALIZATIONS, "normalize", owner)


def select(
  groups: Sequence[ChannelGroup],
  scores: Sequence[ArrayLike],
  ratio: Sparsity | Sequence[Sparsity],
  *,
  scope: str = "per_group",
  round_to: int = 1,
  min_keep: int = 1,
  normalize: str | None = "mean",
) -> list[jax.Array]:
  """Which channels to keep: one boolean array of length ``group.size`` per group.

  - ``scope="per_group"``: group ``j`` keeps its `kept_count` highest-scoring channels:
    ``round(ratio * size)`` are removed, the kept count rounded to a multiple of ``round_to`` where
    possible and never below ``min_keep``. ``ratio`` may be one number per group.
  - ``scope="global"``: one threshold over the scores of all groups, each normalised first (by
    ``normalize``, the mean of its absolute scores by default) so that layers of different scales
    compare: ``round(ratio * total)`` channels are removed over all groups, except that every group
    keeps its ``min_keep`` best channels. With ``round_to > 1`` the count each group gets from the
    threshold is then rounded as above, so the total may differ from the exact count by less than
    ``round_to`` per group.

  Ties are broken by position (lower channel first; in the global scope, earlier groups first).

  Args:
    groups: the channel groups.
    scores: one float array of shape ``(group.size,)`` per group (from an importance function).
    ratio: the fraction of channels removed, in ``[0, 1)``; per group, a sequence of one per group.
    scope: ``"per_group"`` or ``"global"``.
    round_to: kept counts are multiples of this where possible (8 for accelerators).
    min_keep: the fewest channels a group keeps, at least 1.
    normalize: how each group's scores are normalised (`normalized`; only the global scope
      compares scores across groups, the order within a group never changes).

  Returns:
    One boolean array per group (``True`` = kept), what `jaxprune.structured.keep_masks` and
    `jaxprune.structured.slim` take.

  Raises:
    ValueError: for scores of the wrong count or shape (naming the group and its first member), a
      ratio outside ``[0, 1)``, per-group ratios in the global scope, an unknown scope or
      normalisation, or ``round_to``/``min_keep`` below 1.
    TypeError: for scores that are not floating point or a ratio that is not a number.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from jaxprune.structured import ChannelGroup, Member, importance
    >>> g = ChannelGroup('w:1', 16, (Member('w', 1, np.arange(16)[:, None]),))
    >>> scores = [jnp.arange(16.0)]
    >>> int(importance.select([g], scores, 0.4)[0].sum())  # removes round(6.4) = 6
    10
    >>> int(importance.select([g], scores, 0.4, round_to=8)[0].sum())
    8
  """
  owner = "select"
  groups = check_groups(groups, owner)
  _check_selection(scope, round_to, min_keep, normalize, owner)
  if isinstance(scores, Mapping) or len(scores) != len(groups):
    raise ValueError(
      f"{owner}: give one score array per group, in the order of groups; got "
      f"{len(scores)} for {len(groups)} groups."
    )
  arrays = []
  for group, s in zip(groups, scores):
    s = jnp.asarray(s)
    if s.shape != (group.size,):
      raise ValueError(
        f"{owner}: the scores of {_label(group)} have shape {s.shape}, expected ({group.size},)."
      )
    if not jnp.issubdtype(s.dtype, jnp.floating):
      raise TypeError(
        f"{owner}: the scores of {_label(group)} must be floating point, got {s.dtype}."
      )
    arrays.append(s.astype(jnp.float32))
  per_group = isinstance(ratio, Sequence) and not isinstance(ratio, str)
  if per_group:
    if scope == "global":
      raise ValueError(f"{owner}: the global scope takes one ratio, got {ratio!r}.")
    ratios = list(ratio)  # type: ignore[arg-type]  # a sequence, checked above
    if len(ratios) != len(groups):
      raise ValueError(f"{owner}: got {len(ratios)} ratios for {len(groups)} groups.")
  else:
    ratios = [ratio] * len(groups)
  for group, r in zip(groups, ratios):
    check_sparsity(r, f"{owner}: ratio of {_label(group)}")
  if scope == "global":
    return keep_channels(
      arrays, [None] * len(groups), ratio, round_to=round_to, min_keep=min_keep, normalize=normalize
    )
  return keep_channels(arrays, ratios, round_to=round_to, min_keep=min_keep, normalize=normalize)


def as_score(
  importance: str | scores_lib.Score,
  *,
  reduce: str = "sum",
  seed: int = 0,
  owner: str = "as_score",
) -> scores_lib.Score:
  """The `jaxprune.scores.Score` of a named importance, whose ``channel_fn`` scores channel groups.

  This is the form a pruner reads (``jaxprune.structured_pruning(importance=...)``): ``"l1"`` and
  ``"l2"`` (`magnitude` with ``p`` 1 or 2), ``"taylor"`` (reads the gradients: the raw ones with
  ``inner=``), ``"norm_scale"``, ``"random"`` (a fresh draw at each mask update) and
  ``"mean_activation"``, which reads the extra update argument ``activations``
  (``tx.update(grads, state, params, activations={group name: array})`` at every update, see
  `mean_activation`). A `jaxprune.scores.Score` is returned as it is: with a ``channel_fn`` it scores
  channels itself, without one its leaf scores are averaged over each channel's positions and
  summed over members.

  Args:
    importance: a name in `IMPORTANCES`, or a `jaxprune.scores.Score`.
    reduce: how ``"l1"``, ``"l2"`` and ``"norm_scale"`` aggregate over members (`REDUCTIONS`).
    seed: the seed of ``"random"``.
    owner: the name used in error messages.

  Returns:
    A `jaxprune.scores.Score`.

  Raises:
    ValueError: for an unknown name or ``reduce``.
    TypeError: for something that is neither a name nor a Score, or a seed that is not an int.

  Example:
    >>> from jaxprune.structured import importance
    >>> score = importance.as_score('taylor')
    >>> score.name, score.reads_grads
    ('taylor', True)
  """
  if isinstance(importance, scores_lib.Score):
    return importance
  if not isinstance(importance, str):
    raise TypeError(
      f"{owner}: importance must be one of {IMPORTANCES} or a jaxprune.scores.Score, got "
      f"{importance!r}."
    )
  _check_choice(importance, IMPORTANCES, "importance", owner)
  _check_choice(reduce, REDUCTIONS, "reduce", owner)
  leaf = scores_lib.magnitude.fn
  if importance in ("l1", "l2"):
    p = 1 if importance == "l1" else 2
    return scores_lib.Score(
      importance, leaf, channel_fn=lambda x, gs: magnitude(x.params, gs, p=p, reduce=reduce)
    )
  if importance == "taylor":
    return scores_lib.Score(
      "taylor",
      scores_lib.saliency.fn,
      reads_grads=True,
      channel_fn=lambda x, gs: taylor(x.params, x.grads, gs),
    )
  if importance == "norm_scale":
    return scores_lib.Score(
      "norm_scale", leaf, channel_fn=lambda x, gs: norm_scale(x.params, gs, reduce=reduce)
    )
  if importance == "random":
    draw = scores_lib.random(seed)
    return scores_lib.Score(
      "random", draw.fn, channel_fn=lambda x, gs: random(gs, seed, step=x.count)
    )
  return scores_lib.Score(
    "mean_activation",
    leaf,
    extra_args=("activations",),
    channel_fn=lambda x, gs: mean_activation(x.extra["activations"], gs),
  )
