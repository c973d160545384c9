"""Low-rank training by projection with energy transfer (LRPET), and export of the factors.

`lrpet` is an optax transformation on the engine (`jaxprune.engine`) with no masks: on its
projection steps (every ``frequency`` updates, the paper's "after every epoch") it replaces each
selected kernel ``W`` by its projection onto rank ``r`` through the update, as the library's masks
zero pruned weights through the update, so that after ``optax.apply_updates`` the kernel has rank
exactly ``r`` (up to float rounding: its other singular values are below ``1e-6`` of the largest in
float32). Between projections the weights train in the full space. The projection of a kernel, on
its matrix view ``[fan_in, fan_out]`` (a convolution's ``[kh, kw, c_in, c_out]`` kernel reshaped to
``[kh * kw * c_in, c_out]``):

1. BN rectification (optional): with a batch norm after the layer, ``M = W diag(c)``,
   ``c = gamma / sqrt(var + eps)`` the norm's per-channel scale, so that the approximation is
   optimal for the merged weights the network computes with;
2. SVD ``M = U diag(s) V^T``; keep the ``r`` largest singular values ``s_head``, scale the others
   ``s_tail`` by ``f`` (``reduce_factor``, 0: removed);
3. energy transfer: ``s_head *= sqrt(alpha)``,
   ``alpha = (||s||^2 - ||f s_tail||^2) / ||s_head||^2``, so that the Frobenius norm (the
   "energy") is unchanged;
4. ``W' = U diag(s') V^T``, divided back by the rectification's scale with the authors'
   regularised inverse ``c / (c^2 + 1e-5)``.

`project` is the same projection as a function, `factorize` splits projected kernels into their
two factors ``W = A B`` (``A = U_r sqrt(s_r)`` shaped like the kernel with ``r`` output channels,
``B = sqrt(s_r) V_r^T`` of shape ``[r, fan_out]``), `dense` and `conv` compute with them, and so do
the Flax layers ``LowRankDense`` and ``LowRankConv`` (made on first access, so that importing
jaxprune does not import Flax): ``x @ A @ B`` costs ``r (fan_in + fan_out)`` multiply-adds per row
instead of ``fan_in fan_out`` (``python -m benchmarks.low_rank`` measures the speedup).

References:
  Guo, Lin, Chen, Xing, Liu & Xu, `Compact model training by low-rank projection with energy
  transfer <https://arxiv.org/abs/2204.05566>`_, IEEE TNNLS 2024 (code: ``BZQLin/LRPET``,
  ``CNN/cifar10/cifar10_train_bn.py``)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune import engine, selection
from jaxprune import leaves as leaves_lib
from jaxprune import plan as plan_lib
from jaxprune import schedules as schedules_lib
from jaxprune import scores as scores_lib
from jaxprune.checks import check_bool, check_int, check_regex, number
from jaxprune.typing import Params, PathSelector

# LowRankDense and LowRankConv (Flax modules, made on first access) are public too.
__all__ = [
  "Factors",
  "conv",
  "dense",
  "factorize",
  "lrpet",
  "module_params",
  "project",
  "project_matrix",
  "ranks",
]

BN_RECTIFICATION_EPS = 1e-5
"""The regularisation of the authors' inverse of the rectification scale: ``c / (c^2 + eps)``."""


def _check_rank_args(
  rank: Any, prune_ratio: Any, overrides: Mapping[str, int] | None, owner: str
) -> dict[str, int]:
  if (rank is None) == (prune_ratio is None):
    raise ValueError(
      f"{owner}: give exactly one of rank (kept singular values per kernel) and prune_ratio "
      f"(the fraction removed), got rank={rank!r}, prune_ratio={prune_ratio!r}."
    )
  if rank is not None:
    check_int("rank", rank, 1, owner)
  else:
    value = number(prune_ratio, f"{owner}: prune_ratio")
    if value is None:
      raise TypeError(f"{owner}: prune_ratio must be a concrete number, got a traced value.")
    if not 0.0 <= value < 1.0:
      raise ValueError(f"{owner}: prune_ratio must be in [0, 1), got {prune_ratio!r}.")
  if overrides is not None and not isinstance(overrides, Mapping):
    raise TypeError(f"{owner}: overrides must be a mapping {{regex: rank}}, got {overrides!r}.")
  out = {}
  for key, value in (overrides or {}).items():
    check_regex(key, owner, "override")
    out[key] = check_int(f"rank of override {key!r}", value, 1, owner)
  return out


