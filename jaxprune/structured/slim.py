"""`slim`: remove channel groups physically, returning smaller params and the function they run in.

The slimmed function re-evaluates the jaxpr of ``fn`` equation by equation on the smaller arrays.
Every value's kept positions follow from the channel graph (`jaxprune.structured.graph`): a position
is kept unless one of its classes belongs to a removed channel. Most equations run unchanged on
smaller operands (elementwise ops, matrix products, reductions, transposes, concatenations);
equations whose parameters hold sizes get them recomputed (reshapes, broadcasts, splits, slices,
a grouped convolution's group count); values created at full size inside the function (constants,
``iota``, broadcasts of scalars) are computed and then sliced. Because `dependency_groups` only
returns groups whose removed positions contribute nothing but zeros, the result equals ``fn`` on the
params with the removed channels zeroed in every member.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune import leaves as leaves_lib
from jaxprune.progress import progress
from jaxprune.structured import discovery
from jaxprune.structured import graph as graph_lib
from jaxprune.structured.channel_group import ChannelGroup, check_keeps
from jaxprune.typing import Params

__all__ = ["slim"]


def slim(
  fn: Callable[..., Any],
  params: Params,
  groups: Sequence[ChannelGroup],
  keeps: Sequence[Any],
  *,
  progress_bar: bool | None = None,
) -> tuple[Params, Callable[..., Any]]:
  """Removes the channels ``keeps`` drops: smaller params, and the function that runs on them.

  Args:
    fn: the function the groups were read from, ``fn(params, *args)``.
    params: its params (the full-size ones).
    groups: groups from `jaxprune.structured.dependency_groups` on ``fn``.
    keeps: one boolean array of length ``group.size`` per group (``True``: kept), e.g. from a
      pruner's state or from an importance and a ratio.
    progress_bar: a progress bar over the groups while slimming (`jaxprune.progress`).

  Returns:
    ``(small_params, small_fn)``: ``small_params`` has the params' structure with physically
    smaller arrays; ``small_fn(small_params, *args)`` equals ``fn(masked, *args)``, ``masked`` the
    params with the removed channels zeroed in every member (`jaxprune.structured.keep_masks`). It
    can be jitted and exported with ``jax.export``. It is traced and checked against the groups
    once per shape of ``args``.

  Raises:
    ValueError: for a keep of the wrong length or that removes every channel of its group, a
      member that is not a leaf of ``params`` or whose positions do not fit it, and (when
      ``small_fn`` is first called) a group that ``fn`` does not have.
    TypeError: for a keep that is not boolean.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np, jaxprune
    >>> params = {"l0": {"kernel": jnp.ones((4, 8))}, "l1": {"kernel": jnp.ones((8, 2))}}
    >>> fn = lambda p, x: jax.nn.relu(x @ p["l0"]["kernel"]) @ p["l1"]["kernel"]
    >>> x = jnp.ones((3, 4))
    >>> groups = jaxprune.structured.dependency_groups(fn, params, x)
    >>> small, small_fn = jaxprune.structured.slim(fn, params, groups, [np.arange(8) < 3])
    >>> small["l0"]["kernel"].shape, small["l1"]["kernel"].shape, small_fn(small, x).shape
    ((4, 3), (3, 2), (3, 2))
  """
  keeps = check_keeps(groups, keeps)
  template = leaves_lib.unwrap_variables(params)
  named = dict(leaves_lib.named_leaves(template))
  removed: dict[str, dict[int, np.ndarray]] = {}
  for group, keep in progress(
    list(zip(groups, keeps)), desc="slim", unit="group", enabled=progress_bar
  ):
    for member in group.members:
      if member.path not in named:
        raise ValueError(
          f"slim: group {group.name}: member {member.path} is not a leaf of the params."
        )
      shape = np.shape(named[member.path])
      if member.axis >= len(shape) or (
        member.index.size and int(member.index.max()) >= shape[member.axis]
      ):
        raise ValueError(
          f"slim: group {group.name}: member {member.path} axis {member.axis} does not fit the "
          f"leaf's shape {shape}; the group was read from another function or params."
        )
      axes = removed.setdefault(member.path, {})
      drop = member.index[~keep].ravel()
      axes[member.axis] = np.union1d(axes.get(member.axis, np.zeros(0, np.int64)), drop)

  def shrink(path, leaf):
    name = leaves_lib.path_str(path)
    for axis, drop in removed.get(name, {}).items():
      leaf = jnp.take(leaf, np.setdiff1d(np.arange(leaf.shape[axis]), drop), axis=axis)
    return leaf

  # Mapped over the params themselves: nnx state keeps its Variable types.
  small_params = jax.tree_util.tree_map_with_path(shrink, params)
  structs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), params)
  cache: dict[Any, _Slimmed] = {}

  def small_fn(small: Params, *args: Any) -> Any:
    key = (
      jax.tree.structure(args),
      tuple((tuple(np.shape(a)), jnp.result_type(a)) for a in jax.tree.leaves(args)),
    )
    if key not in cache:
      arg_structs = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), args
      )
      cache[key] = _Slimmed(fn, structs, arg_structs, groups, keeps)
    return cache[key](small, *args)

  return small_params, small_fn


class _Slimmed:
  """``fn`` at one shape of its arguments, evaluated on slimmed params."""

  def __init__(
    self,
    fn: Callable[..., Any],
    structs: Any,
    arg_structs: Any,
    groups: Sequence[ChannelGroup],
    keeps: Sequence[np.ndarray],
  ) -> None:
    g = graph_lib.trace(fn, structs, *arg_structs)
    found = discovery._groups(g, min_size=1)
    removed_roots: set[int] = set()
    for group, keep in zip(groups, keeps):
      match = [roots for other, roots in found if _same(other, group)]
      if not match:
        raise ValueError(
          f"slim: group {group.name} (first member {group.members[0].path}) is not a group of "
          "this function at these argument shapes; read the groups with dependency_groups from "
          "the same function and params."
        )
      removed_roots.update(r for r, k in zip(match[0], keep) if not k)
    self.g = g
    self.removed = removed_roots
    self.consts = g.closed.consts
    self._kept_cache: dict[int, list[np.ndarray | None]] = {}

  def kept(self, frame: graph_lib.Frame, v: Any) -> list[np.ndarray | None]:
    """Per axis of ``v``: the kept positions, or None where the axis keeps them all."""
    if isinstance(v, graph_lib.Literal):
      return [None] * np.ndim(v.val)
    axes = frame.axes[v]
    key = id(axes)
    if key not in self._kept_cache:
      nodes = self.g.nodes
      out: list[np.ndarray | None] = []
      for axis in axes:
        keep = np.asarray(
          [not any(nodes.find(a) in self.removed for a in nodes.expand(x)) for x in axis.tolist()],
          bool,
        )
        out.append(None if keep.all() else np.flatnonzero(keep))
      self._kept_cache[key] = out
    return self._kept_cache[key]

  def __call__(self, small: Params, *args: Any) -> Any:
    leaves = jax.tree.leaves(small) + jax.tree.leaves(args)
    outs = self.run(self.g.frame, self.consts, leaves)
    return jax.tree.unflatten(self.g.out_tree, outs)

  def take(self, frame, v, value):
    for axis, idx in enumerate(self.kept(frame, v)):
      if idx is not None:
        value = jnp.take(value, idx, axis=axis)
    return value

  def run(self, frame: graph_lib.Frame, consts: Sequence[Any], args: Sequence[Any]) -> list:
    jaxpr = frame.jaxpr
    env: dict[Any, Any] = {}
    for v, c in zip(jaxpr.constvars, consts):
      env[v] = self.take(frame, v, c)
    for v, a in zip(jaxpr.invars, args):
      env[v] = a

    def read(v):
      return v.val if isinstance(v, graph_lib.Literal) else env[v]

    for i, eqn in enumerate(jaxpr.eqns):
      ins = [read(v) for v in eqn.invars]
      outs = self.equation(frame, i, eqn, ins)
      for v, value in zip(eqn.outvars, outs):
        env[v] = value
    return [read(v) for v in jaxpr.outvars]

  def equation(self, frame: graph_lib.Frame, i: int, eqn: Any, ins: list) -> list:
    name = eqn.primitive.name
    if i in frame.children:
      return self.nested(frame, i, eqn, ins)
    sliced_in = any(k is not None for v in eqn.invars for k in self.kept(frame, v))
    sliced_out = [any(k is not None for k in self.kept(frame, v)) for v in eqn.outvars]
    params = dict(eqn.params)
    if not sliced_in:
      outs = eqn.primitive.bind(*ins, **params)
      outs = list(outs) if eqn.primitive.multiple_results else [outs]
      return [self.take(frame, v, o) if s else o for v, o, s in zip(eqn.outvars, outs, sliced_out)]
    small_shapes = [self.small_shape(frame, v) for v in eqn.outvars]
    if name == "reshape":
      params["new_sizes"] = small_shapes[0]
      params["dimensions"] = None
    elif name == "broadcast_in_dim":
      params["shape"] = small_shapes[0]
    elif name == "split":
      axis = params["axis"]
      params["sizes"] = tuple(s[axis] for s in small_shapes)
    elif name == "slice":
      kept = self.kept(frame, eqn.invars[0])
      starts, limits = list(params["start_indices"]), list(params["limit_indices"])
      for d, idx in enumerate(kept):
        if idx is not None:
          starts[d] = int(np.searchsorted(idx, starts[d]))
          limits[d] = int(np.searchsorted(idx, limits[d]))
      params["start_indices"], params["limit_indices"] = tuple(starts), tuple(limits)
    elif name == "conv_general_dilated" and frame.notes.get(i) is not None:
      g_nodes = frame.notes[i]
      nodes = self.g.nodes
      params["feature_group_count"] = sum(
        not any(nodes.find(a) in self.removed for a in nodes.expand(int(x))) for x in g_nodes
      )
    outs = eqn.primitive.bind(*ins, **params)
    outs = list(outs) if eqn.primitive.multiple_results else [outs]
    for v, o, shape in zip(eqn.outvars, outs, small_shapes):
      if tuple(np.shape(o)) != shape:
        raise AssertionError(
          f"slim: {name} gave shape {np.shape(o)} where {shape} was expected (a bug in jaxprune)."
        )
    return outs

  def small_shape(self, frame: graph_lib.Frame, v: Any) -> tuple[int, ...]:
    return tuple(int(n) if k is None else len(k) for n, k in zip(v.aval.shape, self.kept(frame, v)))

  def nested(self, frame: graph_lib.Frame, i: int, eqn: Any, ins: list) -> list:
    name = eqn.primitive.name
    children = frame.children[i]
    if name == "scan":
      nc, nk = eqn.params["num_consts"], eqn.params["num_carry"]
      child = children[0]
      closed = eqn.params["jaxpr"]
      consts, init, xs = ins[:nc], ins[nc : nc + nk], ins[nc + nk :]

      def body(carry, x):
        outs = self.run(child, closed.consts, list(consts) + list(carry) + list(x))
        return outs[:nk], outs[nk:]

      carry, ys = lax.scan(
        body,
        list(init),
        list(xs) if xs else None,
        length=eqn.params["length"],
        reverse=eqn.params["reverse"],
        unroll=eqn.params["unroll"],
      )
      return list(carry) + list(ys)
    if name == "cond":
      index, *operands = ins
      branches = eqn.params["branches"]
      fns = [
        (lambda c, b: lambda *ops: self.run(c, b.consts, ops))(c, b)
        for c, b in zip(children, branches)
      ]
      return list(lax.switch(index, fns, *operands))
    if name == "while":
      cn, bn = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
      cond_frame, body_frame = children
      cconsts, bconsts, init = ins[:cn], ins[cn : cn + bn], ins[cn + bn :]
      cj, bj = eqn.params["cond_jaxpr"], eqn.params["body_jaxpr"]
      out = lax.while_loop(
        lambda c: self.run(cond_frame, cj.consts, list(cconsts) + list(c))[0],
        lambda c: self.run(body_frame, bj.consts, list(bconsts) + list(c)),
        list(init),
      )
      return list(out)
    inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr", eqn.params.get("fun_jaxpr")))
    consts = inner.consts if hasattr(inner, "consts") else []
    return self.run(children[0], consts, ins)


def _same(a: ChannelGroup, b: ChannelGroup) -> bool:
  if a.size != b.size or len(a.members) != len(b.members):
    return False
  return all(
    x.path == y.path and x.axis == y.axis and np.array_equal(x.index, y.index)
    for x, y in zip(a.members, b.members)
  )
