"""i-SpaSP: structured pruning of hidden units by sparse signal recovery.

Wolfe & Kyrillidis prune the hidden units of a layer ``H = f1(x)`` feeding ``f2`` so that the
pruned network's output ``f2(H_S)`` (``H_S``: ``H`` with the units outside ``S`` zeroed) stays
close to the dense one, with a CoSaMP-like loop over the residual. Starting from ``S`` empty, each
of ``T`` iterations

1. takes the residual ``R = 1/2 ||f2(H) - f2(H_S)||^2`` over the calibration samples (with ``S``
   empty, ``1/2 ||f2(H)||^2``, as the authors' code) and its gradient with respect to the dense
   ``H``, summed over the samples (and spatial positions): ``g_i``, signed;
2. takes the ``2s`` units of largest ``g``, ``Omega``;
3. keeps the ``s`` units of ``Omega + S`` with the largest aggregated activation
   ``sum_samples H_i``: the new ``S``.

`ispasp_hidden` runs the loop on a hidden representation and any ``f2`` (the authors' form, for
a residual block or a two-layer network). `ispasp` runs it on the channel groups of any function
(`jaxprune.structured.dependency_groups`), one group after the other: a group's ``H`` is the input
of the dense layers and convolutions that read its channels (found in the function's jaxpr as
`jaxprune.calibration.layer_inputs` finds them, computed through the earlier groups already
pruned, as the authors prune layer after layer), ``f2`` those layers' linear maps; it returns the
keeps that `jaxprune.structured.slim` takes. The weights of the kept units are not refitted.

References:
  Wolfe & Kyrillidis, `i-SpaSP: structured neural pruning via sparse signal recovery
  <https://arxiv.org/abs/2112.04905>`_, 2021 (code: ``wolfecameron/i-SpaSP``,
  ``prune_resnet34_ispasp.py``); Needell & Tropp, `CoSaMP: iterative signal recovery from
  incomplete and inaccurate samples <https://arxiv.org/abs/0803.2392>`_, 2008
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import calibration, selection
from jaxprune import leaves as leaves_lib
from jaxprune.checks import check_int, check_sparsity
from jaxprune.structured import importance
from jaxprune.structured.channel_group import ChannelGroup, keep_masks
from jaxprune.typing import Params, Sparsity

__all__ = ["ispasp", "ispasp_hidden"]


def _loop(
  agg: jax.Array,
  gradient: Callable[[jax.Array, jax.Array], jax.Array],
  keep: int,
  iterations: int,
) -> jax.Array:
  """The i-SpaSP iterations: ``gradient(S, first) -> g`` per unit; returns ``S``."""
  size = agg.shape[0]

  def body(t, s):
    g = gradient(s, t == 0)
    (omega,) = selection.top_k_masks([g], min(2 * keep, size))
    candidates = jnp.where(omega | s, agg, -jnp.inf)
    (new,) = selection.top_k_masks([candidates], keep)
    return new

  return jax.lax.fori_loop(0, iterations, body, jnp.zeros(size, bool))


def _check(keep: Any, size: int, iterations: Any, owner: str) -> tuple[int, int]:
  keep = check_int("keep", keep, 1, owner)
  if keep > size:
    raise ValueError(f"{owner}: keep ({keep}) is more than the {size} units.")
  return keep, check_int("iterations", iterations, 1, owner)


def ispasp_hidden(
  hidden: jax.Array,
  f2: Callable[[jax.Array], Any],
  keep: int,
  *,
  iterations: int = 20,
) -> jax.Array:
  """i-SpaSP on a hidden representation: which of its units (last axis) to keep.

  Args:
    hidden: the dense hidden representation ``H`` on calibration data, ``[..., units]`` (the
      units on the last axis: a dense layer's ``[samples, units]``, a convolution's
      ``[samples, height, width, channels]``).
    f2: what the network computes from ``H`` (the next layer, or the rest of a block); a JAX
      function returning an array or a tree of arrays.
    keep: ``s``, the number of units kept.
    iterations: ``T`` (20 in the authors' scripts).

  Returns:
    A bool array of shape ``[units]`` with exactly ``keep`` entries ``True``.

  Raises:
    ValueError: for ``keep`` below 1 or above the number of units, or ``iterations`` below 1.
    TypeError: for non-integer counts.

  Example:
    Unit 0 has the largest activations but ``f2`` ignores it, so its gradient never puts it among
    the candidates; of those, units 2 and 1 have the largest activations:

    >>> import jax.numpy as jnp
    >>> from jaxprune.structured import ispasp_hidden
    >>> h = jnp.array([[9.0, 1.0, 2.0, 1.0, 0.5, 0.5], [9.0, 1.0, 3.0, 0.0, 0.5, 0.5]])
    >>> w = jnp.array([[0.0], [1.0], [4.0], [1.0], [0.1], [0.1]])
    >>> ispasp_hidden(h, lambda h: h @ w, 2)
    Array([False,  True,  True, False, False, False], dtype=bool)
  """
  owner = "ispasp_hidden"
  h = jnp.asarray(hidden, jnp.float32)
  if h.ndim < 1:
    raise ValueError(f"{owner}: hidden must have a units axis, got shape {h.shape}.")
  keep, iterations = _check(keep, h.shape[-1], iterations, owner)
  axes = tuple(range(h.ndim - 1))

  @jax.jit
  def run(h):
    def gradient(s, first):
      on = jnp.reshape(s.astype(h.dtype), (1,) * (h.ndim - 1) + (-1,))
      pruned = jax.tree.map(jax.lax.stop_gradient, f2(h * on))
      pruned = jax.tree.map(lambda p: jnp.where(first, jnp.zeros_like(p), p), pruned)

      def residual(x):
        diff = jax.tree.map(lambda a, b: a - b, f2(x), pruned)
        return 0.5 * sum(jnp.sum(jnp.square(d)) for d in jax.tree.leaves(diff))

      return jnp.sum(jax.grad(residual)(h), axis=axes)

    return _loop(jnp.sum(h, axis=axes), gradient, keep, iterations)

  return run(h)


class _Consumer(NamedTuple):
  """A layer reading a group's channels: its input ``x`` (as ``fn`` computes it) and ``f2``."""

  x: jax.Array  # the layer's activation operand, float32
  w: jax.Array  # its weight as the [fan_in, fan_out] matrix
  features: Callable[[jax.Array], jax.Array]  # x -> [tokens, fan_in]
  axis: int  # x's axis carrying the group's channels
  chan: np.ndarray  # the group channel of each entry along that axis (-1: none)


def _consumers(
  fn: Callable[..., Any], params: Params, group: ChannelGroup, batch: tuple, owner: str
) -> list[_Consumer]:
  """Every dense layer or convolution of ``fn`` reading the group's channels."""
  named = dict(leaves_lib.named_leaves(leaves_lib.unwrap_variables(params)))
  candidates = [m for m in group.members if jnp.ndim(named.get(m.path, 0)) >= 2]
  label = f"group {group.name!r} (first member {group.members[0].path!r})"
  if not candidates:
    raise ValueError(f"{owner}: {label} has no kernel member reading its channels.")
  found = calibration._layer_operands(
    fn, params, *batch, prune=[re.escape(p) for p in dict.fromkeys(c.path for c in candidates)]
  )
  out = []
  for op in found:
    layer = op.layer
    for m in candidates:
      if layer.path != m.path or m.axis not in layer.input_axes:
        continue
      axis = op.axes[layer.input_axes.index(m.axis)]
      if layer.layer is not None or axis is None:
        raise NotImplementedError(
          f"{owner}: {label}: its channels are read by {layer.name!r}, "
          + (
            "one slice of a stacked (scanned) leaf"
            if layer.layer is not None
            else f"a {layer.kind} along its kernel's spatial axis {m.axis}"
          )
          + "; not supported here. Pass the hidden representation and the next layer to "
          "jaxprune.structured.ispasp_hidden."
        )
      chan = np.full(op.x.shape[axis], -1, np.int32)
      index = np.asarray(m.index)
      chan[index.ravel()] = np.repeat(np.arange(group.size), index.shape[1])
      w = layer.to_matrix(jnp.asarray(named[m.path], jnp.float32))
      out.append(_Consumer(op.x, w, op.features, axis, chan))
  if not out:
    raise ValueError(
      f"{owner}: {label}: no dense layer or convolution of the function reads its channels "
      "(they feed only elementwise operations or the output); it has no next layer to measure a "
      "residual on."
    )
  return out


def _group_loop(
  size: int, layers: list[_Consumer], keep: int, iterations: int
) -> Callable[[list[jax.Array], list[jax.Array]], jax.Array]:
  """The loop on a group: ``H`` the inputs ``xs`` of its consumers, ``f2`` their linear maps."""

  def per_channel(v, c):  # sum over every axis but the channels', then over each group channel
    v = jnp.sum(v, axis=tuple(a for a in range(v.ndim) if a != c.axis))
    return jax.ops.segment_sum(
      jnp.where(jnp.asarray(c.chan >= 0), v, 0.0), np.maximum(c.chan, 0), num_segments=size
    )

  @jax.jit
  def run(xs, ws):
    def gradient(s, first):
      total = jnp.zeros(size, jnp.float32)
      for x, w, c in zip(xs, ws, layers):
        on = jnp.where(jnp.asarray(c.chan >= 0), s[np.maximum(c.chan, 0)], True)
        shape = [1] * x.ndim
        shape[c.axis] = -1

        # R = 1/2 ||f2(H) - f2(H_S)||^2 (1/2 ||f2(H)||^2 on the first iteration), f2 linear:
        # dR/dH = f2^T(f2(H - H_S)), the transpose taken by jax.vjp (a convolution's patches
        # included: each activation's gradient sums over the patches that read it).
        def f2(h, w=w, c=c):
          return c.features(h) @ w

        residual = f2(jnp.where(first, x, x * (~on).reshape(shape)))
        (g,) = jax.vjp(f2, x)[1](residual)
        total = total + per_channel(g, c)
      return total

    return _loop(per_channel(xs[0], layers[0]), gradient, keep, iterations)

  return run


def ispasp(
  fn: Callable[..., Any],
  params: Params,
  groups: Sequence[ChannelGroup],
  ratio: Sparsity | Sequence[Sparsity],
  *batch: Any,
  iterations: int = 20,
  round_to: int = 1,
  min_keep: int = 1,
) -> list[np.ndarray]:
  """i-SpaSP on the channel groups of ``fn``: which channels of each group to keep.

  The groups are pruned in order. For group ``j``, ``H`` is the input of each dense layer or
  convolution that reads its channels (the activation as ``fn`` computes it on ``batch``, with the
  channels removed from groups ``0 .. j-1`` zeroed), ``f2`` that layer's linear map (``H @ W``,
  or the convolution with its strides and padding), and the residual is summed over those layers;
  channel ``c``'s gradient and aggregated activation are summed over the samples, the spatial
  positions and its input rows (several after a flatten, or along the other contracted axes of
  a multi-axis dense layer). See the module docstring for the loop.

  Args:
    fn: the function, ``fn(params, *batch)``.
    params: its params.
    groups: channel groups of ``fn`` (`jaxprune.structured.dependency_groups`).
    ratio: the fraction of each group's channels removed, one number or one per group.
    *batch: the calibration batch (the arguments after ``params``).
    iterations: ``T``, the i-SpaSP iterations per group.
    round_to, min_keep: the kept count, as in `jaxprune.structured.importance.kept_count`.

  Returns:
    One NumPy bool array per group (``True``: kept), for `jaxprune.structured.slim`.

  Raises:
    ValueError: for a ratio outside ``[0, 1)``, a wrong number of ratios, ``iterations`` below 1,
      or a group whose channels no dense layer or convolution reads (naming the group).
    NotImplementedError: for a group read by one slice of a stacked (scanned) leaf (use
      `ispasp_hidden` with its hidden representation).

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jaxprune import structured
    >>> k = jax.random.split(jax.random.key(0), 3)
    >>> params = {'l0': {'kernel': jax.random.normal(k[0], (6, 8))},
    ...           'l1': {'kernel': jax.random.normal(k[1], (8, 3))}}
    >>> fn = lambda p, x: jax.nn.relu(x @ p['l0']['kernel']) @ p['l1']['kernel']
    >>> x = jax.random.normal(k[2], (32, 6))
    >>> groups = structured.dependency_groups(fn, params, x)
    >>> keeps = structured.ispasp(fn, params, groups, 0.5, x)
    >>> [int(k.sum()) for k in keeps]
    [4]
    >>> small, small_fn = structured.slim(fn, params, groups, keeps)
    >>> small['l0']['kernel'].shape
    (6, 4)

  References:
    Wolfe & Kyrillidis, `i-SpaSP: structured neural pruning via sparse signal recovery
    <https://arxiv.org/abs/2112.04905>`_, 2021
  """
  owner = "ispasp"
  groups = importance.check_groups(groups, owner)
  if isinstance(ratio, Sequence) and not isinstance(ratio, str):
    ratios = list(ratio)
    if len(ratios) != len(groups):
      raise ValueError(f"{owner}: got {len(ratios)} ratios for {len(groups)} groups.")
  else:
    ratios = [ratio] * len(groups)
  iterations = check_int("iterations", iterations, 1, owner)
  check_int("round_to", round_to, 1, owner)
  check_int("min_keep", min_keep, 1, owner)
  counts = []
  for g, r in zip(groups, ratios):
    check_sparsity(r, f"{owner}: ratio of group {g.name!r}")
    counts.append(int(importance.kept_count(g.size, r, round_to=round_to, min_keep=min_keep)))
  keeps: list[np.ndarray] = []
  for j, (group, keep) in enumerate(zip(groups, counts)):
    masked = params
    if keeps:
      masks = keep_masks(params, groups[:j], keeps)
      masked = jax.tree.map(
        lambda w, m: w if m is None else jnp.where(m, w, jnp.zeros((), jnp.result_type(w))),
        params,
        masks,
        is_leaf=lambda x: x is None,
      )
    layers = _consumers(fn, masked, group, batch, owner)
    s = _group_loop(group.size, layers, keep, iterations)(
      [c.x for c in layers], [c.w for c in layers]
    )
    keeps.append(np.asarray(s))
  return keeps
