"""The channel graph of a JAX function, read off its jaxpr.

Every position along every axis of every value of ``fn(params, *args)`` is a node. Equations relate
the positions of their operands and results: an elementwise op makes position ``p`` of every operand
the same channel as position ``p`` of the result, a matrix product ties the contracted positions of
its two operands, a reshape from ``(H, W, C)`` to ``(H * W * C,)`` makes each flattened position
the product of an ``h``, a ``w`` and a ``c`` node, and a reshape of ``(H * D,)`` into ``(H, D)``
splits each position into a head node and a dimension node. Nodes are kept in a union-find whose
classes may be *refined* into ordered products of finer classes, so a position is always an ordered
product of atomic classes (most often one). A position is removed when any of its classes is.

Classes that touch the function's inputs or outputs, or that pass through an equation the walk does
not model, are not prunable. The others, grouped by the set of parameter axes they appear in, are
the candidate channel groups; `dependency_groups` keeps those whose removal provably leaves the rest
of the computation unchanged (see `_zero_check`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core

from jaxprune import leaves as leaves_lib

__all__ = ["Frame", "Graph", "trace"]

Literal = jex_core.Literal

# Elementwise primitives whose result is zero wherever all their (non-literal) inputs are zero.
_ZERO_PRESERVING_UNARY = {
  "neg", "abs", "sign", "floor", "ceil", "round", "sqrt", "cbrt", "tanh", "tan", "sin", "asin",
  "atan", "sinh", "asinh", "atanh", "erf", "erf_inv", "expm1", "log1p", "square", "integer_pow",
  "convert_element_type", "copy", "copy_p", "reduce_precision", "real", "imag", "conj",
  "optimization_barrier", "stop_gradient",
}  # fmt: skip
_OTHER_UNARY = {
  "exp", "exp2", "log", "cos", "cosh", "acos", "acosh", "logistic", "rsqrt", "is_finite", "not",
  "lgamma", "digamma", "population_count", "clz",
}  # fmt: skip
_ADDITIVE = {"add", "sub", "max", "min", "add_any", "or", "xor"}
_MULTIPLICATIVE = {"mul", "and"}
_OTHER_BINARY = {
  "div", "pow", "rem", "atan2", "nextafter", "eq", "ne", "lt", "le", "gt", "ge", "shift_left",
  "shift_right_logical", "shift_right_arithmetic",
}  # fmt: skip
_REDUCTIONS = {
  "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
  "argmax", "argmin",
}  # fmt: skip
_CALLS = {"pjit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call",
          "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin"}  # fmt: skip


class Nodes:
  """A union-find over positions whose classes can be refined into ordered products of classes."""

  def __init__(self) -> None:
    self.parent: list[int] = []
    self.refined: dict[int, tuple[int, ...]] = {}
    self.poisoned: set[int] = set()
    # Roots poisoned by an equation the walk does not model: primitive name -> atomic roots.
    self.unknown: dict[str, list[int]] = {}

  def new(self, count: int) -> np.ndarray:
    start = len(self.parent)
    self.parent.extend(range(start, start + count))
    return np.arange(start, start + count, dtype=np.int64)

  def find(self, x: int) -> int:
    parent = self.parent
    root = x
    while parent[root] != root:
      root = parent[root]
    while parent[x] != root:
      parent[x], x = root, parent[x]
    return root

  def expand(self, x: int) -> tuple[int, ...]:
    root = self.find(x)
    children = self.refined.get(root)
    if children is None:
      return (root,)
    return tuple(itertools.chain.from_iterable(self.expand(c) for c in children))

  def is_poisoned(self, x: int) -> bool:
    return any(self.find(a) in self.poisoned for a in self.expand(x))

  def poison(self, x: int, reason: str | None = None) -> None:
    for atom in self.expand(x):
      root = self.find(atom)
      self.poisoned.add(root)
      if reason is not None:
        self.unknown.setdefault(reason, []).append(root)

  def _union_atoms(self, a: int, b: int) -> None:
    ra, rb = self.find(a), self.find(b)
    if ra == rb:
      return
    self.parent[rb] = ra
    if rb in self.poisoned:
      self.poisoned.add(ra)

  def _refine(self, atom: int, product: tuple[int, ...]) -> None:
    root = self.find(atom)
    if root in {self.find(a) for a in product}:
      self.poison(root)
      return
    self.refined[root] = product
    if root in self.poisoned:
      for a in product:
        self.poison(a)

  def unify(self, a: int, b: int) -> None:
    """Positions ``a`` and ``b`` hold the same channels."""
    ea, eb = self.expand(a), self.expand(b)
    if ea == eb:
      return
    if len(ea) == len(eb):
      for x, y in zip(ea, eb):
        self._union_atoms(x, y)
    elif len(ea) == 1:
      self._refine(ea[0], eb)
    elif len(eb) == 1:
      self._refine(eb[0], ea)
    else:  # two products of different lengths: not modelled
      self.poison(a)
      self.poison(b)

  def unify_axes(self, a: np.ndarray, b: np.ndarray) -> None:
    for x, y in zip(a.tolist(), b.tolist()):
      self.unify(x, y)

  def product(self, factors: Sequence[int]) -> int:
    """A new position that is the ordered product of ``factors``."""
    if len(factors) == 1:
      return int(factors[0])
    (node,) = self.new(1).tolist()
    self._refine(node, tuple(int(f) for f in factors))
    return node


@dataclass
class Frame:
  """One evaluation of a jaxpr: the positions of its variables, and the frames of nested calls."""

  jaxpr: Any
  axes: dict[Any, list[np.ndarray]] = field(default_factory=dict)
  children: dict[int, list[Frame]] = field(default_factory=dict)
  # Per equation index: extra node lists the slimming needs (a grouped convolution's groups).
  notes: dict[int, Any] = field(default_factory=dict)


@dataclass
class Graph:
  """The channel graph of ``fn(params, *args)`` (see the module docstring)."""

  closed: Any
  nodes: Nodes
  frame: Frame
  param_paths: list[str]
  param_axes: list[list[np.ndarray]]
  num_params: int
  out_tree: Any = None


def _shape(v: Any) -> tuple[int, ...]:
  return tuple(int(d) for d in v.aval.shape) if hasattr(v.aval, "shape") else ()


class _Walker:
  def __init__(self, nodes: Nodes) -> None:
    self.nodes = nodes

  def fresh(self, shape: Sequence[int]) -> list[np.ndarray]:
    return [self.nodes.new(int(n)) for n in shape]

  def read(self, frame: Frame, v: Any) -> list[np.ndarray]:
    if isinstance(v, Literal):
      return self.fresh(np.shape(v.val))
    return frame.axes[v]

  def poison_all(self, axes: Sequence[np.ndarray], reason: str | None = None) -> None:
    for axis in axes:
      for x in axis.tolist():
        self.nodes.poison(x, reason)

  def run(self, jaxpr: Any, inputs: Sequence[list[np.ndarray]]) -> tuple[Frame, list]:
    """Walks ``jaxpr`` (a core Jaxpr) with the positions of its invars; returns its frame, outs."""
    frame = Frame(jaxpr)
    for v, axes in zip(jaxpr.invars, inputs):
      frame.axes[v] = axes
    for v in jaxpr.constvars:
      frame.axes[v] = self.fresh(_shape(v))
    for i, eqn in enumerate(jaxpr.eqns):
      self.equation(frame, i, eqn)
    return frame, [self.read(frame, v) for v in jaxpr.outvars]

  # --- equations ------------------------------------------------------------------------------

  def equation(self, frame: Frame, i: int, eqn: Any) -> None:
    name = eqn.primitive.name
    ins = [self.read(frame, v) for v in eqn.invars]
    out_shapes = [_shape(v) for v in eqn.outvars]
    handler = getattr(self, f"_{name}", None)
    if handler is None:
      handler = self._generic
    outs = handler(frame, i, eqn, ins, out_shapes)
    for v, axes in zip(eqn.outvars, outs):
      frame.axes[v] = axes

  def _generic(self, frame, i, eqn, ins, out_shapes):
    name = eqn.primitive.name
    if name in _CALLS or "jaxpr" in eqn.params or "call_jaxpr" in eqn.params:
      inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr", eqn.params.get("fun_jaxpr")))
      if inner is not None:
        return self._call(frame, i, inner, ins)
    elementwise = (
      name in _ZERO_PRESERVING_UNARY
      or name in _OTHER_UNARY
      or name in _ADDITIVE
      or name in _MULTIPLICATIVE
      or name in _OTHER_BINARY
      or name in ("select_n", "clamp")
    )
    if elementwise and len(out_shapes) == 1:
      return [self._elementwise(ins, out_shapes[0])]
    # Not modelled: its operands' and results' positions are not prunable.
    self.poison_all([a for axes in ins for a in axes], name)
    outs = [self.fresh(s) for s in out_shapes]
    self.poison_all([a for axes in outs for a in axes], name)
    return outs

  def _elementwise(self, ins, shape):
    out = self.fresh(shape)
    for axes in ins:
      if len(axes) != len(shape):
        continue  # a rank-0 operand, broadcast
      for d, (a, o) in enumerate(zip(axes, out)):
        if len(a) == len(o):
          self.nodes.unify_axes(a, o)
    return out

  def _call(self, frame, i, inner, ins):
    jaxpr = inner.jaxpr if hasattr(inner, "jaxpr") else inner
    child, outs = self.run(jaxpr, ins)
    frame.children[i] = [child]
    return outs

  def _dot_general(self, frame, i, eqn, ins, out_shapes):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    for a, b in zip(lc, rc):
      self.nodes.unify_axes(lhs[a], rhs[b])
    out = []
    for a, b in zip(lb, rb):
      self.nodes.unify_axes(lhs[a], rhs[b])
      out.append(lhs[a])
    out += [lhs[d] for d in range(len(lhs)) if d not in lc and d not in lb]
    out += [rhs[d] for d in range(len(rhs)) if d not in rc and d not in rb]
    return [out]

  def _conv_general_dilated(self, frame, i, eqn, ins, out_shapes):
    lhs, rhs = ins
    dn = eqn.params["dimension_numbers"]
    groups = int(eqn.params["feature_group_count"])
    (out_shape,) = out_shapes
    out = self.fresh(out_shape)
    lhs_b, lhs_f, *lhs_sp = dn.lhs_spec
    rhs_o, rhs_i, *rhs_sp = dn.rhs_spec
    out_b, out_f, *out_sp = dn.out_spec
    for axes, dims in ((lhs, lhs_sp), (rhs, rhs_sp), (out, out_sp)):
      self.poison_all([axes[d] for d in dims])  # spatial taps and positions are not channels
    if int(eqn.params["batch_group_count"]) != 1:
      self.poison_all([a for axes in (lhs, rhs, out) for a in axes], "conv_general_dilated")
      return [out]
    self.nodes.unify_axes(lhs[lhs_b], out[out_b])
    cin, cout = len(lhs[lhs_f]), len(rhs[rhs_o])
    if groups == 1:
      self.nodes.unify_axes(lhs[lhs_f], rhs[rhs_i])
      g_nodes = None
    else:  # features are group-major: input (g, cin/g), output (g, cout/g)
      g_nodes = self.nodes.new(groups)
      per_in = self.nodes.new(cin // groups)
      per_out = self.nodes.new(cout // groups)
      self.nodes.unify_axes(rhs[rhs_i], per_in)
      for p, x in enumerate(lhs[lhs_f].tolist()):
        j, k = divmod(p, cin // groups)
        self.nodes.unify(x, self.nodes.product([g_nodes[j], per_in[k]]))
      for p, x in enumerate(rhs[rhs_o].tolist()):
        j, k = divmod(p, cout // groups)
        self.nodes.unify(x, self.nodes.product([g_nodes[j], per_out[k]]))
    self.nodes.unify_axes(rhs[rhs_o], out[out_f])
    frame.notes[i] = g_nodes
    return [out]

  def _broadcast_in_dim(self, frame, i, eqn, ins, out_shapes):
    (operand, *_dyn) = ins
    (shape,) = out_shapes
    out = self.fresh(shape)
    for d, o in enumerate(eqn.params["broadcast_dimensions"]):
      if len(operand[d]) == shape[o]:
        out[o] = operand[d]
    return [out]

  def _transpose(self, frame, i, eqn, ins, out_shapes):
    (operand,) = ins
    return [[operand[p] for p in eqn.params["permutation"]]]

  def _squeeze(self, frame, i, eqn, ins, out_shapes):
    (operand,) = ins
    drop = {d % len(operand) for d in eqn.params["dimensions"]}
    return [[a for d, a in enumerate(operand) if d not in drop]]

  def _reduce(self, frame, i, eqn, ins, out_shapes):
    (operand,) = ins
    axes = eqn.params["axes"]
    return [[a for d, a in enumerate(operand) if d not in axes]]

  _reduce_sum = _reduce_max = _reduce_min = _reduce_prod = _reduce
  _reduce_and = _reduce_or = _argmax = _argmin = _reduce

  def _reduce_window(self, frame, i, eqn, ins, out_shapes):
    # Pooling: axes with a window of 1, stride 1 and no padding (batch, channels) keep their
    # positions; the pooled (spatial) axes are not channels.
    (operand,) = ins
    (shape,) = out_shapes
    p = eqn.params
    out = []
    for d, axis in enumerate(operand):
      plain = (
        p["window_dimensions"][d] == 1
        and p["window_strides"][d] == 1
        and tuple(p["padding"][d]) == (0, 0)
        and p["base_dilation"][d] == 1
        and p["window_dilation"][d] == 1
      )
      if plain:
        out.append(axis)
      else:
        self.poison_all([axis])
        new = self.nodes.new(shape[d])
        self.poison_all([new])
        out.append(new)
    return [out]

  _reduce_window_max = _reduce_window_min = _reduce_window_sum = _reduce_window

  def _cumulative(self, frame, i, eqn, ins, out_shapes):
    (operand,) = ins
    self.poison_all([operand[eqn.params["axis"]]])
    return [list(operand)]

  _cumsum = _cumprod = _cummax = _cummin = _cumlogsumexp = _cumulative

  def _concatenate(self, frame, i, eqn, ins, out_shapes):
    dim = eqn.params["dimension"]
    (shape,) = out_shapes
    out = self.fresh(shape)
    out[dim] = np.concatenate([axes[dim] for axes in ins])
    for axes in ins:
      for d in range(len(shape)):
        if d != dim:
          self.nodes.unify_axes(axes[d], out[d])
    return [out]

  def _split(self, frame, i, eqn, ins, out_shapes):
    (operand,) = ins
    axis = eqn.params["axis"]
    outs, start = [], 0
    for size in eqn.params["sizes"]:
      axes = list(operand)
      axes[axis] = operand[axis][start : start + int(size)]
      outs.append(axes)
      start += int(size)
    return outs

  def _slice(self, frame, i, eqn, ins, out_shapes):
    (operand,) = ins
    starts, limits = eqn.params["start_indices"], eqn.params["limit_indices"]
    strides = eqn.params["strides"] or (1,) * len(operand)
    out = []
    for d, axis in enumerate(operand):
      if strides[d] != 1 and (starts[d], limits[d]) != (0, len(axis)):
        self.poison_all([axis])
      out.append(axis[starts[d] : limits[d] : strides[d]])
    return [out]

  def _rev(self, frame, i, eqn, ins, out_shapes):
    (operand,) = ins
    out = list(operand)
    for d in eqn.params["dimensions"]:
      self.poison_all([operand[d]])
    return [out]

  def _pad(self, frame, i, eqn, ins, out_shapes):
    operand, _value = ins
    (shape,) = out_shapes
    out = []
    for d, (lo, hi, interior) in enumerate(eqn.params["padding_config"]):
      if (lo, hi, interior) == (0, 0, 0):
        out.append(operand[d])
      else:  # padded axes (spatial padding, channel padding): not channels
        self.poison_all([operand[d]])
        axis = self.nodes.new(shape[d])
        self.poison_all([axis])
        out.append(axis)
    return [out]

  def _select_n(self, frame, i, eqn, ins, out_shapes):
    return [self._elementwise(ins, out_shapes[0])]

  def _iota(self, frame, i, eqn, ins, out_shapes):
    return [self.fresh(out_shapes[0])]

  def _reshape(self, frame, i, eqn, ins, out_shapes):
    operand = ins[0]
    (shape,) = out_shapes
    return [self._reshape_axes(operand, shape)]

  def _reshape_axes(self, operand: list[np.ndarray], shape: tuple[int, ...]) -> list[np.ndarray]:
    nodes = self.nodes
    # The operand as a sequence of sub-dimensions: an axis whose positions are products of the
    # same number of classes, in row-major order, counts as those factors.
    subs: list[np.ndarray] = []
    for axis in operand:
      subs.extend(self._factors(axis))
    subs = [s for s in subs if len(s) != 1]
    sizes = [len(s) for s in subs]
    out_sizes = [n for n in shape if n != 1]
    factors = _common_refinement(sizes, out_sizes)
    if factors is None:
      self.poison_all(operand)
      out = self.fresh(shape)
      self.poison_all(out)
      return out
    factor_nodes = [nodes.new(f) for f in factors]
    # Tie every operand sub-dimension to the factors it is made of.
    k = 0
    for sub in subs:
      span = _span(factors, k, len(sub))
      for p, x in enumerate(sub.tolist()):
        digits = np.unravel_index(p, [factors[j] for j in span])
        nodes.unify(x, nodes.product([factor_nodes[j][d] for j, d in zip(span, digits)]))
      k = span[-1] + 1 if span else k
    out, k = [], 0
    for n in shape:
      if n == 1:
        out.append(nodes.new(1))
        continue
      span = _span(factors, k, n)
      positions = [
        nodes.product(
          [
            factor_nodes[j][d]
            for j, d in zip(span, np.unravel_index(p, [factors[j] for j in span]))
          ]
        )
        for p in range(n)
      ]
      out.append(np.asarray(positions, np.int64))
      k = span[-1] + 1
    return out

  def _factors(self, axis: np.ndarray) -> list[np.ndarray]:
    """``axis`` as row-major sub-dimensions (their atomic classes), or ``[axis]``."""
    n = len(axis)
    if n <= 1:
      return [axis]
    expansions = [self.nodes.expand(x) for x in axis.tolist()]
    t = len(expansions[0])
    if t == 1 or any(len(e) != t for e in expansions):
      return [axis]
    columns = list(zip(*expansions))
    sizes = [len(dict.fromkeys(c)) for c in columns]
    if math.prod(sizes) != n:
      return [axis]
    table = [list(dict.fromkeys(c)) for c in columns]
    for p, e in enumerate(expansions):
      digits = np.unravel_index(p, sizes)
      if any(table[j][d] != e[j] for j, d in enumerate(digits)):
        return [axis]
    return [np.asarray(t_, np.int64) for t_ in table]

  def _scan(self, frame, i, eqn, ins, out_shapes):
    body = eqn.params["jaxpr"]
    num_consts, num_carry = eqn.params["num_consts"], eqn.params["num_carry"]
    consts, carry, xs = (
      ins[:num_consts],
      ins[num_consts : num_consts + num_carry],
      ins[num_consts + num_carry :],
    )
    for axes in xs:
      self.poison_all([axes[0]])  # the scanned axis (layers, time)
    body_in = list(consts) + list(carry) + [axes[1:] for axes in xs]
    child, body_out = self.run(body.jaxpr, body_in)
    frame.children[i] = [child]
    carry_out, ys = body_out[:num_carry], body_out[num_carry:]
    for a, b in zip(carry, carry_out):
      for x, y in zip(a, b):
        self.nodes.unify_axes(x, y)
    outs = [list(c) for c in carry]
    for axes, shape in zip(ys, out_shapes[num_carry:]):
      lead = self.nodes.new(shape[0])
      self.poison_all([lead])
      outs.append([lead] + list(axes))
    return outs

  def _cond(self, frame, i, eqn, ins, out_shapes):
    index, *operands = ins
    self.poison_all(index)
    outs = [self.fresh(s) for s in out_shapes]
    frame.children[i] = []
    for branch in eqn.params["branches"]:
      child, branch_out = self.run(branch.jaxpr, operands)
      frame.children[i].append(child)
      for a, b in zip(outs, branch_out):
        for x, y in zip(a, b):
          self.nodes.unify_axes(x, y)
    return outs

  def _while(self, frame, i, eqn, ins, out_shapes):
    cn, bn = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    cond_consts, body_consts, carry = ins[:cn], ins[cn : cn + bn], ins[cn + bn :]
    cond_frame, pred = self.run(eqn.params["cond_jaxpr"].jaxpr, list(cond_consts) + list(carry))
    body_frame, carry_out = self.run(
      eqn.params["body_jaxpr"].jaxpr, list(body_consts) + list(carry)
    )
    frame.children[i] = [cond_frame, body_frame]
    for a, b in zip(carry, carry_out):
      for x, y in zip(a, b):
        self.nodes.unify_axes(x, y)
    return [list(c) for c in carry]


def _common_refinement(a: Sequence[int], b: Sequence[int]) -> list[int] | None:
  """Factor sizes that both row-major shapes ``a`` and ``b`` are products of consecutive runs of."""
  if math.prod(a) != math.prod(b):
    return None
  bounds = set()
  for sizes in (a, b):
    acc = 1
    for n in reversed(sizes):
      acc *= n
      bounds.add(acc)
  chain = sorted(bounds)
  factors, prev = [], 1
  for c in chain:
    if c % prev:
      return None
    factors.append(c // prev)
    prev = c
  factors = [f for f in factors if f != 1]
  return list(reversed(factors))


def _span(factors: Sequence[int], start: int, size: int) -> list[int]:
  """The consecutive factors from ``start`` whose product is ``size``."""
  span, acc, j = [], 1, start
  while acc < size:
    span.append(j)
    acc *= factors[j]
    j += 1
  return span


def trace(fn: Callable[..., Any], params: Any, *args: Any) -> Graph:
  """Traces ``fn(params, *args)`` and walks its jaxpr into a `Graph`."""
  named = leaves_lib.named_leaves(leaves_lib.unwrap_variables(params))
  closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(params, *args)
  nodes = Nodes()
  walker = _Walker(nodes)
  num_params = len(named)
  inputs = []
  param_axes = []
  for v in closed.jaxpr.invars:
    axes = walker.fresh(_shape(v))
    inputs.append(axes)
  param_axes = inputs[:num_params]
  for axes in inputs[num_params:]:
    walker.poison_all(axes)  # the function's inputs are not prunable
  frame, outs = walker.run(closed.jaxpr, inputs)
  for axes in outs:
    walker.poison_all(axes)  # nor are its outputs
  used = {v for eqn in closed.jaxpr.eqns for v in eqn.invars if not isinstance(v, Literal)}
  used |= {v for v in closed.jaxpr.outvars if not isinstance(v, Literal)}
  for v, axes in zip(closed.jaxpr.invars[:num_params], param_axes):
    if v not in used:  # a leaf the function never reads has no channels to remove
      walker.poison_all(axes)
  return Graph(
    closed,
    nodes,
    frame,
    [n for n, _ in named],
    param_axes,
    num_params,
    jax.tree.structure(out_shape),
  )
