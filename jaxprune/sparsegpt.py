"""SparseGPT: one-shot pruning with weight reconstruction, for the layers of any JAX function.

Frantar & Alistarh (2023) prune a layer ``y = x @ W`` so that its outputs on calibration inputs
change little: with ``H = 2 X^T X`` over the calibration tokens, the inputs (rows of ``W``) are
processed in order, in blocks; each block chooses its mask adaptively by ``w^2 / [H^-1]_ii^2`` and
each pruned weight's error is spread over the not yet processed weights of its output by the
optimal brain surgeon update (rows of the upper Cholesky factor of ``H^-1``), the later blocks
receiving the block's updates at once (lazy batch updates). The layers are pruned in the order the
function uses them, each on inputs computed by the already pruned and updated earlier layers
(`jaxprune.calibration`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import calibration
from jaxprune import patterns as patterns_lib
from jaxprune import plan as plan_lib
from jaxprune.checks import check_int, number
from jaxprune.typing import Masks, Params, PathSelector, Sparsity

__all__ = ["reconstruct", "sparsegpt"]

_HIGHEST = jax.lax.Precision.HIGHEST


def _gram(x: jax.Array) -> jax.Array:
  """``X^T X`` of one batch's ``[tokens, fan_in]`` inputs."""
  return jnp.matmul(x.T, x, precision=_HIGHEST)