def _rank(
  name: str,
  shape: tuple[int, ...],
  rank: int | None,
  prune_ratio: float | None,
  overrides: Mapping[str, int],
  owner: str,
) -> int:
  if len(shape) < 2:
    raise ValueError(
      f"{owner}: leaf {name!r} of shape {shape} is selected, but only leaves with at least 2 "
      "dimensions have a matrix view; exclude it with prune=."
    )
  n = min(math.prod(shape[:-1]), shape[-1])
  hits = [v for k, v in overrides.items() if re.fullmatch(k, name)]
  if hits:
    return min(hits[0], n)
  if rank is not None:
    return min(rank, n)
  assert prune_ratio is not None  # _check_rank_args
  return max(1, n - round(float(prune_ratio) * n))


def ranks(
  params: Params,
  rank: int | None = None,
  *,
  prune_ratio: float | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, int] | None = None,
) -> dict[str, int]:
  """The rank each selected kernel is projected to.

  A kernel's matrix view is ``[fan_in, fan_out]`` (its last axis is ``fan_out``); it has
  ``n = min(fan_in, fan_out)`` singular values. With ``rank`` it keeps ``min(rank, n)``; with
  ``prune_ratio`` it keeps ``n - round(prune_ratio * n)``, at least 1 (the authors' code keeps
  ``int(n - n * prun_goal)``, which floating point can make one less, e.g. 19 of 100 at 0.8).

  Args:
    params: the params.
    rank: the rank of every kernel.
    prune_ratio: the fraction of each kernel's singular values removed, in ``[0, 1)``.
    prune: which leaves are projected (`jaxprune.leaves.Selector`; by default the kernels).
    overrides: ``{path regex: rank}`` for kernels with a rank of their own (the first match).

  Returns:
    ``{path: rank}`` for the selected leaves, in the params' order.

  Raises:
    ValueError: for both or neither of ``rank`` and ``prune_ratio``, a rank below 1, a ratio
      outside ``[0, 1)``, or a selected leaf of fewer than 2 dimensions (naming it).
    TypeError: for a non-integer rank or a non-numeric ratio.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import low_rank
    >>> params = {'conv': {'kernel': jnp.ones((3, 3, 8, 16))},
    ...           'dense': {'kernel': jnp.ones((64, 10))}}
    >>> low_rank.ranks(params, prune_ratio=0.75)
    {'conv/kernel': 4, 'dense/kernel': 2}
  """
  owner = "ranks"
  checked = _check_rank_args(rank, prune_ratio, overrides, owner)
  named = leaves_lib.named_leaves(leaves_lib.unwrap_variables(params))
  flags = leaves_lib.prunable_paths(params, prune, owner=owner)
  return {
    name: _rank(name, tuple(jnp.shape(leaf)), rank, prune_ratio, checked, owner)
    for (name, leaf), f in zip(named, flags)
    if f
  }


