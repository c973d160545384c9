"""`ChannelGroup`: the channels of a function that are removed together, and their masks.

A channel group is what `jaxprune.structured.dependency_groups` reads off a function's jaxpr: ``size``
channels, each a set of positions in several leaves that must be removed together (a layer's output
feature, its bias entry, the next norm's scale and shift entries, the next layer's input feature or,
after a flatten, its ``H x W`` input rows). ``members`` lists them as ``(path, axis, index)``:
``index`` has shape ``(size, k)`` and row ``c`` holds the ``k`` positions along ``axis`` of leaf
``path`` that belong to channel ``c``.

A *keep* is one boolean array of length ``size`` per group; `keep_masks` turns keeps into leaf masks
(``False`` at every position of a removed channel), the masked model that
`jaxprune.structured.slim` reproduces with smaller arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import leaves as leaves_lib
from jaxprune.typing import Masks, Params

__all__ = ["ChannelGroup", "Member", "check_keeps", "keep_masks"]


class Member(NamedTuple):
  """One leaf axis of a `ChannelGroup`.

  Attributes:
    path: the leaf, ``/``-joined (``"Conv_0/kernel"``).
    axis: the axis (non-negative) along which the channels lie.
    index: ``int32`` array of shape ``(size, k)``: the positions of channel ``c`` are ``index[c]``.
  """

  path: str
  axis: int
  # The field shadows tuple.index, as the (path, axis, index) triples name it.
  index: np.ndarray  # type: ignore[assignment]


class ChannelGroup(NamedTuple):
  """Channels removed together (see the module docstring).

  Attributes:
    name: ``"<first member's path>:<axis>"``, used in messages.
    size: the number of channels.
    members: every leaf axis that loses the channels, as `Member` triples.
    fingerprint: identifies the function and params the group was read from, so that a group is
      not applied to another function by mistake (`jaxprune.structured.slim` checks it).
  """

  name: str
  size: int
  members: tuple[Member, ...]
  fingerprint: str = ""


def check_keeps(groups: Sequence[ChannelGroup], keeps: Sequence[jax.Array | np.ndarray]) -> list:
  """Validates one keep per group and returns them as NumPy bool arrays.

  Args:
    groups: the groups.
    keeps: one boolean array of length ``group.size`` per group.

  Returns:
    The keeps as NumPy bool arrays, in the order of ``groups``.

  Raises:
    ValueError: for a count of keeps other than the count of groups, a keep of the wrong length or
      one that removes every channel of its group.
    TypeError: for a keep that is not boolean.
  """
  if isinstance(keeps, Mapping):
    raise TypeError("keeps must be a sequence with one boolean array per group, not a mapping.")
  if len(keeps) != len(groups):
    raise ValueError(f"got {len(keeps)} keeps for {len(groups)} groups; give one per group.")
  out = []
  for group, keep in zip(groups, keeps):
    first = group.members[0].path if group.members else "?"
    if isinstance(keep, jax.core.Tracer):
      raise TypeError(f"group {group.name} (first member {first}): the keep must be concrete.")
    keep = np.asarray(keep)
    if keep.dtype != np.bool_:
      raise TypeError(
        f"group {group.name} (first member {first}): the keep must be boolean, got dtype "
        f"{keep.dtype}."
      )
    if keep.shape != (group.size,):
      raise ValueError(
        f"group {group.name} (first member {first}): the keep must have shape ({group.size},), "
        f"got {keep.shape}."
      )
    if not keep.any():
      raise ValueError(
        f"group {group.name} (first member {first}): the keep removes all {group.size} channels; "
        "keep at least one."
      )
    out.append(keep)
  return out


def keep_masks(params: Params, groups: Sequence[ChannelGroup], keeps: Sequence) -> Masks:
  """Leaf masks of ``params`` that remove the channels ``keeps`` drops from every member.

  Args:
    params: the params the groups were read from.
    groups: the groups.
    keeps: one boolean array of length ``group.size`` per group.

  Returns:
    Boolean masks shaped like the params; ``None`` for leaves in no group.

  Raises:
    ValueError, TypeError: as `check_keeps`, and for a member naming no leaf of ``params``.
  """
  keeps = check_keeps(groups, keeps)
  named = dict(leaves_lib.named_leaves(params))
  masks: dict[str, np.ndarray] = {}
  for group, keep in zip(groups, keeps):
    for member in group.members:
      if member.path not in named:
        raise ValueError(f"group {group.name}: member {member.path} is not a leaf of the params.")
      leaf = named[member.path]
      mask = masks.setdefault(member.path, np.ones(np.shape(leaf), bool))
      positions = member.index[~keep].ravel()
      index = [slice(None)] * mask.ndim
      index[member.axis] = positions
      mask[tuple(index)] = False
  # Mapped over the params themselves, so masks of nnx state sit in the same Variable types.
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: (
      jnp.asarray(masks[leaves_lib.path_str(path)]) if leaves_lib.path_str(path) in masks else None
    ),
    params,
  )