@functools.partial(jax.jit, static_argnames=("block", "n_m", "fixed"))
def _reconstruct(
  w: jax.Array,
  hessian: jax.Array,
  dampening: jax.Array,
  prune_counts: jax.Array,
  fixed_mask: jax.Array,
  *,
  block: int,
  n_m: tuple[int, int] | None,
  fixed: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """SparseGPT on a float32 ``[fan_in, fan_out]`` matrix (rows: inputs); see `reconstruct`.

  ``prune_counts[b]`` is how many entries block ``b`` prunes (unstructured); ``fixed_mask`` is the
  mask of kept entries when ``fixed``. Also returns whether the result is finite.
  """
  f32 = jnp.float32
  fan_in, fan_out = w.shape
  num_blocks = prune_counts.shape[0]
  size = num_blocks * block
  h = hessian.astype(f32)
  pruned = ~fixed_mask if fixed else jnp.zeros((fan_in, fan_out), bool)
  dead = jnp.diagonal(h) == 0
  h = h + jnp.diag(dead.astype(f32))  # an input that is always zero: H_ii = 1, its weights 0
  w = jnp.where(dead[:, None], 0.0, w.astype(f32))
  h = h + dampening.astype(f32) * jnp.mean(jnp.diagonal(h)) * jnp.eye(fan_in, dtype=f32)
  pad = size - fan_in  # the last block is padded with inputs that interact with nothing
  if pad:
    h = jnp.zeros((size, size), f32).at[:fan_in, :fan_in].set(h)
    h = h.at[fan_in:, fan_in:].set(jnp.eye(pad, dtype=f32))
    w = jnp.pad(w, ((0, pad), (0, 0)))
    pruned = jnp.pad(pruned, ((0, pad), (0, 0)))
  lower = jnp.linalg.cholesky(h)
  hinv = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(size, dtype=f32))
  upper = jnp.triu(jnp.linalg.cholesky(hinv).T)  # H^-1 = U^T U
  real = jnp.arange(size) < fan_in
  m = n_m[1] if n_m is not None and not fixed else 1

  def column(i, carry):
    w1, p1, err1, u1, d = carry
    row = w1[i]
    q = jnp.where(p1[i], 0.0, row)
    err = (row - q) / d[i]
    w1 = w1 - u1[i][:, None] * err[None, :]  # u1[i, j] = 0 for the processed j < i
    return w1.at[i].set(q), p1, err1.at[i].set(err), u1, d

  def group(g, carry):
    w1, p1, err1, u1, d = carry
    if n_m is not None and not fixed:  # the N:M mask of the group, from the current weights
      start = g * m
      wg = jax.lax.dynamic_slice_in_dim(w1, start, m, 0)
      dg = jax.lax.dynamic_slice_in_dim(d, start, m, 0)
      kept = patterns_lib.NM(n_m[0], m, 0).mask(wg * wg / (dg * dg)[:, None])
      p1 = jax.lax.dynamic_update_slice_in_dim(p1, ~kept, start, 0)
    return jax.lax.fori_loop(g * m, (g + 1) * m, column, (w1, p1, err1, u1, d))

  def block_step(b, carry):
    w, pruned = carry
    i1 = b * block
    w1 = jax.lax.dynamic_slice_in_dim(w, i1, block, 0)
    u1 = jax.lax.dynamic_slice(upper, (i1, i1), (block, block))
    d = jnp.diagonal(u1)
    p1 = jax.lax.dynamic_slice_in_dim(pruned, i1, block, 0)
    if n_m is None and not fixed:  # the block's mask, adaptive: w^2 / [H^-1]_ii^2 at its start
      real1 = jax.lax.dynamic_slice_in_dim(real, i1, block, 0)
      score = jnp.where(real1[:, None], w1 * w1 / (d * d)[:, None], jnp.inf)
      p1 = ~calibration._keep_highest(score, block * fan_out - prune_counts[b])
    err1 = jnp.zeros_like(w1)
    carry = (w1, p1, err1, u1, d)
    if m == 1:  # unstructured or a fixed mask: the columns in turn
      w1, p1, err1, _, _ = jax.lax.fori_loop(0, block, column, carry)
    else:  # N:M: each group's mask when it is reached, then its columns
      w1, p1, err1, _, _ = jax.lax.fori_loop(0, block // m, group, carry)
    w = jax.lax.dynamic_update_slice_in_dim(w, w1, i1, 0)
    rows = jax.lax.dynamic_slice_in_dim(upper, i1, block, 0)  # [block, size]
    later = jnp.arange(size) >= i1 + block
    rows = jnp.where(later[None, :], rows, 0.0)
    w = w - jnp.matmul(rows.T, err1, precision=_HIGHEST)  # the lazy update of later blocks
    return w, jax.lax.dynamic_update_slice_in_dim(pruned, p1, i1, 0)

  w, pruned = jax.lax.fori_loop(0, num_blocks, block_step, (w, pruned))
  kept = ~pruned[:fan_in]
  w = jnp.where(kept, w[:fan_in], 0.0)
  return w, kept, jnp.all(jnp.isfinite(w))


def _check_options(owner: str, block_size: Any, dampening: Any) -> tuple[int, float]:
  block_size = check_int("block_size", block_size, 1, owner)
  damp = number(dampening, f"{owner}: dampening")
  if damp is None or not (math.isfinite(damp) and damp >= 0):
    raise ValueError(f"{owner}: dampening must be a finite number >= 0, got {dampening!r}.")
  return block_size, damp


def _run(
  w: jax.Array,
  hessian: jax.Array,
  target: calibration.Target,
  mask: jax.Array | None,
  block_size: int,
  dampening: float,
  name: str,
  owner: str,
) -> tuple[jax.Array, jax.Array]:
  fan_in, fan_out = w.shape
  block = min(block_size, fan_in)
  if target.n_m is not None and mask is None and block % target.n_m[1]:
    raise ValueError(
      f"{owner}: leaf {name!r}: block_size={block_size} (a block of {block} of its {fan_in} "
      f"inputs) is not a multiple of M={target.n_m[1]}; N:M groups must not straddle blocks."
    )
  num_blocks = -(-fan_in // block)
  counts = [
    0
    if target.n_m is not None or mask is not None
    else int(plan_lib.num_pruned(target.sparsity or 0.0, min(block, fan_in - b * block) * fan_out))
    for b in range(num_blocks)
  ]
  fixed = np.ones((1, 1), bool) if mask is None else jnp.asarray(mask, bool)
  new, kept, finite = _reconstruct(
    w,
    hessian,
    np.float32(dampening),
    np.asarray(counts, np.int32),
    fixed,
    block=block,
    n_m=target.n_m,
    fixed=mask is not None,
  )
  if not bool(finite):
    raise ValueError(
      f"{owner}: leaf {name!r}: the reconstruction is not finite: its dampened Hessian is not "
      f"positive definite in float32; raise dampening (now {dampening})."
    )
  return new, kept


def reconstruct(
  weight: jax.Array,
  hessian: jax.Array,
  sparsity: Sparsity | None = None,
  *,
  pattern: patterns_lib.Pattern | None = None,
  mask: jax.Array | None = None,
  block_size: int = 128,
  dampening: float = 0.01,
) -> tuple[jax.Array, jax.Array]:
  """SparseGPT on one ``[fan_in, fan_out]`` matrix with its Hessian ``H = 2 X^T X``.

  Inputs whose ``H_ii`` is zero get ``H_ii = 1`` and zero weights; ``H`` is dampened by
  ``dampening * mean(diag H)``. The inputs are processed in order in blocks of ``block_size``:
  unstructured, each block prunes exactly ``round(sparsity * rows * fan_out)`` of its entries
  with the lowest ``w^2 / [U]_ii^2`` (``U`` the upper Cholesky factor of ``H^-1``, ``w`` the
  weights as updated so far; ties keep the lower position); N:M, each output keeps the ``n``
  highest of every ``m`` consecutive inputs, chosen when the group is reached; with ``mask``, that
  fixed mask. Each input's pruned weights are set to zero and their error spread over the later
  inputs of their output (``w_j -= U_ij * (w_i - q_i) / U_ii``), within the block at once and to
  later blocks in one product per block.

  Args:
    weight: the ``[fan_in, fan_out]`` matrix (rows are inputs, as a Flax Dense kernel).
    hessian: ``[fan_in, fan_in]``, ``2 X^T X`` up to a positive factor (the result does not depend
      on it).
    sparsity: the fraction pruned per block, in ``[0, 1)``; ``None`` with N:M or ``mask``.
    pattern: ``None`` or ``jaxprune.patterns.n_m(n, m)`` (groups along the rows).
    mask: a fixed boolean mask (``True`` = kept) instead of the adaptive one.
    block_size: inputs per block (128); a multiple of ``m`` under N:M.
    dampening: the relative dampening ``lambda`` (0.01).

  Returns:
    ``(weight, mask)``: the reconstructed float32 matrix, exactly zero where the mask is ``False``.

  Raises:
    ValueError: for bad shapes, sparsity, pattern, block size or dampening, and when the result
      is not finite (raise ``dampening``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxprune.sparsegpt import reconstruct
    >>> x = jax.random.normal(jax.random.key(0), (64, 8))
    >>> w = jax.random.normal(jax.random.key(1), (8, 3))
    >>> new, mask = reconstruct(w, 2 * x.T @ x, 0.5)
    >>> int(mask.sum()), bool(jnp.all(new[~mask] == 0))
    (12, True)

  References:
    Frantar & Alistarh, `SparseGPT: massive language models can be accurately pruned in one-shot
    <https://arxiv.org/abs/2301.00774>`_, 2023
  """
  owner = "reconstruct"
  block_size, damp = _check_options(owner, block_size, dampening)
  w = jnp.asarray(weight)
  h = jnp.asarray(hessian)
  if w.ndim != 2 or h.shape != (w.shape[0], w.shape[0]):
    raise ValueError(
      f"{owner}: weight must be [fan_in, fan_out] and hessian [fan_in, fan_in], got "
      f"{w.shape} and {h.shape}."
    )
  if mask is not None:
    if sparsity is not None or pattern is not None:
      raise ValueError(f"{owner}: give a fixed mask or a sparsity/pattern, not both.")
    if np.shape(mask) != w.shape:
      raise ValueError(f"{owner}: mask has shape {np.shape(mask)}, weight {w.shape}.")
    target = calibration.Target(None, None)
  else:
    target = calibration._target(owner, sparsity, pattern, None)
    if target.n_m is not None and w.shape[0] % target.n_m[1]:
      raise ValueError(
        f"{owner}: M={target.n_m[1]} does not divide the {w.shape[0]} rows (inputs) of weight."
      )
  return _run(w, h, target, mask, block_size, damp, "weight", owner)


def sparsegpt(
  fn: Callable[..., Any],
  params: Params,
  calibration_batches: Sequence[Any],
  sparsity: Sparsity | None = None,
  *,
  pattern: patterns_lib.Pattern | None = None,
  prune: PathSelector = None,
  block_size: int = 128,
  dampening: float = 0.01,
) -> tuple[Masks, Params]:
  """SparseGPT masks and reconstructed weights of every layer of ``fn``, layer by layer.

  For each layer, in the order ``fn`` uses them, ``H = 2 X^T X`` is accumulated over all tokens
  of all calibration batches (a mean, in float32) from inputs computed by the already pruned and
  reconstructed earlier layers, and the layer's weight is pruned and updated by `reconstruct`
  (adaptive masks per block of ``block_size`` inputs, exact counts per block; or N:M). Layers are
  found in the jaxpr of ``fn`` (`jaxprune.calibration`): dense and DenseGeneral kernels
  (``dot_general``), convolution kernels (``X`` the input patches) and the slices of stacked
  leaves under ``scan``.

  Args:
    fn: any JAX function ``fn(params, *batch)``, e.g. ``lambda p, x: model.apply({'params': p},
      x)``, jitted or not.
    params: the trained params (Flax nnx ``State`` works).
    calibration_batches: a sequence of batches, each a tuple of the arguments after ``params`` (a
      bare array is one argument), all of one structure, shapes and dtypes.
    sparsity: the fraction pruned in every block of every layer, in ``[0, 1)``; ``None`` with N:M.
    pattern: ``None`` (unstructured) or ``jaxprune.patterns.n_m(n, m)`` (its groups run along each
      layer's input axis: -2 of a Dense or HWIO kernel).
    prune: which leaves are pruned (`jaxprune.leaves.Selector`; by default the kernels).
    block_size: inputs per block (128, the paper's); a multiple of ``m`` under N:M.
    dampening: ``lambda`` of the dampening ``H += lambda * mean(diag H) * I`` (0.01).

  Returns:
    ``(masks, params)``: the masks (a tree shaped like the params, ``None`` for leaves not pruned),
    and the params with the reconstructed weights (exactly zero where pruned, in their dtype; the
    other leaves untouched).

  Raises:
    ValueError: for a bad sparsity, pattern, block size or dampening, an N:M group that does not
      divide a layer's input axis, no or mismatched calibration batches, a selected leaf that is
      not the weight of a ``dot_general`` or ``conv_general_dilated`` (the message names the leaf
      and the primitive), or a reconstruction that is not finite.
    NotImplementedError: for a selected leaf used inside a ``while`` or ``cond``.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxprune
    >>> model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(4)])
    >>> batches = [jax.random.normal(jax.random.key(i), (32, 8)) for i in range(2)]
    >>> params = model.init(jax.random.key(0), batches[0])['params']
    >>> fn = lambda p, x: model.apply({'params': p}, x)
    >>> masks, new = jaxprune.sparsegpt(fn, params, batches, pattern=jaxprune.patterns.n_m(2, 4))
    >>> kept, kernel = masks['layers_0']['kernel'], new['layers_0']['kernel']
    >>> kept.reshape(2, 4, 16).sum(axis=1)  # 2 of every 4 inputs of each output
    Array([[2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
           [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]], dtype=int32)
    >>> bool(jnp.all(kernel[~kept] == 0)), kernel.dtype
    (True, dtype('float32'))

  References:
    Frantar & Alistarh, `SparseGPT: massive language models can be accurately pruned in one-shot
    <https://arxiv.org/abs/2301.00774>`_, 2023
  """
  owner = "sparsegpt"
  block_size, damp = _check_options(owner, block_size, dampening)

  def solve(w, gram, target, layer):  # H = 2 X^T X / tokens: the factor changes no result
    return _run(w, gram, target, None, block_size, damp, layer.name, owner)

  method = calibration.Method(owner, solve, _gram)
  return calibration.run(
    method, fn, params, calibration_batches, sparsity, pattern=pattern, prune=prune
  )