def project_matrix(
  w: jax.Array,
  rank: int,
  *,
  energy_transfer: bool = True,
  reduce_factor: float = 0.0,
  scale: jax.Array | None = None,
) -> jax.Array:
  """LRPET's projection of one matrix ``[fan_in, fan_out]`` (see the module docstring).

  Args:
    w: the matrix.
    rank: the number of singular values kept.
    energy_transfer: scale the kept singular values so that the Frobenius norm is unchanged.
    reduce_factor: ``f``: the removed singular values are multiplied by it (0: the result has
      rank ``rank``).
    scale: BN rectification: the following norm's per-output scale ``gamma / sqrt(var + eps)``
      (shape ``[fan_out]``), or ``None``.

  Returns:
    The projected matrix, float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import low_rank
    >>> w = jnp.diag(jnp.array([3.0, 4.0]))  # singular values 4 and 3
    >>> low_rank.project_matrix(w, 1)  # keeps 4, scaled to 5: the norm stays 5
    Array([[0., 0.],
           [0., 5.]], dtype=float32)
  """
  m = jnp.asarray(w, jnp.float32)
  if scale is not None:
    c = jnp.asarray(scale, jnp.float32)
    m = m * c[None, :]
  u, s, vt = jnp.linalg.svd(m, full_matrices=False)
  head, tail = s[:rank], s[rank:] * reduce_factor
  if energy_transfer:
    kept = jnp.sum(head * head)
    alpha = (jnp.sum(s * s) - jnp.sum(tail * tail)) / jnp.where(kept > 0, kept, 1.0)
    head = head * jnp.sqrt(jnp.where(kept > 0, alpha, 1.0))
  if reduce_factor == 0:  # a product of rank-r factors: no rounding noise in the other directions
    out = (u[:, :rank] * head[None, :]) @ vt[:rank]
  else:
    out = (u * jnp.concatenate([head, tail])[None, :]) @ vt
  if scale is not None:
    out = out * (c / (c * c + BN_RECTIFICATION_EPS))[None, :]
  return out


def _project_leaf(
  w: jax.Array, rank: int, energy_transfer: bool, reduce_factor: float, scale: Any
) -> jax.Array:
  shape = jnp.shape(w)
  out = project_matrix(
    jnp.reshape(w, (-1, shape[-1])),
    rank,
    energy_transfer=energy_transfer,
    reduce_factor=reduce_factor,
    scale=scale,
  )
  return jnp.reshape(out, shape)


def _check_projection(energy_transfer: Any, reduce_factor: Any, owner: str) -> float:
  check_bool("energy_transfer", energy_transfer, owner)
  f = number(reduce_factor, f"{owner}: reduce_factor")
  if f is None or not 0.0 <= f <= 1.0:
    raise ValueError(f"{owner}: reduce_factor must be a number in [0, 1], got {reduce_factor!r}.")
  return f


def project(
  params: Params,
  rank: int | None = None,
  *,
  prune_ratio: float | None = None,
  energy_transfer: bool = True,
  reduce_factor: float = 0.0,
  scales: Mapping[str, Any] | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, int] | None = None,
) -> Params:
  """The params with every selected kernel projected as `lrpet` projects it.

  Args:
    params: the params.
    rank, prune_ratio, prune, overrides: the rank of each kernel, as in `ranks`.
    energy_transfer, reduce_factor: as in `project_matrix`.
    scales: BN rectification: ``{kernel path: gamma / sqrt(var + eps)}`` of the norm after it.

  Returns:
    The params, the selected kernels projected (in their dtype), the other leaves unchanged.

  Raises:
    ValueError, TypeError: as `ranks`, for a bad ``reduce_factor`` or a ``scales`` key that is no
      selected kernel.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jaxprune import low_rank
    >>> params = {'dense': {'kernel': jax.random.normal(jax.random.key(0), (8, 6))}}
    >>> out = low_rank.project(params, 2)
    >>> int(np.linalg.matrix_rank(np.asarray(out['dense']['kernel'])))
    2
  """
  owner = "project"
  f = _check_projection(energy_transfer, reduce_factor, owner)
  r = ranks(params, rank, prune_ratio=prune_ratio, prune=prune, overrides=overrides)
  scales = dict(scales or {})
  unknown = [k for k in scales if k not in r]
  if unknown:
    raise ValueError(f"{owner}: scales for {unknown}, which are not projected kernels {list(r)}.")

  def one(path, leaf):
    name = leaves_lib.path_str(path)
    if name not in r:
      return leaf
    out = _project_leaf(leaf, r[name], energy_transfer, f, scales.get(name))
    return out.astype(jnp.result_type(leaf))

  return jax.tree_util.tree_map_with_path(one, params)


