"""`dependency_groups`: the prunable channel groups of any JAX function, from its jaxpr.

The walk of `jaxprune.structured.graph` relates every position of every value to atomic channel
classes. The classes that reach neither the function's inputs nor its outputs nor an equation the
walk does not model are grouped by the parameter axes they appear in: one group per set of axes
(a dense layer's output features, its bias and the next layer's input features). A group is kept
only if removing its channels provably changes nothing else: in the function evaluated on params
whose removed channels are zero in every member, every sum, matrix product or convolution over a
removed position must only ever add zeros there (`_zero_check`). A layer norm over the channels,
for example, sums ``(x - mean) ** 2`` over them, which is not zero at a removed channel, so the
channels feeding it are not a group; a batch norm's statistics are per channel and are members.
"""

from __future__ import annotations

import collections
import hashlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxprune.checks import JaxpruneWarning
from jaxprune.structured import graph as graph_lib
from jaxprune.structured.channel_group import ChannelGroup, Member
from jaxprune.typing import Params

__all__ = ["dependency_groups", "fingerprint"]


def fingerprint(g: graph_lib.Graph) -> str:
  """A hash of the traced function and its params' structure (shapes and paths)."""
  text = str(g.closed.jaxpr) + "|" + "|".join(g.param_paths)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def dependency_groups(
  fn: Callable[..., Any], params: Params, *example_args: Any, min_size: int = 2
) -> list[ChannelGroup]:
  """The channel groups of ``fn(params, *example_args)`` that can be removed, read off its jaxpr.

  Works for any JAX function of a params pytree: Flax linen (``lambda v, x: model.apply(v, x)``
  with ``{"params": ..., "batch_stats": ...}``), nnx (``lambda s, x: nnx.merge(graphdef, s)(x)``),
  or plain functions of dicts. Couplings are followed through elementwise ops, broadcasts,
  reshapes (flatten, head splits), transposes, concatenations and splits, matrix products and
  (grouped, depthwise) convolutions, and into ``jit``, ``custom_jvp``/``custom_vjp``, ``remat``,
  ``scan``, ``cond`` and ``while``. Axes that reach the function's inputs or outputs are not
  prunable. An equation the walk does not model makes what it touches unprunable, with a warning
  naming the primitive and the leaves; it never produces a wrong group.

  Args:
    fn: called as ``fn(params, *example_args)``.
    params: the pytree of parameters (and other variables, e.g. batch-norm statistics).
    *example_args: example inputs (arrays or ``jax.ShapeDtypeStruct`` values).
    min_size: groups with fewer channels are left out (a group of one channel cannot be pruned
      without removing the layer).

  Returns:
    The groups, in the order of their first member in the params.

  Warns:
    JaxpruneWarning: naming each primitive the walk does not model and the leaves it made
      unprunable.

  Example:
    >>> import jax, jax.numpy as jnp, jaxprune
    >>> params = {"l0": {"kernel": jnp.ones((4, 8)), "bias": jnp.ones(8)},
    ...           "l1": {"kernel": jnp.ones((8, 2))}}
    >>> fn = lambda p, x: jax.nn.relu(x @ p["l0"]["kernel"] + p["l0"]["bias"]) @ p["l1"]["kernel"]
    >>> [(g.name, g.size, [m.path for m in g.members])
    ...  for g in jaxprune.structured.dependency_groups(fn, params, jnp.ones((3, 4)))]
    [('l0/kernel:1', 8, ['l0/bias', 'l0/kernel', 'l1/kernel'])]
  """
  g = graph_lib.trace(fn, params, *example_args)
  groups = [group for group, _ in _groups(g, min_size)]
  _warn_unknown(g)
  return groups


def _param_atoms(g: graph_lib.Graph) -> list[list[list[tuple[int, ...]]]]:
  """Per param leaf and axis: for each position, its atomic classes."""
  nodes = g.nodes
  return [
    [[tuple(nodes.find(a) for a in nodes.expand(x)) for x in axis.tolist()] for axis in axes]
    for axes in g.param_axes
  ]


