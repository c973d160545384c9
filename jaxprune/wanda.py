"""Wanda: one-shot pruning by weights and activations, for the layers of any JAX function.

Sun et al. (2023) score each weight of a layer ``y = x @ W`` by ``|W_ij| * ||X_i||_2``, the weight's
magnitude times the norm of its input feature over all calibration tokens, and compare the weights
of each output: every output keeps the same number of inputs. There is no weight update. The
layers are pruned in the order the function uses them, each reading inputs computed by the already
pruned earlier layers (`jaxprune.calibration`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune import calibration
from jaxprune import patterns as patterns_lib
from jaxprune import plan as plan_lib
from jaxprune.typing import Masks, Params, PathSelector, Sparsity

__all__ = ["wanda"]


def _sum_of_squares(x: jax.Array) -> jax.Array:
  """Per input feature, the sum of ``x ** 2`` over the tokens of one batch."""
  return jnp.sum(x * x, axis=0)


@functools.partial(jax.jit, static_argnames=("n_m",))
def _prune(
  w: jax.Array, mean_square: jax.Array, keep: jax.Array, n_m: tuple[int, int] | None
) -> tuple[jax.Array, jax.Array]:
  score = jnp.abs(w) * jnp.sqrt(mean_square)[:, None]
  if n_m is not None:
    kept = patterns_lib.NM(n_m[0], n_m[1], 0).mask(score)
  else:  # the same count in every output (column), exact whatever the ties
    kept = calibration._keep_highest(score, keep, axis=0)
  return jnp.where(kept, w, 0.0), kept


def _solve(
  w: jax.Array, mean_square: jax.Array, target: calibration.Target, layer: calibration.Layer
) -> tuple[jax.Array, jax.Array]:
  keep = 0
  if target.n_m is None:
    keep = layer.fan_in - int(plan_lib.num_pruned(target.sparsity or 0.0, layer.fan_in))
  return _prune(w, mean_square, jnp.asarray(keep, jnp.int32), target.n_m)


_METHOD = calibration.Method("wanda", _solve, _sum_of_squares)


def wanda(
  fn: Callable[..., Any],
  params: Params,
  calibration_batches: Sequence[Any],
  sparsity: Sparsity | None = None,
  *,
  pattern: patterns_lib.Pattern | None = None,
  prune: PathSelector = None,
) -> Masks:
  """Wanda masks of every layer of ``fn``, from calibration data, layer by layer.

  Each layer's score is ``S_ij = |W_ij| * ||X_i||_2``, where ``X_i`` is input feature ``i`` over
  all tokens of all calibration batches (the root mean square, as the authors' code computes it: a
  constant factor per layer that changes no ranking). Unstructured: every output unit prunes
  exactly ``round(sparsity * fan_in)`` of its inputs (ties: the lower input index is kept). N:M:
  each output keeps the ``n`` highest scores of every ``m`` consecutive inputs. Weights are not
  updated; the layers are pruned in the order ``fn`` uses them, each on inputs computed through
  the already-pruned earlier layers (the paper's sequential variant). Layers are found in the
  jaxpr of ``fn`` (`jaxprune.calibration`): dense and DenseGeneral kernels (``dot_general``),
  convolution kernels (with ``X`` the input patches) and the slices of stacked leaves under
  ``scan``.

  Args:
    fn: any JAX function ``fn(params, *batch)``, e.g. ``lambda p, x: model.apply({'params': p},
      x)``, jitted or not.
    params: the trained params (Flax nnx ``State`` works).
    calibration_batches: a sequence of batches, each a tuple of the arguments after ``params`` (a
      bare array is one argument), all of one structure, shapes and dtypes.
    sparsity: the fraction of each output's inputs pruned, in ``[0, 1)``; ``None`` with N:M.
    pattern: ``None`` (unstructured) or ``jaxprune.patterns.n_m(n, m)`` (its groups run along each
      layer's input axis: -2 of a Dense or HWIO kernel).
    prune: which leaves are pruned (`jaxprune.leaves.Selector`; by default the kernels).

  Returns:
    The masks, a tree shaped like the params: a boolean mask (``True`` = kept) for each pruned leaf,
    ``None`` for the others; use them with `jaxprune.apply_masks` or
    ``jaxprune.static_sparse(masks=...)``.

  Raises:
    ValueError: for a bad sparsity or pattern, an N:M group that does not divide a layer's input
      axis, no or mismatched calibration batches, or a selected leaf that is not the weight of a
      ``dot_general`` or ``conv_general_dilated`` (the message names the leaf and the primitive).
    NotImplementedError: for a selected leaf used inside a ``while`` or ``cond``.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxprune
    >>> model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(4)])
    >>> batches = [jax.random.normal(jax.random.key(i), (32, 8)) for i in range(2)]
    >>> params = model.init(jax.random.key(0), batches[0])['params']
    >>> fn = lambda p, x: model.apply({'params': p}, x)
    >>> masks = jaxprune.wanda(fn, params, batches, 0.5)
    >>> masks['layers_0']['kernel'].sum(axis=0)  # every output keeps 4 of its 8 inputs
    Array([4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4], dtype=int32)
    >>> pruned = jaxprune.apply_masks(params, masks)

  References:
    Sun, Liu, Bair & Kolter, `A simple and effective pruning approach for large language models
    <https://arxiv.org/abs/2306.11695>`_, 2023
  """
  return calibration.run(
    _METHOD, fn, params, calibration_batches, sparsity, pattern=pattern, prune=prune
  )[0]