class Factors(NamedTuple):
  """The two factors of a rank-``r`` kernel ``W = A B`` (on its matrix view).

  Attributes:
    a: ``U_r sqrt(s_r)``, shaped like the kernel with ``r`` output channels
      (``[fan_in, r]`` for a dense kernel, ``[kh, kw, c_in, r]`` for a convolution's).
    b: ``sqrt(s_r) V_r^T``, ``[r, fan_out]``.
  """

  a: jax.Array
  b: jax.Array


def factorize(
  params: Params,
  rank: int | None = None,
  *,
  prune_ratio: float | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, int] | None = None,
) -> Params:
  """Splits every selected kernel into its rank-``r`` factors (the truncated SVD).

  On a kernel that LRPET projected to rank ``r`` the factors reproduce it (up to rounding); on
  any other kernel they are its best rank-``r`` approximation (no energy transfer).

  Args:
    params: the params (after an `lrpet` projection step, or from `project`).
    rank, prune_ratio, prune, overrides: the rank of each kernel, as in `ranks`.

  Returns:
    The params with each selected kernel replaced by its `Factors` (in the kernel's dtype).

  Raises:
    ValueError, TypeError: as `ranks`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxprune import low_rank
    >>> w = jax.random.normal(jax.random.key(0), (8, 6))
    >>> params = low_rank.project({'dense': {'kernel': w, 'bias': jnp.zeros(6)}}, 2)
    >>> f = low_rank.factorize(params, 2)['dense']['kernel']
    >>> f.a.shape, f.b.shape, bool(jnp.allclose(f.a @ f.b, params['dense']['kernel'], atol=1e-5))
    ((8, 2), (2, 6), True)
  """
  r = ranks(params, rank, prune_ratio=prune_ratio, prune=prune, overrides=overrides)

  def one(path, leaf):
    name = leaves_lib.path_str(path)
    if name not in r:
      return leaf
    k, shape, dtype = r[name], jnp.shape(leaf), jnp.result_type(leaf)
    u, s, vt = jnp.linalg.svd(jnp.reshape(leaf, (-1, shape[-1])).astype(jnp.float32), False)
    root = jnp.sqrt(s[:k])
    a = jnp.reshape(u[:, :k] * root[None, :], (*shape[:-1], k)).astype(dtype)
    return Factors(a, (root[:, None] * vt[:k]).astype(dtype))

  return jax.tree_util.tree_map_with_path(one, params)


def module_params(factorized: Params) -> Params:
  """Params for ``LowRankDense`` / ``LowRankConv`` layers from `factorize`'s output.

  Every dict holding a `Factors` under ``"kernel"`` gets ``"a"`` and ``"b"`` instead; the rest
  (biases, other layers) is unchanged, so a model whose factorised layers keep their names takes
  the result directly.

  Args:
    factorized: `factorize`'s output.

  Returns:
    The params tree for the low-rank model.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import low_rank
    >>> tree = {'Dense_0': {'kernel': low_rank.Factors(jnp.ones((4, 2)), jnp.ones((2, 3))),
    ...                     'bias': jnp.zeros(3)}}
    >>> sorted(low_rank.module_params(tree)['Dense_0'])
    ['a', 'b', 'bias']
  """
  if isinstance(factorized, Mapping):
    out = {}
    for key, value in factorized.items():
      if key == "kernel" and isinstance(value, Factors):
        out["a"], out["b"] = value.a, value.b
      else:
        out[key] = module_params(value)
    return out
  return factorized