def _groups(g: graph_lib.Graph, min_size: int) -> list[tuple[ChannelGroup, list[int]]]:
  """The valid groups of ``g``, each with the root of each of its channels' class."""
  nodes = g.nodes
  atoms = _param_atoms(g)
  signature: dict[int, list[tuple[int, int]]] = {}
  for leaf, axes in enumerate(atoms):
    for axis, positions in enumerate(axes):
      for expansion in positions:
        for root in expansion:
          if root in nodes.poisoned:
            continue
          where = signature.setdefault(root, [])
          if not where or where[-1] != (leaf, axis):
            where.append((leaf, axis))
  by_signature: dict[tuple[tuple[int, int], ...], list[int]] = {}
  for root, places in signature.items():
    by_signature.setdefault(tuple(sorted(set(places))), []).append(root)
  print_ = fingerprint(g)
  found = []
  gid_of: dict[int, int] = {}
  candidates = []
  for places_key, roots in by_signature.items():
    if len(roots) < min_size:
      continue
    members: list[Member] = []
    ok = True
    root_set = set(roots)
    for leaf, axis in places_key:
      rows: dict[int, list[int]] = {r: [] for r in roots}
      clash = False
      for p, e in enumerate(atoms[leaf][axis]):
        hits = [a for a in e if a in root_set]
        clash |= len(hits) > 1  # a position holding two channels of one group: not modelled
        for a in hits:
          rows[a].append(p)
      if clash or len({len(r) for r in rows.values()}) != 1:
        ok = False
        break
      index = np.asarray([rows[r] for r in roots], np.int32)
      members.append(Member(g.param_paths[leaf], axis, index))
    if ok:
      candidates.append((places_key, roots, members))
  for gid, (_, roots, _) in enumerate(candidates):
    for r in roots:
      gid_of[r] = gid
  valid = _zero_check(g, gid_of, len(candidates))
  named = dict(zip(g.param_paths, g.param_axes))
  for gid, (places_key, roots, members) in enumerate(candidates):
    if not valid[gid]:
      continue
    first = _producer(ChannelGroup("", len(roots), tuple(members), print_), named)
    group = ChannelGroup(f"{first.path}:{first.axis}", len(roots), tuple(members), print_)
    found.append((places_key, group, roots))
  found.sort(key=lambda item: item[0])
  # Groups named after the same axis (its slices, a grouped convolution's feature groups and the
  # channels within them) are told apart by their first channel's positions on it:
  # ``Dense_0/kernel:1@2``, ``Conv_0/kernel:3@0,1,2,3``.
  counts = collections.Counter(group.name for _, group, _ in found)
  out = []
  for _, group, roots in found:
    if counts[group.name] > 1:
      first = _producer(group, named).index[0]
      group = group._replace(name=f"{group.name}@{','.join(str(int(i)) for i in first)}")
    out.append((group, roots))
  return out


def _producer(group: ChannelGroup, ndims: Mapping[str, Sequence[Any]]) -> Member:
  """The member a group is named after: the layer that produces the channels (a kernel's last
  axis, the kernel before its bias) if one is a member, else the first member."""
  members = group.members
  producers = [m for m in members if len(ndims[m.path]) >= 2 and m.axis == len(ndims[m.path]) - 1]
  producers.sort(key=lambda m: -len(ndims[m.path]))
  return (producers or list(members))[0]


def _warn_unknown(g: graph_lib.Graph) -> None:
  nodes = g.nodes
  if not nodes.unknown:
    return
  atoms = _param_atoms(g)
  for primitive, roots in nodes.unknown.items():
    poisoned = {nodes.find(r) for r in roots}
    leaves = sorted(
      {
        g.param_paths[leaf]
        for leaf, axes in enumerate(atoms)
        for positions in axes
        for e in positions
        if poisoned.intersection(e)
      }
    )
    if leaves:
      warnings.warn(
        f"dependency_groups: the primitive {primitive!r} is not modelled; the channels it touches "
        f"are not prunable, in: {', '.join(leaves)}.",
        JaxpruneWarning,
        stacklevel=3,
      )


# --- the zero check ------------------------------------------------------------------------------


class _Carry:
  """Which axes of each value hold channels of which group."""

  def __init__(self, g: graph_lib.Graph, gid_of: dict[int, int]) -> None:
    self.g, self.gid_of = g, gid_of
    self.cache: dict[int, list[set[int]]] = {}

  def axes(self, frame: graph_lib.Frame, v: Any) -> list[set[int]]:
    if isinstance(v, graph_lib.Literal):
      return []
    key = id(frame.axes[v])
    if key not in self.cache:
      nodes = self.g.nodes
      out = []
      for axis in frame.axes[v]:
        gids = set()
        for x in axis.tolist():
          for a in nodes.expand(x):
            gid = self.gid_of.get(nodes.find(a))
            if gid is not None:
              gids.add(gid)
        out.append(gids)
      self.cache[key] = out
    return self.cache[key]


