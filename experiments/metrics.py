"""ShrinkBench-style efficiency metrics: multiply-adds, theoretical speedup, compression.

Blalock et al. (2020, "What is the state of neural network pruning?") recommend reporting,
next to accuracy, the compression ratio (total parameters / nonzero parameters) and the
theoretical speedup (dense multiply-adds / multiply-adds left once the zero weights are
skipped). This module computes both for any JAX model:

* ``count_macs(apply_fn, params, *inputs)`` traces ``apply_fn(params, *inputs)`` to a
  jaxpr (no compilation, no FLOPs spent) and counts the multiply-adds of every
  ``dot_general`` (dense layers, einsums, matmuls) and ``conv_general_dilated``
  (convolutions), attributing each one to the parameter leaf used as its weight.
* ``theoretical_speedup(macs, params_or_masks)`` scales each attributed layer's MACs by the
  density (nonzero fraction) of its weight and returns dense MACs / sparse MACs.
* ``compression_ratio(params)`` is total entries / nonzero entries over all leaves.

Typical use in a training loop::

    macs = count_macs(lambda p, x: model.apply({'params': p}, x), params, example_batch)
    ...
    speedup = theoretical_speedup(macs, params)   # at each evaluation
    ratio = compression_ratio(params)

Leaves are named like ``jaxprune.sparsity_summary`` names them: the ``/``-joined key path,
e.g. ``Dense_0/kernel``. Only matrix products and convolutions are counted (as in
ShrinkBench); element-wise operations, pooling and normalisation are not.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Optional

import jax
from jax.extend import core as jex_core

import jaxprune
from jaxprune.leaves import path_str

__all__ = ["count_macs", "theoretical_speedup", "compression_ratio"]

# Primitives with one operand whose output holds the same values as the operand (up to
# dtype, layout or broadcasting): a weight passed through them is still that weight.
_PASS_THROUGH = frozenset({
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
})

# Primitives mapping their operands one-to-one onto their outputs.
_POSITIONAL_PASS_THROUGH = frozenset({"optimization_barrier", "device_put"})

_COUNTED = ("dot_general", "conv_general_dilated")


class _Counts:
    """Multiply-adds accumulated while walking a jaxpr."""

    def __init__(self):
        self.by_leaf: dict[str, int] = {}
        self.unattributed = 0
        self.by_primitive: dict[str, int] = {}
        self.while_loops = 0

    @property
    def total(self) -> int:
        return self.unattributed + sum(self.by_leaf.values())

    def add(self, primitive: str, macs: int, leaf: Optional[str]):
        if leaf is None:
            self.unattributed += macs
        else:
            self.by_leaf[leaf] = self.by_leaf.get(leaf, 0) + macs
        self.by_primitive[primitive] = self.by_primitive.get(primitive, 0) + macs

    def merge(self, other: "_Counts", times: int = 1):
        for leaf, macs in other.by_leaf.items():
            self.by_leaf[leaf] = self.by_leaf.get(leaf, 0) + times * macs
        self.unattributed += times * other.unattributed
        for prim, macs in other.by_primitive.items():
            self.by_primitive[prim] = self.by_primitive.get(prim, 0) + times * macs
        self.while_loops += other.while_loops


def _shape(var) -> tuple[int, ...]:
    return tuple(int(d) for d in var.aval.shape)


def _dot_general_macs(eqn) -> int:
    """Batch x contracting x lhs-free x rhs-free dimensions of a ``dot_general``."""
    lhs, rhs = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
    # Every lhs entry (batch, contracting and free dims) meets every rhs free column once.
    return math.prod(lhs) * math.prod(rhs_free)


def _conv_macs(eqn) -> int:
    """Output elements x kernel spatial size x input features per group of a convolution."""
    out, rhs = _shape(eqn.outvars[0]), _shape(eqn.invars[1])
    dnums = eqn.params.get("dimension_numbers")
    out_feature_dim = 0 if dnums is None else dnums.rhs_spec[0]  # default rhs layout is OIHW
    # The kernel holds (in features / groups) x spatial entries per output feature.
    return math.prod(out) * (math.prod(rhs) // max(rhs[out_feature_dim], 1))


def _as_jaxpr(obj):
    """The open ``Jaxpr`` of a ``Jaxpr`` or ``ClosedJaxpr``."""
    return obj.jaxpr if isinstance(obj, jex_core.ClosedJaxpr) else obj


def _sub_jaxprs(params: dict) -> list:
    """Jaxprs held in an equation's parameters (directly or in tuples/lists)."""
    found = []
    for value in params.values():
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, (jex_core.Jaxpr, jex_core.ClosedJaxpr)):
                found.append(_as_jaxpr(item))
    return found