def dense(x: jax.Array, factors: Factors, bias: jax.Array | None = None) -> jax.Array:
  """A dense layer with factorised kernel: ``(x @ A) @ B + bias``.

  Args:
    x: inputs ``[..., fan_in]``.
    factors: the layer's `Factors` (``A`` of shape ``[fan_in, r]``).
    bias: ``[fan_out]`` or ``None``.

  Returns:
    ``[..., fan_out]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import low_rank
    >>> f = low_rank.Factors(jnp.ones((3, 1)), jnp.full((1, 2), 2.0))
    >>> low_rank.dense(jnp.ones((1, 3)), f, jnp.array([0.0, 1.0]))
    Array([[6., 7.]], dtype=float32)
  """
  y = (x @ factors.a) @ factors.b
  return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def conv(
  x: jax.Array,
  factors: Factors,
  bias: jax.Array | None = None,
  *,
  strides: Sequence[int] | int = 1,
  padding: Any = "SAME",
) -> jax.Array:
  """A convolution with factorised kernel (channels last): a convolution with ``A`` to ``r``
  channels, then the 1x1 one with ``B``, as the authors' export (their ``C`` then ``N``).

  Args:
    x: inputs ``[batch, *spatial, c_in]`` (1 to 3 spatial axes).
    factors: the layer's `Factors` (``A`` of shape ``[*kernel_size, c_in, r]``).
    bias: ``[c_out]`` or ``None``.
    strides: the strides of the first convolution.
    padding: ``"SAME"``, ``"VALID"`` or explicit pairs, as `flax.linen.Conv`.

  Returns:
    ``[batch, *out_spatial, c_out]``.

  Raises:
    ValueError: for other than 1 to 3 spatial axes.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import low_rank
    >>> f = low_rank.Factors(jnp.ones((3, 3, 2, 1)), jnp.ones((1, 4)))
    >>> low_rank.conv(jnp.ones((1, 5, 5, 2)), f, padding='VALID').shape
    (1, 3, 3, 4)
  """
  spatial = jnp.ndim(factors.a) - 2
  if not 1 <= spatial <= 3:
    raise ValueError(f"conv: 1 to 3 spatial axes, got a kernel of shape {jnp.shape(factors.a)}.")
  dims = "DHW"[3 - spatial :]
  strides = (strides,) * spatial if isinstance(strides, int) else tuple(strides)
  padding = padding.upper() if isinstance(padding, str) else padding
  y = jax.lax.conv_general_dilated(
    x, factors.a, strides, padding, dimension_numbers=(f"N{dims}C", f"{dims}IO", f"N{dims}C")
  )
  y = y @ factors.b
  return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def _flax_layers() -> dict[str, type]:
  """The Flax layers, made on first use: importing jaxprune does not import Flax."""
  if _LAYERS:
    return _LAYERS
  import flax.linen as nn

  class LowRankDense(nn.Module):
    """A Flax dense layer with a rank-``rank`` kernel ``A B`` (`dense`); params ``a``, ``b``,
    ``bias`` (`module_params` makes them from `factorize`).

    Attributes:
      features: the output features.
      rank: the rank ``r``.
      use_bias: whether to add a bias.
    """

    features: int
    rank: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
      a = self.param("a", nn.initializers.lecun_normal(), (jnp.shape(x)[-1], self.rank))
      b = self.param("b", nn.initializers.lecun_normal(), (self.rank, self.features))
      bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
      return dense(x, Factors(a, b), bias)

  class LowRankConv(nn.Module):
    """A Flax convolution with a rank-``rank`` kernel (`conv`); params ``a``, ``b``, ``bias``.

    Attributes:
      features: the output channels.
      kernel_size: the spatial size of the kernel.
      rank: the rank ``r``.
      strides: the strides of the first convolution.
      padding: its padding (as `flax.linen.Conv`).
      use_bias: whether to add a bias.
    """

    features: int
    kernel_size: Sequence[int]
    rank: int
    strides: Sequence[int] | int = 1
    padding: Any = "SAME"
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
      shape = (*self.kernel_size, jnp.shape(x)[-1], self.rank)
      a = self.param("a", nn.initializers.lecun_normal(), shape)
      b = self.param("b", nn.initializers.lecun_normal(), (self.rank, self.features))
      bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
      return conv(x, Factors(a, b), bias, strides=self.strides, padding=self.padding)

  for layer in (LowRankDense, LowRankConv):
    layer.__module__, layer.__qualname__ = __name__, layer.__name__
  _LAYERS.update(LowRankDense=LowRankDense, LowRankConv=LowRankConv)
  return _LAYERS


_LAYERS: dict[str, type] = {}