def _zero_check(g: graph_lib.Graph, gid_of: dict[int, int], count: int) -> list[bool]:
  """For each candidate group: whether removing it provably changes nothing else.

  ``Z(v)`` says that value ``v`` is zero at every element whose position along some axis holds a
  channel of the group, in the function evaluated with the group's channels zeroed in every member
  (params are, other inputs and constants are not). The group is valid if every reduction, matrix
  product or convolution over its channels only adds elements that are zero by ``Z``, and no
  max/min/argmax reduction runs over them.
  """
  carry = _Carry(g, gid_of)
  valid = [True] * count
  for gid in range(count):
    z_in = [any(gid in s for s in carry.axes(g.frame, v)) for v in g.frame.jaxpr.invars]
    z_in = [z if i < g.num_params else False for i, z in enumerate(z_in)]
    ok, _ = _check_frame(g.frame, gid, z_in, carry)
    valid[gid] = ok
  return valid


def _is_zero_literal(v: Any) -> bool:
  return isinstance(v, graph_lib.Literal) and np.ndim(v.val) == 0 and v.val == 0


def _check_frame(
  frame: graph_lib.Frame, gid: int, z_in: list[bool], carry: _Carry
) -> tuple[bool, list[bool]]:
  z: dict[Any, bool] = {}
  jaxpr = frame.jaxpr
  for v, zv in zip(jaxpr.invars, z_in):
    z[v] = zv
  for v in jaxpr.constvars:
    z[v] = False

  def has(v):
    return any(gid in s for s in carry.axes(frame, v))

  def cax(v):
    return {d for d, s in enumerate(carry.axes(frame, v)) if gid in s}

  def zof(v):
    return False if isinstance(v, graph_lib.Literal) else z.get(v, False)

  for i, eqn in enumerate(jaxpr.eqns):
    name = eqn.primitive.name
    ins, outs = eqn.invars, eqn.outvars
    if not any(has(v) for v in ins) and not any(has(v) for v in outs):
      for v in outs:
        z[v] = False
      continue
    out_z: list[bool]
    if i in frame.children and name == "scan":
      ok, out_z = _check_scan(frame, i, eqn, gid, [zof(v) for v in ins], carry)
      if not ok:
        return False, []
    elif i in frame.children and name == "cond":
      out_z = [True] * len(outs)
      for child in frame.children[i]:
        ok, branch = _check_frame(child, gid, [zof(v) for v in ins[1:]], carry)
        if not ok:
          return False, []
        out_z = [a and b for a, b in zip(out_z, branch)]
    elif i in frame.children and name == "while":
      ok, out_z = _check_while(frame, i, eqn, gid, [zof(v) for v in ins], carry)
      if not ok:
        return False, []
    elif i in frame.children:
      ok, out_z = _check_frame(frame.children[i][0], gid, [zof(v) for v in ins], carry)
      if not ok:
        return False, []
    else:
      result = _rule(name, eqn, has, cax, zof)
      if result is None:
        return False, []
      out_z = result
    for v, zv in zip(outs, out_z):
      z[v] = bool(zv)
  return True, [zof(v) if not isinstance(v, graph_lib.Literal) else False for v in jaxpr.outvars]