def _walk(jaxpr, in_tags: list) -> tuple[_Counts, list]:
    """Counts the MACs of ``jaxpr`` given which parameter leaf each input is (or None).

    Args:
        jaxpr: a ``Jaxpr`` or ``ClosedJaxpr``.
        in_tags: for each input variable, the name of the parameter leaf it holds, or None.

    Returns:
        The counts and, for each output variable, the leaf name it holds (or None).
    """
    jaxpr = _as_jaxpr(jaxpr)
    env: dict = {}
    for var, tag in zip(jaxpr.invars, in_tags):
        if tag is not None:
            env[var] = tag

    def tag_of(var):
        if isinstance(var, jex_core.Literal):
            return None
        return env.get(var)

    def set_tags(outvars, tags):
        for var, tag in zip(outvars, tags):
            if tag is not None and not isinstance(var, jex_core.DropVar):
                env[var] = tag

    counts = _Counts()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        tags = [tag_of(v) for v in eqn.invars]

        if name in _COUNTED:
            macs = _dot_general_macs(eqn) if name == "dot_general" else _conv_macs(eqn)
            # The weight is normally the rhs (flax's Dense and Conv); fall back to the lhs.
            leaf = tags[1] if tags[1] is not None else tags[0]
            counts.add(name, macs, leaf)
        elif name in _PASS_THROUGH and len(eqn.outvars) == 1:
            set_tags(eqn.outvars, tags[:1])
        elif name in _POSITIONAL_PASS_THROUGH and len(eqn.outvars) == len(tags):
            set_tags(eqn.outvars, tags)
        elif name == "scan":
            n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
            # Constants (e.g. broadcast params) and scanned-over slices (e.g. stacked
            # params) keep their identity inside the body; the carry does not.
            body_tags = tags[:n_consts] + [None] * n_carry + tags[n_consts + n_carry:]
            body, _ = _walk(eqn.params["jaxpr"], body_tags)
            counts.merge(body, times=int(eqn.params["length"]))
        elif name == "cond":
            # invars[0] is the branch index; the rest are the branches' operands.
            results = [_walk(branch, tags[1:]) for branch in eqn.params["branches"]]
            best, _ = max(results, key=lambda r: r[0].total)
            counts.merge(best)
            out_tags = [t[0] if len(set(t)) == 1 else None
                        for t in zip(*(r[1] for r in results))]
            set_tags(eqn.outvars, out_tags)
        elif name == "while":
            n_cond, n_body = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
            n_carry = len(tags) - n_cond - n_body
            cond, _ = _walk(eqn.params["cond_jaxpr"], tags[:n_cond] + [None] * n_carry)
            body, _ = _walk(eqn.params["body_jaxpr"],
                            tags[n_cond:n_cond + n_body] + [None] * n_carry)
            # The trip count is unknown at trace time: the loop is counted as one iteration.
            counts.merge(cond)
            counts.merge(body)
            counts.while_loops += 1
        else:
            subs = _sub_jaxprs(eqn.params)
            if not subs:
                continue
            # pjit/jit, closed_call, remat, custom_jvp_call, custom_vjp_call, ...: the
            # operands are passed positionally to the inner jaxpr.
            results = []
            for sub in subs:
                sub_tags = tags if len(sub.invars) == len(tags) else [None] * len(sub.invars)
                results.append(_walk(sub, sub_tags))
            best, best_out = max(results, key=lambda r: r[0].total)
            counts.merge(best)
            if len(subs) == 1 and len(best_out) == len(eqn.outvars):
                set_tags(eqn.outvars, best_out)

    out_tags = [tag_of(v) for v in jaxpr.outvars]
    return counts, out_tags


