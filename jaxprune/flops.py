"""Multiply-adds read from a function's jaxpr: dense counts per weight, sparse counts, speedup.

`equations` traces a function of ``(params, *inputs)`` to a jaxpr (nothing is compiled or run, so
``jax.ShapeDtypeStruct`` leaves do) and walks every equation, nested ones included, naming the params
leaf that each operand holds. `weight_ops` keeps the matrix products (``dot_general``: dense layers,
einsums, matmuls) and convolutions (``conv_general_dilated``) with their dense multiply-add (MAC)
counts, and `count_macs` adds them up per weight. `sparse_macs` and `theoretical_speedup` scale each
weight's MACs by its density, and `compression_ratio` divides all entries by the nonzero ones: the
efficiency metrics of ShrinkBench.

Leaves are named as `jaxprune.sparsity_summary` names them: the ``/``-joined key path, e.g.
``Dense_0/kernel``. Only products and convolutions are counted (as in ShrinkBench); element-wise
operations, pooling and normalisation are not.

References:
  Blalock et al., `What is the state of neural network pruning? <https://arxiv.org/abs/2003.03033>`_,
  MLSys 2020
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Generator, Iterator
from typing import Any, NamedTuple, Optional

import jax
from jax.extend import core as jex_core

from jaxprune import summary as summary_lib
from jaxprune.checks import JaxpruneWarning
from jaxprune.leaves import path_str
from jaxprune.typing import ArrayTree, Params

__all__ = [
  "Equation",
  "WeightOp",
  "equations",
  "weight_ops",
  "count_macs",
  "sparse_macs",
  "theoretical_speedup",
  "compression_ratio",
]

# Primitives with one operand whose output holds the same values as the operand (up to dtype, layout
# or broadcasting): a weight passed through them is still that weight.
_PASS_THROUGH = frozenset(
  {
    "convert_element_type",
    "reshape",
    "transpose",
    "copy",
    "copy_p",
    "squeeze",
    "expand_dims",
    "broadcast_in_dim",
    "reduce_precision",
    "sharding_constraint",
  }
)
# Primitives mapping their operands one-to-one onto their outputs.
_POSITIONAL_PASS_THROUGH = frozenset({"optimization_barrier", "device_put"})


class Equation(NamedTuple):
  """One equation of a traced function, with the params leaf held by each of its operands.

  Attributes:
    eqn: the ``jax.extend.core.JaxprEqn``.
    leaves: per operand (``eqn.invars``), the name of the params leaf it holds, or ``None``.
    repeats: how many times the equation runs per call: the product of the lengths of the scans
      around it; ``None`` inside a while loop (its trip count is not known at trace time).
    branch: the alternatives the equation is in, outermost first, as ``(choice, index)`` pairs: the
      branches of a ``cond`` (or the bodies of another equation with several), ``choice`` numbering
      each such equation of the walk; ``()`` when it always runs.
  """

  eqn: Any
  leaves: tuple[Optional[str], ...]
  repeats: Optional[int]
  branch: tuple[tuple[int, int], ...]


class WeightOp(NamedTuple):
  """A matrix product or convolution of a traced function and its dense multiply-adds.

  Attributes:
    primitive: ``"dot_general"`` or ``"conv_general_dilated"``.
    leaf: the params leaf used as its weight (the rhs if it is a leaf, else the lhs), or ``None`` for
      a product of two activations (e.g. attention scores).
    macs: its multiply-adds per run, all weights counted.
    repeats: as in `Equation`.
    branch: as in `Equation`.
    eqn: the ``jax.extend.core.JaxprEqn``.
  """

  primitive: str
  leaf: Optional[str]
  macs: int
  repeats: Optional[int]
  branch: tuple[tuple[int, int], ...]
  eqn: Any


def _shape(var: Any) -> tuple[int, ...]:
  return tuple(int(d) for d in var.aval.shape)


def _dot_general_macs(eqn: Any) -> int:
  """Every lhs entry (batch, contracting and free dims) meets every free rhs column once."""
  rhs = _shape(eqn.invars[1])
  (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
  rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
  return math.prod(_shape(eqn.invars[0])) * math.prod(rhs_free)


def _conv_macs(eqn: Any) -> int:
  """Output elements times the kernel entries per output feature (spatial size x inputs per group)."""
  out, rhs = _shape(eqn.outvars[0]), _shape(eqn.invars[1])
  dnums = eqn.params.get("dimension_numbers")
  out_features = rhs[0 if dnums is None else dnums.rhs_spec[0]]  # the default kernel layout is OIHW
  return math.prod(out) * (math.prod(rhs) // max(out_features, 1))


_MACS = {"dot_general": _dot_general_macs, "conv_general_dilated": _conv_macs}


def _sub_jaxprs(params: dict) -> list:
  """The open jaxprs held in an equation's parameters (directly or in tuples and lists)."""
  found = []
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jex_core.ClosedJaxpr):
        found.append(item.jaxpr)
      elif isinstance(item, jex_core.Jaxpr):
        found.append(item)
  return found


