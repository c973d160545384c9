"""Groups: slices of several leaves that are pruned as one unit.

A structured prune of one convolution's output channel ``c`` must also remove ``c`` from its bias,
from the next norm's scale and shift and from the next convolution's input channels. A `Group` names
those coupled axes; the selection then counts units (channels), scores unit ``c`` by the sum over
members of the member's mean score over slice ``c``, and prunes whole units: slice ``c`` of every
member. A leaf may be a member of several groups along different axes (a convolution's input channels
in one, its output channels in the next); its mask is then the product of the groups' masks.

Example::

    group = jaxprune.groups.group(("conv1/kernel", -1), ("conv1/bias", 0), ("bn1/scale", 0),
                                  ("bn1/bias", 0), ("conv2/kernel", -2))
    tx = jaxprune.magnitude_pruning(0.5, groups=[group], prune=[], inner=optax.sgd(0.1))

The structured-pruning work reads such groups off a function's jaxpr; here they are given by hand.
"""

from __future__ import annotations

from typing import NamedTuple

from jaxprune.checks import check_int

__all__ = ["Group", "group"]


class Group(NamedTuple):
  """Coupled axes of several leaves, pruned together (see the module docstring).

  Attributes:
    members: ``(leaf name, axis)`` pairs; every member has the same size along its axis.
    name: the group's name in messages and overrides (the first member's by default).
  """

  members: tuple[tuple[str, int], ...]
  name: str


def group(*members: tuple[str, int], name: str | None = None) -> Group:
  """A group of coupled slices: unit ``c`` is slice ``c`` along ``axis`` of every member.

  Args:
    *members: ``(leaf name, axis)`` pairs, leaf names as `jaxprune.leaves.path_str` writes them
      (``"conv1/kernel"``).
    name: the group's name (in error messages, and matched by ``overrides``); by default
      ``"<first leaf>:<axis>"``.

  Returns:
    A `Group`.

  Raises:
    ValueError: for no members or a member named twice.
    TypeError: for a member that is not a ``(str, int)`` pair.

  Example:
    >>> import jaxprune
    >>> g = jaxprune.groups.group(("dense0/kernel", -1), ("dense0/bias", 0), ("dense1/kernel", 0))
    >>> g.name
    'dense0/kernel:-1'
  """
  if not members:
    raise ValueError("group: give at least one (leaf name, axis) member.")
  checked = []
  for member in members:
    if not (isinstance(member, tuple) and len(member) == 2 and isinstance(member[0], str)):
      raise TypeError(f"group: each member must be a (leaf name, axis) pair, got {member!r}.")
    leaf, axis = member
    if isinstance(axis, bool) or not isinstance(axis, int):
      check_int(f"axis of member {leaf!r}", axis, -(2**31), "group")
    checked.append((leaf, int(axis)))
  names = [leaf for leaf, _ in checked]
  for leaf in names:
    if names.count(leaf) > 1:
      raise ValueError(f"group: leaf {leaf!r} is named twice; a leaf joins a group along one axis.")
  return Group(tuple(checked), name if name is not None else f"{checked[0][0]}:{checked[0][1]}")