def count_macs(apply_fn: Callable[..., Any], params: Any, *inputs: Any,
               **kwargs: Any) -> dict[str, Any]:
    """Counts the multiply-adds (MACs) of ``apply_fn(params, *inputs, **kwargs)``.

    The function is traced to a jaxpr (nothing is compiled or run, so ``params`` and
    ``inputs`` may be ``jax.ShapeDtypeStruct``s, e.g. from ``jax.eval_shape(model.init,
    ...)``). Every ``dot_general`` counts batch x contracting x free dimensions MACs and
    every ``conv_general_dilated`` output elements x kernel spatial size x input features
    per group. Nested jaxprs are walked: jit, closed_call, remat, custom_jvp/custom_vjp
    bodies once, ``scan`` bodies times their length, the most expensive ``cond`` branch,
    and ``while`` bodies once (their trip count is unknown; a warning says so).

    Each product is attributed to the parameter leaf used as its weight operand (the rhs
    if it is a parameter, else the lhs), followed through dtype conversions, reshapes,
    transposes, broadcasts, copies and the argument passing of nested calls. Products of
    two activations (e.g. attention scores) are ``unattributed``.

    Args:
        apply_fn: called as ``apply_fn(params, *inputs, **kwargs)``, e.g.
            ``lambda p, x: model.apply({'params': p}, x)``.
        params: the pytree of parameters (arrays or ``jax.ShapeDtypeStruct``s).
        *inputs: example inputs (the counts are for this batch size).
        **kwargs: static keyword arguments for ``apply_fn`` (e.g. ``train=False``); they
            are bound with ``functools.partial``, not traced.

    Returns:
        A dict with ``'total'`` (all MACs), ``'by_leaf'`` (MACs per weight leaf name, in
        the order of the leaves of ``params``), ``'unattributed'`` (MACs whose operands are
        not parameters) and ``'by_primitive'`` (MACs per primitive name).

    Example:
        >>> import flax.linen as nn, jax.numpy as jnp
        >>> model = nn.Dense(300)
        >>> x = jnp.ones((1, 784))
        >>> params = jax.eval_shape(model.init, jax.random.key(0), x)['params']
        >>> count_macs(lambda p, x: model.apply({'params': p}, x), params, x)['total']
        235200
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [path_str(path) for path, _ in flat]
    fn = functools.partial(apply_fn, **kwargs) if kwargs else apply_fn

    def traced(leaves, args):
        return fn(jax.tree_util.tree_unflatten(treedef, leaves), *args)

    closed = jax.make_jaxpr(traced)([leaf for _, leaf in flat], tuple(inputs))
    n_inputs = len(closed.jaxpr.invars) - len(names)
    counts, _ = _walk(closed, list(names) + [None] * n_inputs)

    if counts.while_loops:
        warnings.warn(
            f"count_macs: {counts.while_loops} while loop(s) of unknown trip count were "
            "counted as one iteration each.", stacklevel=2)
    order = {name: i for i, name in enumerate(names)}
    by_leaf = dict(sorted(counts.by_leaf.items(), key=lambda kv: order.get(kv[0], 0)))
    return {
        "total": counts.total,
        "by_leaf": by_leaf,
        "unattributed": counts.unattributed,
        "by_primitive": dict(counts.by_primitive),
    }


def _leaf_counts(tree: Any) -> dict[str, tuple[int, int]]:
    """``{name: (size, nonzero)}`` for a params/masks tree or a ``SparsitySummary``."""
    summary = tree if isinstance(tree, jaxprune.SparsitySummary) else jaxprune.sparsity_summary(tree)
    return {name: (leaf.size, leaf.size - leaf.zeros) for name, leaf in summary.leaves.items()}


def _match(name: str, available: dict) -> Optional[str]:
    """The leaf of ``available`` named ``name``, or the one whose path ends with it.

    Lets MACs counted on ``params`` be scaled with a tree that has an extra prefix (e.g.
    ``{'params': params}``) or a missing one.
    """
    if name in available:
        return name
    candidates = [k for k in available
                  if k.endswith("/" + name) or name.endswith("/" + k)]
    return candidates[0] if len(candidates) == 1 else None


def theoretical_speedup(mac_counts: dict[str, Any], params_or_masks: Any) -> float:
    """Dense MACs / MACs left when the zero weights are skipped (ShrinkBench's speedup).

    Each leaf's MACs in ``mac_counts['by_leaf']`` are scaled by the density of that leaf
    in ``params_or_masks`` (fraction of nonzero entries for params, of ``True`` entries for
    masks); unattributed MACs, and those of leaves absent from ``params_or_masks`` (e.g.
    ``None`` in a masks tree from ``jaxprune.get_masks``), are not scaled.

    Args:
        mac_counts: the result of `count_macs`.
        params_or_masks: current params, a masks tree (boolean or ``jaxprune.PackedMask``
            leaves), or a ``jaxprune.SparsitySummary`` of either. Leaf names must match those
            of the params given to `count_macs`, possibly up to a leading prefix such as
            ``params/``.

    Returns:
        The speedup (``1.0`` for a dense model, ``inf`` if every counted MAC is pruned).

    Raises:
        ValueError: if ``params_or_masks`` has leaves but none of them matches a leaf that
            MACs were attributed to (the trees are probably mismatched).
    """
    leaves = _leaf_counts(params_or_masks)
    dense = float(mac_counts["total"])
    sparse = float(mac_counts["unattributed"])
    matched = 0
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
            "theoretical_speedup: none of the leaves MACs were attributed to "
            f"({', '.join(mac_counts['by_leaf'])}) is in the given tree "
            f"({', '.join(list(leaves)[:8])}{', ...' if len(leaves) > 8 else ''}).")
    if sparse == 0:
        return math.inf if dense > 0 else 1.0
    return dense / sparse


def compression_ratio(params: Any) -> float:
    """Total entries / nonzero entries over all leaves (biases included).

    Args:
        params: a params tree (zeros count as pruned), a boolean masks tree (``False``
            counts as pruned; ``None`` leaves are skipped, so pass params to cover every
            weight) or a ``jaxprune.SparsitySummary``.

    Returns:
        The compression ratio (``1.0`` for a dense model or an empty tree, ``inf`` if every
        entry is zero).
    """
    leaves = _leaf_counts(params)
    size = sum(s for s, _ in leaves.values())
    nonzero = sum(n for _, n in leaves.values())
    if nonzero == 0:
        return math.inf if size else 1.0
    return size / nonzero