def _walk(
  jaxpr: Any, tags: list, repeats: Optional[int], branch: tuple, choices: Iterator[int]
) -> Generator[Equation, None, list[Optional[str]]]:
  """Yields the equations of ``jaxpr`` (inputs holding the leaves ``tags``); returns the outputs' tags."""
  env = {var: tag for var, tag in zip(jaxpr.invars, tags) if tag is not None}

  def tag_of(var):
    return None if isinstance(var, jex_core.Literal) else env.get(var)

  def bind(outvars, out_tags):
    for var, tag in zip(outvars, out_tags):
      if tag is not None and not isinstance(var, jex_core.DropVar):
        env[var] = tag

  for eqn in jaxpr.eqns:
    name, in_tags = eqn.primitive.name, [tag_of(v) for v in eqn.invars]
    yield Equation(eqn, tuple(in_tags), repeats, branch)
    if name in _PASS_THROUGH and len(eqn.outvars) == 1:
      bind(eqn.outvars, in_tags[:1])
    elif name in _POSITIONAL_PASS_THROUGH and len(eqn.outvars) == len(in_tags):
      bind(eqn.outvars, in_tags)
    elif name == "scan":
      consts, carry = eqn.params["num_consts"], eqn.params["num_carry"]
      # Constants (e.g. broadcast params) and scanned-over slices (e.g. stacked params) keep their
      # identity inside the body; the carry does not.
      body = in_tags[:consts] + [None] * carry + in_tags[consts + carry :]
      times = None if repeats is None else repeats * int(eqn.params["length"])
      yield from _walk(eqn.params["jaxpr"].jaxpr, body, times, branch, choices)
    elif name == "while":
      cond_consts, body_consts = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
      carry = [None] * (len(in_tags) - cond_consts - body_consts)
      yield from _walk(
        eqn.params["cond_jaxpr"].jaxpr, in_tags[:cond_consts] + carry, None, branch, choices
      )
      yield from _walk(
        eqn.params["body_jaxpr"].jaxpr,
        in_tags[cond_consts : cond_consts + body_consts] + carry,
        None,
        branch,
        choices,
      )
    else:
      # cond passes the operands after the branch index to its branches; jit, closed_call, remat,
      # custom_jvp_call, custom_vjp_call, ... pass every operand to their body.
      subs = _sub_jaxprs(eqn.params)
      operands = in_tags[1:] if name == "cond" else in_tags
      choice = next(choices) if len(subs) > 1 else None
      outs: list[list[Optional[str]]] = []
      for i, sub in enumerate(subs):
        sub_tags = operands if len(sub.invars) == len(operands) else [None] * len(sub.invars)
        inner = branch if choice is None else branch + ((choice, i),)
        outs.append((yield from _walk(sub, sub_tags, repeats, inner, choices)))
      if outs and all(len(out) == len(eqn.outvars) for out in outs):
        bind(eqn.outvars, [t[0] if len(set(t)) == 1 else None for t in zip(*outs)])
  return [tag_of(v) for v in jaxpr.outvars]