def __getattr__(name: str) -> Any:
  """``LowRankDense`` and ``LowRankConv``, Flax modules made on first access."""
  if name in ("LowRankDense", "LowRankConv"):
    return _flax_layers()[name]
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _bn_scales(
  batch_norm: Mapping[str, str],
  params: Params,
  extra_args: Mapping[str, Any],
  epsilon: Any,
  owner: str,
) -> dict[str, jax.Array]:
  if "batch_stats" not in extra_args:
    raise ValueError(
      f"{owner}: batch_norm= rectifies with the norms' running variances; pass them as "
      "tx.update(grads, state, params, batch_stats=variables['batch_stats'])."
    )
  stats = dict(leaves_lib.named_leaves(leaves_lib.unwrap_variables(extra_args["batch_stats"])))
  named = dict(leaves_lib.named_leaves(leaves_lib.unwrap_variables(params)))
  out = {}
  for kernel, norm in batch_norm.items():
    var = stats.get(f"{norm}/var")
    if var is None:
      raise ValueError(
        f"{owner}: the norm {norm!r} of kernel {kernel!r} has no running variance "
        f"{norm + '/var'!r} in batch_stats; its leaves are {sorted(stats)}."
      )
    gamma = named.get(f"{norm}/scale", jnp.ones_like(var))
    out[kernel] = jnp.asarray(gamma, jnp.float32) / jnp.sqrt(
      jnp.asarray(var, jnp.float32) + epsilon
    )
  return out