def _rule(name: str, eqn: Any, has: Callable, cax: Callable, zof: Callable) -> list[bool] | None:
  """Z of an equation's results, or None if the equation sums over a nonzero removed position."""
  ins, outs = eqn.invars, eqn.outvars
  out = outs[0] if outs else None
  if name in graph_lib._ZERO_PRESERVING_UNARY:
    return [zof(ins[0]) and cax(ins[0]) >= cax(out)]
  if name in graph_lib._ADDITIVE or name in ("select_n", "clamp"):
    operands = ins[1:] if name == "select_n" else ins
    if name == "clamp":
      operands = [ins[1]]
      if not (_is_zero_literal(ins[0]) or zof(ins[0])) or not (
        _is_zero_literal(ins[2]) or zof(ins[2])
      ):
        return [False]
    return [all(_is_zero_literal(v) or (zof(v) and cax(v) >= cax(out)) for v in operands)]
  if name in graph_lib._MULTIPLICATIVE:
    covered = set().union(*[cax(v) for v in ins if zof(v)]) if ins else set()
    return [covered >= cax(out)]
  if name == "div":
    return [zof(ins[0]) and cax(ins[0]) >= cax(out)]
  if name == "dot_general":
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    if any(a in cax(lhs) for a in lc) and not (zof(lhs) or zof(rhs)):
      return None
    nb = len(lb)
    lfree = [d for d in range(len(lhs.aval.shape)) if d not in lc and d not in lb]
    rfree = [d for d in range(len(rhs.aval.shape)) if d not in rc and d not in rb]
    lmap = {d: j for j, d in enumerate(lb)} | {d: nb + j for j, d in enumerate(lfree)}
    rmap = {d: j for j, d in enumerate(rb)} | {d: nb + len(lfree) + j for j, d in enumerate(rfree)}
    covered = set()
    if zof(lhs):
      covered |= {lmap[d] for d in cax(lhs) if d in lmap}
    if zof(rhs):
      covered |= {rmap[d] for d in cax(rhs) if d in rmap}
    return [covered >= cax(out)]
  if name == "conv_general_dilated":
    lhs, rhs = ins
    dn = eqn.params["dimension_numbers"]
    if dn.lhs_spec[1] in cax(lhs) and not (zof(lhs) or zof(rhs)):
      return None
    covered = set()
    if zof(lhs) and dn.lhs_spec[0] in cax(lhs):
      covered.add(dn.out_spec[0])
    if zof(rhs) and dn.rhs_spec[0] in cax(rhs):
      covered.add(dn.out_spec[1])
    return [covered >= cax(out)]
  if name in graph_lib._REDUCTIONS:
    reduced = set(eqn.params["axes"])
    if reduced & cax(ins[0]):
      if name != "reduce_sum" or not zof(ins[0]):
        return None
    return [zof(ins[0]) and name not in ("argmax", "argmin")]
  if name in ("reduce_window_max", "reduce_window_min", "reduce_window_sum"):
    return [zof(ins[0])]  # windows only over axes that hold no channels (graph.py)
  if name == "broadcast_in_dim":
    operand = ins[0]
    dims = eqn.params["broadcast_dimensions"]
    mapped = {dims[d] for d in cax(operand)}
    return [zof(operand) and mapped >= cax(out)]
  if name in ("reshape", "transpose", "squeeze", "rev", "slice", "copy", "copy_p"):
    return [zof(ins[0])]
  if name == "split":
    return [zof(ins[0])] * len(outs)
  if name == "concatenate":
    return [all(zof(v) for v in ins if has(v))]
  if name == "pad":
    return [zof(ins[0]) and _is_zero_literal(ins[1])]
  return [False] * len(outs)


def _check_scan(
  frame: graph_lib.Frame, i: int, eqn: Any, gid: int, z_ins: list[bool], carry: _Carry
) -> tuple[bool, list[bool]]:
  nc, nk = eqn.params["num_consts"], eqn.params["num_carry"]
  child = frame.children[i][0]
  z_carry = list(z_ins[nc : nc + nk])
  for _ in range(nk + 1):
    ok, out = _check_frame(child, gid, z_ins[:nc] + z_carry + z_ins[nc + nk :], carry)
    if not ok:
      return False, []
    new = [a and b for a, b in zip(z_carry, out[:nk])]
    if new == z_carry:
      return True, new + out[nk:]
    z_carry = new
  return False, []


def _check_while(
  frame: graph_lib.Frame, i: int, eqn: Any, gid: int, z_ins: list[bool], carry: _Carry
) -> tuple[bool, list[bool]]:
  cn, bn = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
  cond_frame, body_frame = frame.children[i]
  z_carry = list(z_ins[cn + bn :])
  for _ in range(len(z_carry) + 1):
    ok, _ = _check_frame(cond_frame, gid, z_ins[:cn] + z_carry, carry)
    if not ok:
      return False, []
    ok, out = _check_frame(body_frame, gid, z_ins[cn : cn + bn] + z_carry, carry)
    if not ok:
      return False, []
    new = [a and b for a, b in zip(z_carry, out)]
    if new == z_carry:
      return True, new
    z_carry = new
  return False, []