def equations(
  fn: Callable[..., Any], params: Params, *inputs: Any, **kwargs: Any
) -> Iterator[Equation]:
  """Every equation of ``fn(params, *inputs, **kwargs)``, nested ones included, with its operands' leaves.

  The function is traced with ``jax.make_jaxpr``. An operand holds a params leaf when it is the leaf
  itself or the leaf passed through dtype conversions, reshapes, transposes, broadcasts, copies, or the
  argument passing of nested jaxprs (jit, remat, custom_jvp/custom_vjp, the constants and scanned-over
  slices of a ``scan``, the operands of ``cond`` branches). The equations that hold nested jaxprs are
  yielded before those of their bodies.

  Args:
    fn: called as ``fn(params, *inputs, **kwargs)``.
    params: the pytree of parameters (arrays or ``jax.ShapeDtypeStruct`` values).
    *inputs: example inputs (arrays or ``jax.ShapeDtypeStruct`` values).
    **kwargs: static keyword arguments of ``fn`` (bound with ``functools.partial``, not traced).

  Returns:
    An iterator of `Equation`, in the order of the jaxpr.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import flops
    >>> params = {'w': jnp.ones((3, 2))}
    >>> [(e.eqn.primitive.name, e.leaves) for e in flops.equations(lambda p, x: x @ p['w'].T.T,
    ...                                                            params, jnp.ones((4, 3)))]
    [('transpose', ('w',)), ('transpose', ('w',)), ('dot_general', (None, 'w'))]
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [path_str(path) for path, _ in flat]
  bound = functools.partial(fn, **kwargs) if kwargs else fn

  def traced(leaves, args):
    return bound(jax.tree_util.tree_unflatten(treedef, leaves), *args)

  closed = jax.make_jaxpr(traced)([leaf for _, leaf in flat], tuple(inputs))
  tags = names + [None] * (len(closed.jaxpr.invars) - len(names))
  yield from _walk(closed.jaxpr, tags, 1, (), itertools.count())


def weight_ops(
  fn: Callable[..., Any], params: Params, *inputs: Any, **kwargs: Any
) -> Iterator[WeightOp]:
  """The matrix products and convolutions of ``fn(params, *inputs, **kwargs)`` and their dense MACs.

  A ``dot_general`` counts batch x contracting x free dimensions multiply-adds, a
  ``conv_general_dilated`` output elements x kernel spatial size x input features per group. Every
  branch of a ``cond`` is listed (see `WeightOp.branch`).

  Args:
    fn: called as ``fn(params, *inputs, **kwargs)``.
    params: the pytree of parameters (arrays or ``jax.ShapeDtypeStruct`` values).
    *inputs: example inputs (the counts are for their batch size).
    **kwargs: static keyword arguments of ``fn``.

  Returns:
    An iterator of `WeightOp`, one per equation, in the order of the jaxpr.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import flops
    >>> params = {'w1': jnp.ones((784, 300)), 'w2': jnp.ones((300, 10))}
    >>> [(op.leaf, op.macs) for op in flops.weight_ops(lambda p, x: x @ p['w1'] @ p['w2'], params,
    ...                                                 jnp.ones((1, 784)))]
    [('w1', 235200), ('w2', 3000)]
  """
  for e in equations(fn, params, *inputs, **kwargs):
    name = e.eqn.primitive.name
    if name in _MACS:
      leaf = e.leaves[1] if e.leaves[1] is not None else e.leaves[0]
      yield WeightOp(name, leaf, _MACS[name](e.eqn), e.repeats, e.branch, e.eqn)


def _runs(op: WeightOp) -> int:
  return op.macs * (1 if op.repeats is None else op.repeats)


def _costliest_branches(ops: list[WeightOp], depth: int = 0) -> list[WeightOp]:
  """The ops outside alternatives at ``depth``, and those of the costliest branch of each one there."""
  chosen = [op for op in ops if len(op.branch) == depth]
  choices: dict[int, dict[int, list[WeightOp]]] = {}
  for op in ops:
    if len(op.branch) > depth:
      choice, index = op.branch[depth]
      choices.setdefault(choice, {}).setdefault(index, []).append(op)
  for branches in choices.values():
    picked = [_costliest_branches(b, depth + 1) for b in branches.values()]
    chosen += max(picked, key=lambda b: sum(_runs(op) for op in b))
  return chosen


def count_macs(
  fn: Callable[..., Any], params: Params, *inputs: Any, **kwargs: Any
) -> dict[str, Any]:
  """Counts the multiply-adds (MACs) of ``fn(params, *inputs, **kwargs)``, per weight leaf.

  Sums `weight_ops`: ``scan`` bodies count times their length, a ``cond`` its costliest branch and a
  while loop one iteration (its trip count is unknown; a warning says so). Jitted and unjitted
  functions give the same counts.

  Args:
    fn: called as ``fn(params, *inputs, **kwargs)``, e.g. ``lambda p, x: model.apply({'params': p},
      x)``.
    params: the pytree of parameters (arrays or ``jax.ShapeDtypeStruct`` values, e.g. from
      ``jax.eval_shape``).
    *inputs: example inputs (the counts are for their batch size).
    **kwargs: static keyword arguments of ``fn`` (e.g. ``train=False``).

  Returns:
    A dict with ``'total'`` (all MACs), ``'by_leaf'`` (MACs per weight leaf name, in the order of the
    leaves of ``params``), ``'unattributed'`` (MACs of products of two activations) and
    ``'by_primitive'`` (MACs per primitive name).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import flops
    >>> params = {'b': jnp.zeros(300), 'w': jnp.ones((784, 300))}
    >>> flops.count_macs(lambda p, x: x @ p['w'] + p['b'], params, jnp.ones(784))
    {'total': 235200, 'by_leaf': {'w': 235200}, 'unattributed': 0, 'by_primitive': {'dot_general': 235200}}
  """
  ops = _costliest_branches(list(weight_ops(fn, params, *inputs, **kwargs)))
  in_loops = sum(op.repeats is None for op in ops)
  if in_loops:
    warnings.warn(
      f"count_macs: {in_loops} product(s) inside while loops of unknown trip count were "
      "counted as one iteration each.",
      JaxpruneWarning,
      stacklevel=2,
    )
  by_leaf: dict[str, int] = {}
  by_primitive: dict[str, int] = {}
  for op in ops:
    by_primitive[op.primitive] = by_primitive.get(op.primitive, 0) + _runs(op)
    if op.leaf is not None:
      by_leaf[op.leaf] = by_leaf.get(op.leaf, 0) + _runs(op)
  order = {
    path_str(path): i for i, (path, _) in enumerate(jax.tree_util.tree_flatten_with_path(params)[0])
  }
  total = sum(by_primitive.values())
  return {
    "total": total,
    "by_leaf": dict(sorted(by_leaf.items(), key=lambda kv: order[kv[0]])),
    "unattributed": total - sum(by_leaf.values()),
    "by_primitive": by_primitive,
  }


def _leaf_counts(tree: ArrayTree) -> dict[str, tuple[int, int]]:
  """``{name: (size, nonzero)}`` of a params or masks tree, or of a ``SparsitySummary``."""
  summary = (
    tree if isinstance(tree, summary_lib.SparsitySummary) else summary_lib.sparsity_summary(tree)
  )
  return {name: (leaf.size, leaf.size - leaf.zeros) for name, leaf in summary.leaves.items()}


def _match(name: str, available: dict) -> Optional[str]:
  """The leaf of ``available`` named ``name``, or the only one whose path ends with it (or it with)."""
  if name in available:
    return name
  candidates = [k for k in available if k.endswith("/" + name) or name.endswith("/" + k)]
  return candidates[0] if len(candidates) == 1 else None


def sparse_macs(mac_counts: dict[str, Any], params_or_masks: ArrayTree) -> float:
  """The multiply-adds left when the zero (or pruned) weights are skipped.

  Each leaf's MACs in ``mac_counts['by_leaf']`` are scaled by the density of that leaf in
  ``params_or_masks`` (its fraction of nonzero entries for params, of ``True`` entries for masks):
  exact for dense layers, whose every weight is used equally often. Unattributed MACs, and those of
  leaves absent from ``params_or_masks`` (e.g. ``None`` in a masks tree from `jaxprune.get_masks`),
  are not scaled.

  Args:
    mac_counts: the result of `count_macs`.
    params_or_masks: params, a masks tree (boolean or `jaxprune.PackedMask` leaves) or a
      `jaxprune.SparsitySummary` of either. Leaf names must match those of the params given to
      `count_macs`, possibly up to a leading prefix such as ``params/``.

  Returns:
    The sparse MACs.

  Raises:
    ValueError: if ``params_or_masks`` has leaves but none of them is a leaf that MACs were attributed
      to (the trees are probably mismatched).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import flops
    >>> params = {'w': jnp.ones((4, 2))}
    >>> macs = flops.count_macs(lambda p, x: x @ p['w'], params, jnp.ones((1, 4)))
    >>> flops.sparse_macs(macs, {'w': jnp.array([[True, False]] * 4)})
    4.0
  """
  leaves = _leaf_counts(params_or_masks)
  sparse, matched = float(mac_counts["unattributed"]), 0
  for name, macs in mac_counts["by_leaf"].items():
    key = _match(name, leaves)
    if key is None:
      sparse += macs
      continue
    matched += 1
    size, nonzero = leaves[key]
    sparse += macs * (nonzero / size if size else 1.0)
  if mac_counts["by_leaf"] and leaves and not matched:
    raise ValueError(
      f"sparse_macs: none of the leaves MACs were attributed to ({', '.join(mac_counts['by_leaf'])}) "
      f"is in the given tree ({', '.join(list(leaves)[:8])}{', ...' if len(leaves) > 8 else ''})."
    )
  return sparse


def theoretical_speedup(mac_counts: dict[str, Any], params_or_masks: ArrayTree) -> float:
  """Dense MACs over the MACs left when the zero weights are skipped (ShrinkBench's speedup).

  Args:
    mac_counts: the result of `count_macs`.
    params_or_masks: params, masks or a `jaxprune.SparsitySummary`, as for `sparse_macs`.

  Returns:
    The speedup: ``1.0`` for a dense model, ``inf`` if every counted MAC is pruned.

  Raises:
    ValueError: if no leaf of ``params_or_masks`` is one that MACs were attributed to.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import flops
    >>> params = {'w': jnp.array([[1.0, 0.0], [0.0, 0.0]])}
    >>> macs = flops.count_macs(lambda p, x: x @ p['w'], params, jnp.ones((1, 2)))
    >>> flops.theoretical_speedup(macs, params)
    4.0
  """
  dense, sparse = float(mac_counts["total"]), sparse_macs(mac_counts, params_or_masks)
  if sparse == 0:
    return math.inf if dense > 0 else 1.0
  return dense / sparse


def compression_ratio(params: ArrayTree) -> float:
  """All entries over the nonzero entries of every leaf (biases included).

  Args:
    params: a params tree (zeros count as pruned), a boolean masks tree (``False`` counts as pruned;
      ``None`` leaves are skipped, so pass params to cover every weight) or a
      `jaxprune.SparsitySummary`.

  Returns:
    The compression ratio: ``1.0`` for a dense model or an empty tree, ``inf`` if every entry is zero.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import flops
    >>> flops.compression_ratio({'w': jnp.array([1.0, 0.0, 0.0, 0.0]), 'b': jnp.ones(2)})
    2.0
  """
  leaves = _leaf_counts(params)
  size, nonzero = sum(s for s, _ in leaves.values()), sum(n for _, n in leaves.values())
  if nonzero == 0:
    return math.inf if size else 1.0
  return size / nonzero