def lrpet(
  rank: int | None = None,
  *,
  prune_ratio: float | None = None,
  frequency: int,
  begin_step: int = 0,
  end_step: int | None = None,
  energy_transfer: bool = True,
  reduce_factor: float = 0.0,
  batch_norm: Mapping[str, str] | None = None,
  bn_epsilon: float = 1e-5,
  prune: PathSelector = None,
  overrides: Mapping[str, int] | None = None,
  inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """LRPET: train in the full space, project each kernel onto rank ``r`` every ``frequency`` steps.

  On a projection step (``begin_step``, every ``frequency`` updates after it, and ``end_step``;
  never after it) the update of each selected kernel is ``W' - w``, ``W'`` the projection (module
  docstring) of ``w + u``, ``u`` the optimizer's update: after ``optax.apply_updates`` the kernel
  is the projection, of rank exactly ``r`` (up to rounding). Other steps pass the optimizer's
  updates through unchanged. Make the last update of training a projection step (``end_step``) to
  deploy rank-``r`` kernels, then `factorize` them.

  Args:
    rank: the rank of every kernel (capped at ``min(fan_in, fan_out)``). Give this or
      ``prune_ratio``.
    prune_ratio: the fraction of each kernel's singular values removed (the code's
      ``prun_goal``, 0.8 for ResNet-56), see `ranks`.
    frequency: updates between projections (an epoch in the paper).
    begin_step: the first projection.
    end_step: the last projection, or ``None`` (no end).
    energy_transfer: move the removed singular values' energy to the kept ones (the paper's;
      ``False``: plain truncated SVD).
    reduce_factor: ``f``, the factor of the removed singular values (0 in the paper's code; above 0
      the kernel keeps some of them and its rank is not reduced).
    batch_norm: BN rectification: ``{kernel path: norm's path prefix}``, e.g.
      ``{'Conv_0/kernel': 'BatchNorm_0'}``: the norm's scale ``'BatchNorm_0/scale'`` is read from
      the params and its running variance ``'BatchNorm_0/var'`` from the update's extra argument
      ``batch_stats`` (``tx.update(grads, state, params, batch_stats=...)``).
    bn_epsilon: the norms' epsilon (Flax's and PyTorch's default, 1e-5).
    prune: which leaves are projected (`jaxprune.leaves.Selector`; by default the kernels).
    overrides: ``{path regex: rank}`` for kernels with a rank of their own.
    inner: an optimizer to wrap; without it the transformation must be the last link of a chain.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a `jaxprune.PruningState` without
    masks.

  Raises:
    ValueError: for both or neither of ``rank`` and ``prune_ratio``, a rank below 1, a ratio or
      ``reduce_factor`` out of range, ``frequency < 1``, ``begin_step >= end_step``; at ``init``,
      a selected leaf of fewer than 2 dimensions or a ``batch_norm`` key that is not a projected
      kernel; at ``update``, ``batch_norm`` without the ``batch_stats`` argument or a norm without
      a running variance (each naming the kernel and the norm).
    TypeError: for non-integer ranks or steps.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np, optax, jaxprune
    >>> params = {'dense': {'kernel': jax.random.normal(jax.random.key(0), (8, 6))}}
    >>> tx = jaxprune.lrpet(2, frequency=10, inner=optax.sgd(0.1))
    >>> updates, state = tx.update({'dense': {'kernel': jnp.ones((8, 6))}}, tx.init(params), params)
    >>> params = optax.apply_updates(params, updates)  # update 0 is a projection step
    >>> int(np.linalg.matrix_rank(np.asarray(params['dense']['kernel'])))
    2

  References:
    Guo et al., `Compact model training by low-rank projection with energy transfer
    <https://arxiv.org/abs/2204.05566>`_, IEEE TNNLS 2024
  """
  name = "lrpet"
  checked = _check_rank_args(rank, prune_ratio, overrides, name)
  f = _check_projection(energy_transfer, reduce_factor, name)
  frequency = check_int("frequency", frequency, 1, name)
  begin_step = check_int("begin_step", begin_step, 0, name)
  if end_step is not None:
    end_step = check_int("end_step", end_step, 1, name)
    if begin_step >= end_step:
      raise ValueError(f"{name}: begin_step ({begin_step}) must be before end_step ({end_step}).")
  if batch_norm is not None and not isinstance(batch_norm, Mapping):
    raise TypeError(
      f"{name}: batch_norm must map kernel paths to norm prefixes, got {batch_norm!r}."
    )
  norms = dict(batch_norm or {})
  eps = number(bn_epsilon, f"{name}: bn_epsilon")
  if eps is not None and not eps > 0:  # traced (inject_hyperparams): checked where it is concrete
    raise ValueError(f"{name}: bn_epsilon must be a positive number, got {bn_epsilon!r}.")

  def projected(params: Params) -> dict[str, int]:
    r = {
      k: v
      for k, v in ranks(
        params, rank, prune_ratio=prune_ratio, prune=prune, overrides=checked
      ).items()
    }
    unknown = [k for k in norms if k not in r]
    if unknown:
      raise ValueError(
        f"{name}: batch_norm names {unknown}, which are not projected kernels {list(r)}."
      )
    return r

  def init(plan, leaves, treedef):
    projected(jax.tree.unflatten(treedef, leaves))  # bad selections fail at init
    return {}

  def updates(info: engine.StepInfo, fields: Any, out: list[Any]) -> list[Any]:
    del fields
    tree = jax.tree.unflatten(info.treedef, info.params)
    r = projected(tree)
    index = {n: i for i, n in enumerate(info.plan.names)}

    def project_all():
      # The BN rectification's scales, on projection steps only.
      scales = _bn_scales(norms, tree, info.extra_args, bn_epsilon, name) if norms else {}
      new = list(out)
      for path, k in r.items():
        i = index[path]
        w = info.params[i].astype(jnp.float32) + out[i].astype(jnp.float32)
        q = _project_leaf(w, k, energy_transfer, f, scales.get(path))
        new[i] = (q - info.params[i].astype(jnp.float32)).astype(jnp.result_type(out[i]))
      return new

    return selection.cond(info.is_update, project_all, lambda: list(out))

  selection_ = plan_lib.make_selection(name, sparsity=0.0, prune=lambda path, leaf: False)
  method = engine.Method(
    name,
    scores_lib.magnitude,
    0.0,
    selection_,
    schedules_lib.periodic(begin_step, end_step, frequency),
    hooks=engine.Hooks(init=init, updates=updates),
  )
  return engine.transformation(method, inner)
