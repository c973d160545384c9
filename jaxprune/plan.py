"""The selection path shared by every pruner and by `jaxprune.prune`: what is selected, to what sparsity.

A `Plan` is read off the params once per trace: the leaves that carry masks and the *units* of
selection. A unit is either one leaf under a pattern (its groups are entries, blocks, channels or
N:M groups, see `jaxprune.patterns`), a `jaxprune.groups.Group` of coupled slices of several
leaves, or a `jaxprune.structured.ChannelGroup`, whose channel ``c`` is the positions ``index[c]``
along the axis of each member (a dense kernel's rows ``c, C + c, ...`` after a flatten, part of an
axis after a concatenation). Selection works on units: each has ``num_groups`` groups, one score per group, and a kept
count per update; masks of leaves are the expansion of their units' group masks (the product, for a
leaf in several groups).

Where a unit's target comes from: an override (``{regex: sparsity}`` matched in full against unit
names), else the distribution's share of the model-wide sparsity, else (``"global"``) one threshold
over all units without an override.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import allocation as allocation_lib
from jaxprune import leaves as leaves_lib
from jaxprune import patterns as patterns_lib
from jaxprune.checks import check_regex, check_sparsity, number
from jaxprune.groups import Group
from jaxprune.typing import Distribution, Params, PathSelector, Sparsity

if TYPE_CHECKING:  # imported where used: jaxprune.structured imports the engine's modules
  from jaxprune.structured.channel_group import ChannelGroup

__all__ = ["Plan", "Selection", "Unit", "make_plan", "make_selection", "num_pruned", "targets"]

_PATTERNS = (patterns_lib.Unstructured, patterns_lib.Block, patterns_lib.Channel, patterns_lib.NM)


class Selection(NamedTuple):
  """The selection options that every method accepts (see `make_selection`)."""

  prune: PathSelector
  pattern: patterns_lib.Pattern
  distribution: Distribution
  overrides: dict[str, Any]
  groups: tuple[Group | ChannelGroup, ...]

  @property
  def is_nm(self) -> bool:
    return isinstance(self.pattern, patterns_lib.NM)


def make_selection(
  owner: str,
  *,
  sparsity: Sparsity | None,
  prune: PathSelector = None,
  pattern: patterns_lib.Pattern | None = None,
  distribution: Distribution = "uniform",
  overrides: Mapping[str, Any] | None = None,
  groups: Sequence[Group | ChannelGroup] = (),
) -> Selection:
  """Validates the selection options of ``owner`` (a factory's name) and bundles them.

  Args:
    owner: the name used in error messages.
    sparsity: the model-wide target, checked to be in ``[0, 1)``; ``None`` only for N:M patterns.
    prune: which leaves are pruned (`jaxprune.leaves.Selector`).
    pattern: what is pruned together; unstructured by default.
    distribution: ``"uniform"``, ``"erk"``, ``"er"``, ``"global"`` or ``(sparsity, shapes) -> list``.
    overrides: ``{regex: sparsity}`` for units pruned to their own sparsity.
    groups: `jaxprune.groups.Group` or `jaxprune.structured.ChannelGroup` units spanning several
      leaves.

  Returns:
    A `Selection`.

  Raises:
    ValueError, TypeError: naming the bad argument and its value.
  """
  pattern = patterns_lib.unstructured() if pattern is None else pattern
  if not isinstance(pattern, _PATTERNS):
    raise TypeError(f"{owner}: pattern must come from jaxprune.patterns, got {pattern!r}.")
  if overrides is not None and not isinstance(overrides, Mapping):
    raise TypeError(f"{owner}: overrides must be a mapping {{regex: sparsity}}, got {overrides!r}.")
  overrides = dict(overrides or {})
  for key, value in overrides.items():
    check_regex(key, owner, "override")
    if value is None:
      raise ValueError(
        f"{owner}: override {key!r} has no sparsity (None). Give a number in [0, 1); "
        f"to leave leaves unpruned, exclude them with prune=."
      )
    check_sparsity(value, f"{owner}: override sparsity for leaf {key!r}")
  from jaxprune.structured.channel_group import ChannelGroup

  groups = tuple(groups)
  for g in groups:
    if not isinstance(g, (Group, ChannelGroup)):
      raise TypeError(
        f"{owner}: groups must be jaxprune.groups.Group or jaxprune.structured.ChannelGroup "
        f"values, got {g!r}."
      )
  if isinstance(pattern, patterns_lib.NM):
    if sparsity is not None or overrides:
      raise ValueError(
        f"{owner}: an N:M pattern fixes the sparsity at 1 - n/m = "
        f"{1 - pattern.n / pattern.m}; pass sparsity=None and no overrides, got "
        f"sparsity={sparsity!r}, overrides={overrides!r}."
      )
    if distribution != "uniform":
      raise ValueError(
        f"{owner}: an N:M pattern selects within groups; distribution must be "
        f"'uniform', got {distribution!r}."
      )
    if groups:
      raise ValueError(
        f"{owner}: groups are pruned by whole units, which an N:M pattern does not do."
      )
  else:
    if sparsity is None:
      raise ValueError(f"{owner}: sparsity is required (only N:M patterns fix it themselves).")
    check_sparsity(sparsity, f"{owner}: sparsity")
  try:
    allocation_lib.get_allocation(distribution)
  except ValueError as e:
    raise ValueError(f"{owner}: {e}") from None
  return Selection(prune, pattern, distribution, overrides, groups)


class Unit(NamedTuple):
  """One unit of selection.

  Attributes:
    name: the leaf's name, or the group's.
    members: ``(leaf index, axis)`` pairs; ``axis`` is ``None`` for a leaf under ``pattern``.
    pattern: the leaf's pattern; ``None`` for a group.
    shape: the shape the distribution allocates by (the leaf's, or the group's first member's).
    num_groups: the number of selectable groups (entries, blocks, channels, units).
    size: the entries its groups cover, over all members.
    override: its own target from ``overrides``, or ``None``.
    channel_group: the `jaxprune.structured.ChannelGroup` of a channel-group unit (``members``
      lists its members in order; their ``(size, k)`` index arrays say which positions along the
      axis form each channel), else ``None``.
    layer: ``(axis, l)`` for layer ``l`` of a stacked leaf (`jaxprune.allocation.stacked`): the
      unit is the slice ``l`` along ``axis``, and ``shape`` is the slice's; else ``None``.
  """

  name: str
  members: tuple[tuple[int, int | None], ...]
  pattern: patterns_lib.Pattern | None
  shape: tuple[int, ...]
  num_groups: int
  size: int
  override: Any
  channel_group: ChannelGroup | None = None
  layer: tuple[int, int] | None = None

  @property
  def is_nm(self) -> bool:
    return isinstance(self.pattern, patterns_lib.NM)

  def _own(self, x: jax.Array) -> jax.Array:
    """The part of a leaf-shaped array that this unit covers (its layer, for a stacked leaf)."""
    if self.layer is None:
      return x
    axis, index = self.layer
    return jax.lax.index_in_dim(x, index, axis, keepdims=False)

  def _member_axis(self, axis: int, ndim: int) -> int:
    """A member's group axis (given on the whole leaf) on the part this unit covers."""
    axis = axis % ndim
    if self.layer is not None and axis > self.layer[0] % ndim:
      axis -= 1  # the layer's slice drops the stacked axis
    return axis

  def _per_member(self, leaves: Any, reduce: Any) -> list[jax.Array]:
    """``reduce(x, axes)`` of each member's leaf (its layer, for a layer of stacked members) over
    everything but its channel (one value per group; for a channel group over the positions
    ``index[c]`` of channel ``c``)."""
    out = []
    for m, (index, axis) in enumerate(self.members):
      assert axis is not None  # a group's members name their axes
      axis = self._member_axis(axis, jnp.ndim(leaves[index]))
      x = self._own(leaves[index])
      if self.channel_group is not None:
        positions = jnp.asarray(self.channel_group.members[m].index)
        x = jnp.moveaxis(jnp.take(x, positions, axis=axis), (axis, axis + 1), (0, 1))
        out.append(reduce(x, tuple(range(1, x.ndim))))
        continue
      other = tuple(a for a in range(x.ndim) if a != axis)
      out.append(reduce(x, other) if other else x)
    return out

  def group_scores(self, leaves: Sequence[jax.Array]) -> jax.Array:
    """One float32 score per group, from leaf-shaped score arrays (indexed like the params)."""
    if self.pattern is not None:
      ((index, _),) = self.members
      score = self._own(leaves[index]).astype(jnp.float32)
      if isinstance(self.pattern, patterns_lib.NM):
        return score
      return self.pattern.group_scores(score)
    mean = lambda x, axes: jnp.mean(x.astype(jnp.float32), axis=axes)
    total = None
    for per in self._per_member(leaves, mean):
      total = per.astype(jnp.float32) if total is None else total + per
    assert total is not None  # a group has members
    return total

  def group_shape(self, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The shape of `group_scores`' result."""
    structs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    return tuple(jax.eval_shape(self.group_scores, structs).shape)

  def kept(self, masks: Mapping[int, jax.Array]) -> jax.Array:
    """Which groups are kept under leaf masks ``masks`` (a group is kept if any entry is)."""
    if self.pattern is not None:
      ((index, _),) = self.members
      own = self._own(masks[index])
      if isinstance(self.pattern, (patterns_lib.Unstructured, patterns_lib.NM)):
        return own
      return self.pattern.group_scores(own.astype(jnp.float32)) > 0
    out = None
    for per in self._per_member(masks, lambda x, axes: jnp.any(x, axis=axes)):
      out = per if out is None else out | per
    assert out is not None  # a group has members
    return out

  def expand(
    self, group_mask: jax.Array, shapes: Sequence[tuple[int, ...]]
  ) -> list[tuple[int, jax.Array]]:
    """``(leaf index, leaf-shaped mask)`` for each member, from a mask over groups (for a layer of
    a stacked leaf, the layer's mask: `Plan.combine` stacks them)."""
    if self.pattern is not None:
      ((index, _),) = self.members
      if isinstance(self.pattern, patterns_lib.NM):
        return [(index, group_mask)]
      return [(index, self.pattern.expand(group_mask, self.shape))]
    out = []
    for m, (index, axis) in enumerate(self.members):
      assert axis is not None  # a group's members name their axes
      shape = tuple(shapes[index])
      axis = self._member_axis(axis, len(shape))
      if self.layer is not None:
        stacked = self.layer[0] % len(shape)
        shape = shape[:stacked] + shape[stacked + 1 :]
      other = tuple(a for a in range(len(shape)) if a != axis)
      along = group_mask
      if self.channel_group is not None:
        # Position p along the axis takes the mask of the channel it belongs to (a gather with
        # constant indices); positions of no channel of this group stay kept.
        positions = np.asarray(self.channel_group.members[m].index)
        owner = np.full(shape[axis], -1, np.int32)
        owner[positions.ravel()] = np.repeat(np.arange(positions.shape[0]), positions.shape[1])
        along = jnp.where(jnp.asarray(owner >= 0), group_mask[np.maximum(owner, 0)], True)
      out.append((index, jnp.broadcast_to(jnp.expand_dims(along, other), shape)))
    return out


class Plan(NamedTuple):
  """The validated selection of one params tree (see the module docstring).

  Attributes:
    owner: the transformation's name, for messages.
    names: every leaf's name, in ``jax.tree.leaves`` order.
    shapes: every leaf's shape.
    masked: indices of the leaves that carry a mask.
    units: the units of selection.
  """

  owner: str
  names: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  masked: tuple[int, ...]
  units: tuple[Unit, ...]

  def combine(self, unit_masks: Sequence[jax.Array]) -> dict[int, jax.Array]:
    """Leaf masks (index -> bool array) from one group mask per unit; a leaf in several units
    keeps what all of them keep."""
    out: dict[int, jax.Array] = {}
    # leaf -> (stacked axis, layer -> mask): a stacked leaf's layers, one unit or more each (a
    # leaf in two groups, per layer, keeps what both keep)
    layers: dict[int, tuple[int, dict[int, jax.Array]]] = {}
    for unit, group_mask in zip(self.units, unit_masks):
      for index, mask in unit.expand(group_mask, self.shapes):
        if unit.layer is not None:
          axis, layer = unit.layer
          parts = layers.setdefault(index, (axis, {}))[1]
          parts[layer] = mask if layer not in parts else parts[layer] & mask
        else:
          out[index] = mask if index not in out else out[index] & mask
    for index, (axis, parts) in layers.items():
      mask = jnp.stack([parts[layer] for layer in sorted(parts)], axis=axis)
      out[index] = mask if index not in out else out[index] & mask
    return out


def _channel_positions(g: ChannelGroup, m: int, shape: tuple[int, ...], owner: str) -> frozenset:
  """The positions of member ``m`` of a channel group, checked against the leaf's shape."""
  member = g.members[m]
  label = f"{owner}: group {g.name!r} (first member {g.members[0].path!r})"
  index = np.asarray(member.index)
  if not np.issubdtype(index.dtype, np.integer) or index.ndim != 2 or index.shape[0] != g.size:
    raise ValueError(
      f"{label}: the index of member {member.path!r} must be an integer array of shape "
      f"({g.size}, k), got {index.dtype}{list(index.shape)}."
    )
  if index.shape[1] < 1:
    raise ValueError(f"{label}: member {member.path!r} gives no position (k = 0) per channel.")
  length = shape[member.axis % len(shape)]
  if index.min() < 0 or index.max() >= length:
    raise ValueError(
      f"{label}: member {member.path!r} has positions outside [0, {length}) along axis "
      f"{member.axis} (its leaf has shape {shape})."
    )
  positions = frozenset(index.ravel().tolist())
  if len(positions) != index.size:
    raise ValueError(
      f"{label}: member {member.path!r} names a position along axis {member.axis} twice; each "
      f"belongs to one channel."
    )
  return positions


def _group_units(
  params_named: list[tuple[str, Any]],
  flags: list[bool],
  groups: Sequence[Group | ChannelGroup],
  owner: str,
) -> list[Unit]:
  index_of = {name: i for i, (name, _) in enumerate(params_named)}
  # (leaf, axis) -> [(group name, its positions, None for the whole axis)]
  seen: dict[tuple[int, int], list[tuple[str, frozenset | None]]] = {}
  units = []
  for g in groups:
    channel_group = None if isinstance(g, Group) else g
    members, size, total = [], None, 0
    pairs = [(m[0], m[1]) for m in g.members]
    first = repr(pairs[0][0]) if pairs else "none"
    if channel_group is not None:
      if not pairs:
        raise ValueError(f"{owner}: group {g.name!r} has no members.")
      count = channel_group.size
      if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(
          f"{owner}: group {g.name!r} (first member {first}): size must be a positive int, "
          f"got {count!r}."
        )
    for m, (name, axis) in enumerate(pairs):
      label = f"group {g.name!r}" + ("" if channel_group is None else f" (first member {first})")
      if name not in index_of:
        raise ValueError(
          f"{owner}: {label} names leaf {name!r}, which the params do not have; "
          f"leaf names are {list(index_of)}."
        )
      i = index_of[name]
      leaf = params_named[i][1]
      shape = tuple(jnp.shape(leaf))
      if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
        raise TypeError(
          f"{owner}: {label}: leaf {name!r} of dtype {jnp.result_type(leaf)} "
          f"cannot be pruned (only floating-point leaves can)."
        )
      if not -len(shape) <= axis < len(shape):
        raise ValueError(
          f"{owner}: {label}: axis {axis} is out of range for leaf {name!r} of shape {shape}."
        )
      axis = axis % len(shape)
      positions = None
      if channel_group is None:
        if size is not None and shape[axis] != size:
          raise ValueError(
            f"{owner}: {label}: leaf {name!r} has {shape[axis]} entries along "
            f"axis {axis}, the group's first member {size}."
          )
        size = shape[axis] if size is None else size
        total += math.prod(shape)
      else:
        positions = _channel_positions(channel_group, m, shape, owner)
        size = channel_group.size
        total += len(positions) * math.prod(shape) // shape[axis]
      for other, taken in seen.get((i, axis), []):
        if taken is None or positions is None:
          raise ValueError(
            f"{owner}: leaf {name!r} axis {axis} is in two groups, {other!r} and {g.name!r}."
          )
        common = sorted(taken & positions)
        if common:
          raise ValueError(
            f"{owner}: leaf {name!r} axis {axis}: positions {common[:4]} are in two groups, "
            f"{other!r} and {g.name!r}; a position belongs to one channel."
          )
      seen.setdefault((i, axis), []).append((g.name, positions))
      members.append((i, axis))
      flags[i] = False  # a group member is pruned by its groups, not by the leaf pattern
    assert size is not None  # a group has members
    first_shape = tuple(jnp.shape(params_named[members[0][0]][1]))
    units.append(
      Unit(g.name, tuple(members), None, first_shape, int(size), total, None, channel_group)
    )
  return units


def _group_layers(
  unit: Unit, named: list[tuple[str, Any]], stacked: allocation_lib.Stacked, owner: str
) -> list[Unit]:
  """A group over stacked leaves as one unit per layer (``name[l]``: slice ``l`` of every member),
  so that its units are allocated, and selected, layer by layer; a group over no stacked leaf as
  it is."""
  axes, lengths = [], []
  for i, axis in unit.members:
    name, leaf = named[i]
    ndim = jnp.ndim(leaf)
    stacked_axis = stacked.axis_of(name, ndim, owner)
    axes.append(stacked_axis)
    if stacked_axis is not None:
      lengths.append(jnp.shape(leaf)[stacked_axis])
      if axis is not None and axis % ndim == stacked_axis:
        raise ValueError(
          f"{owner}: group {unit.name!r} couples leaf {name!r} along axis {stacked_axis}, its "
          f"stacked (layer) axis; a group's axis must be one inside the layers."
        )
  if all(a is None for a in axes):
    return [unit]
  names = [named[i][0] for i, _ in unit.members]
  if any(a is None for a in axes) or len(set(axes)) > 1 or len(set(lengths)) > 1:
    found = {
      n: (a, None if a is None else jnp.shape(named[i][1])[a])
      for n, a, (i, _) in zip(names, axes, unit.members)
    }
    raise ValueError(
      f"{owner}: group {unit.name!r} has members stacked differently (leaf: (stacked axis, "
      f"layers)) {found}; to be split into layers, every member must be stacked along the same "
      f"axis with the same number of layers."
    )
  axis, count = axes[0], lengths[0]
  assert axis is not None  # every member is stacked (checked above)
  first = jnp.shape(named[unit.members[0][0]][1])
  shape = tuple(first[:axis]) + tuple(first[axis + 1 :])
  return [
    unit._replace(
      name=f"{unit.name}[{layer}]", shape=shape, size=unit.size // count, layer=(axis, layer)
    )
    for layer in range(count)
  ]


def make_plan(params: Params, sel: Selection, owner: str) -> Plan:
  """The plan of ``params`` under ``sel`` (see the module docstring).

  Raises:
    ValueError: for ``params=None``, a pattern that does not fit a leaf, an override or group that
      names nothing, or a leaf in two groups along one axis.
    TypeError: for a non-floating-point leaf selected for pruning.
  """
  if params is None:
    raise ValueError(
      f"{owner}: params must be given to update (tx.update(updates, state, params))."
    )
  named = leaves_lib.named_leaves(leaves_lib.unwrap_variables(params))
  flags = leaves_lib.prunable_paths(params, sel.prune, owner=owner)
  stacked = sel.distribution if isinstance(sel.distribution, allocation_lib.Stacked) else None
  group_units = _group_units(named, flags, sel.groups, owner)
  if stacked is not None:
    group_units = [u for unit in group_units for u in _group_layers(unit, named, stacked, owner)]
  units = []
  for i, ((name, leaf), selected) in enumerate(zip(named, flags)):
    if not selected:
      continue
    shape = tuple(jnp.shape(leaf))
    axis = None if stacked is None else stacked.axis_of(name, len(shape), owner)
    own = shape if axis is None else shape[:axis] + shape[axis + 1 :]
    try:
      sel.pattern.validate(name, own)
    except ValueError as e:
      raise ValueError(f"{owner}: {e}") from None
    groups = (
      math.prod(own) if isinstance(sel.pattern, patterns_lib.NM) else sel.pattern.num_groups(own)
    )
    for layer in [None] if axis is None else [(axis, n) for n in range(shape[axis])]:
      label = name if layer is None else f"{name}[{layer[1]}]"
      units.append(
        Unit(label, ((i, None),), sel.pattern, own, groups, math.prod(own), None, layer=layer)
      )
  units += group_units
  matched_by: dict[str, str] = {}
  for key in sel.overrides:
    hits = [
      u.name
      for u in units
      if re.fullmatch(key, u.name)
      or (u.layer is not None and re.fullmatch(key, named[u.members[0][0]][0]))
    ]
    if not hits:
      raise ValueError(
        f"{owner}: override pattern {key!r} matches no pruned leaf; pruned leaves "
        f"are {[u.name for u in units]}."
      )
    for name in hits:
      if name in matched_by:
        raise ValueError(
          f"{owner}: leaf {name!r} is matched by two override patterns, "
          f"{matched_by[name]!r} and {key!r}."
        )
      matched_by[name] = key
  units = [
    u._replace(override=sel.overrides[matched_by[u.name]]) if u.name in matched_by else u
    for u in units
  ]
  masked = sorted({i for u in units for i, _ in u.members})
  return Plan(
    owner,
    tuple(n for n, _ in named),
    tuple(tuple(jnp.shape(x)) for _, x in named),
    tuple(masked),
    tuple(units),
  )


def num_pruned(sparsity: Sparsity, size: int) -> int | jax.Array:
  """``round(sparsity * size)``: exact for Python numbers, float32 for arrays."""
  if isinstance(sparsity, (int, float)):
    return round(sparsity * size)
  return jnp.round(jnp.asarray(sparsity, jnp.float32) * size).astype(jnp.int32)


def _allocate(
  plan: Plan, distribution: Distribution, sparsity: Sparsity, units: Sequence[Unit]
) -> list[Any]:
  """The distribution's per-unit shares of ``sparsity``, checked (``None`` each for global)."""
  return allocation_lib.allocate(
    distribution, sparsity, [u.shape for u in units], [u.name for u in units], owner=plan.owner
  )


def targets(
  plan: Plan, sel: Selection, sparsity: Sparsity | None, initial_sparsity: Sparsity | None = None
) -> tuple[list[Any], list[Any]]:
  """Per-unit final and initial sparsities.

  The final target of a unit is its override, else its share under the distribution, else ``None``
  (a global threshold, shared by every such unit). The initial sparsity (of a ramping schedule) is
  shared the same way (a unit with an override starts from ``initial_sparsity`` itself); ``None``
  entries without a ramp.

  Raises:
    ValueError: if a unit's initial sparsity is above its target (the ramp would revive weights), or
      the distribution returns too few or bad values.
  """
  if sel.is_nm:
    return [None] * len(plan.units), [None] * len(plan.units)
  free = [u for u in plan.units if u.override is None]

  def shares(value):
    it = iter(_allocate(plan, sel.distribution, value, free))
    return [u.override if u.override is not None else next(it) for u in plan.units]

  final = shares(sparsity)
  if initial_sparsity is None:
    return final, [None] * len(plan.units)
  it = iter(_allocate(plan, sel.distribution, initial_sparsity, free))
  initial = [initial_sparsity if u.override is not None else next(it) for u in plan.units]
  initial = [initial_sparsity if i is None else i for i in initial]  # global: the number itself
  for u, s_f, s_i in zip(plan.units, final, initial):
    f = number(sparsity if s_f is None else s_f, "sparsity")
    i = number(s_i, "initial sparsity")
    if f is not None and i is not None and i > f + 1e-9:
      raise ValueError(
        f"{plan.owner}: the schedule starts leaf {u.name!r} at sparsity {i:.6g}, "
        f"above its target {f:.6g}: weights pruned early would be revived. Lower "
        f"the schedule's initial_sparsity to at most the target."
      )
  return final, initial
