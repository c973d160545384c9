"""Calibrated one-shot pruning: the layers of any JAX function and their inputs, pruned in turn.

One-shot methods for trained models that read calibration data (`jaxprune.wanda`,
`jaxprune.sparsegpt`, `magnitude` here) prune *layers*: a weight matrix ``W`` and the inputs ``X``
it multiplies. This module finds them in ``jax.make_jaxpr(fn)(params, *batch)`` and runs the
sequential loop both papers use, for any function and any method declared as a `Method`:

1. The jaxpr is evaluated equation by equation for all calibration batches in lockstep (one
   environment per batch; values that do not depend on the batch are computed once).
2. An equation whose weight operand is a selected param leaf (directly, or through
   ``convert_element_type``/``copy`` and the calls ``jit``/``closed_call``/``custom_jvp_call``/
   ``custom_vjp_call``/``checkpoint``, which are entered) is a layer, taken in the order the
   function uses it:

   * ``dot_general``: the weight's contracting dims are its inputs, its other dims its outputs
     (a Dense ``[in, out]`` kernel; DenseGeneral kernels such as attention's ``[in, heads, dim]``
     and ``[heads, dim, out]``); ``X`` is the other operand with its contracting dims flattened in
     the weight's axis order and every other dim folded into tokens. Either operand may be the
     weight; contracting over batch dims of the weight is refused.
   * ``conv_general_dilated`` (``feature_group_count`` 1): ``X`` is the patches of the input under
     the equation's strides, padding, dilations and dimension numbers, one row per output
     position, with the features ordered ``(kernel spatial positions..., input channel)``, the
     ``(kh, kw, cin)`` order of a flattened HWIO kernel, whatever the kernel's layout.
   * ``scan`` (Flax ``nn.scan``, scan-over-layers stacks): a stacked ``[L, ...]`` leaf scanned
     over is unrolled, so that slice ``l`` is the layer of iteration ``l``, processed in order and
     written back into the leaf. A selected leaf entering a ``while`` or ``cond`` is refused.

3. The method accumulates a statistic of ``X`` over every batch (`Method.statistic`), and returns
   the layer's new weight and mask (`Method.solve`) on the canonical ``[fan_in, fan_out]`` matrix.
   The new weight replaces the leaf for this equation and everything after it, so every later
   layer's inputs come from the already-pruned earlier layers.

The statistics are float32 whatever the params' dtype; the new weights come back in the leaf's
dtype. The order is finer than the papers' code, which captures the inputs of all the linear
layers of a transformer block in one forward pass of the block before pruning any of them: here
each layer reads inputs computed through every earlier layer already pruned, those of its own
block included.

`layers` lists what would be pruned, `layer_inputs` returns the ``X`` each layer reads, `run` is the
driver that `jaxprune.wanda` and `jaxprune.sparsegpt` are declarations on, and `magnitude` is the
data-free baseline through the same driver.

References:
  Frantar & Alistarh, `SparseGPT: massive language models can be accurately pruned in one-shot
  <https://arxiv.org/abs/2301.00774>`_, 2023; Sun et al., `A simple and effective pruning approach
  for large language models <https://arxiv.org/abs/2306.11695>`_, 2023
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from jaxprune import leaves as leaves_lib
from jaxprune import patterns as patterns_lib
from jaxprune import plan as plan_lib
from jaxprune import selection
from jaxprune.typing import Masks, Params, PathSelector, Sparsity

__all__ = ["Layer", "Method", "Target", "layer_inputs", "layers", "magnitude", "run"]

_CALLS = frozenset(
  {
    "pjit",
    "jit",
    "closed_call",
    "core_call",
    "remat",
    "checkpoint",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
  }
)
_PASSTHROUGH = frozenset({"convert_element_type", "copy", "copy_p"})
_LAYERS = ("dot_general", "conv_general_dilated")


class Layer(NamedTuple):
  """One layer found in a function: a weight (a leaf, or one slice of a stacked leaf) and its use.

  Attributes:
    path: the leaf's name (`jaxprune.leaves.path_str`), e.g. ``'params/Dense_0/kernel'``.
    layer: the slice of a stacked leaf used by this layer (the iteration of a ``scan``; a tuple for
      nested scans), ``None`` for a whole leaf.
    kind: ``'dot_general'`` or ``'conv_general_dilated'``.
    shape: the weight's shape (the slice's, for a stacked leaf).
    input_axes: the weight's input axes, in the order the inputs are flattened: the contracting
      axes of a ``dot_general`` (ascending), the spatial axes then the input-feature axis of a
      convolution kernel.
    output_axes: the weight's other axes (ascending).
    fan_in: the number of inputs (the product of the input axes' sizes).
    fan_out: the number of outputs.
  """

  path: str
  layer: int | tuple[int, ...] | None
  kind: str
  shape: tuple[int, ...]
  input_axes: tuple[int, ...]
  output_axes: tuple[int, ...]
  fan_in: int
  fan_out: int

  @property
  def name(self) -> str:
    """``path``, with ``[l]`` appended for slice ``l`` of a stacked leaf."""
    if self.layer is None:
      return self.path
    index = self.layer if isinstance(self.layer, tuple) else (self.layer,)
    return self.path + "".join(f"[{i}]" for i in index)

  def to_matrix(self, weight: jax.Array) -> jax.Array:
    """The weight as the ``[fan_in, fan_out]`` matrix ``X @ W`` multiplies."""
    return jnp.transpose(weight, self.input_axes + self.output_axes).reshape(
      self.fan_in, self.fan_out
    )

  def from_matrix(self, matrix: jax.Array) -> jax.Array:
    """The inverse of `to_matrix`: a ``[fan_in, fan_out]`` matrix in the weight's layout."""
    order = self.input_axes + self.output_axes
    moved = matrix.reshape(tuple(self.shape[a] for a in order))
    return jnp.transpose(moved, tuple(np.argsort(order)))


class Target(NamedTuple):
  """What a layer is pruned to.

  Attributes:
    sparsity: the fraction of weights to prune (of each output, block or layer, as the method
      compares), or ``None`` under an N:M pattern.
    n_m: ``(n, m)``: keep ``n`` of every ``m`` consecutive inputs of each output; ``None`` for
      unstructured pruning.
  """

  sparsity: float | None
  n_m: tuple[int, int] | None


class Method(NamedTuple):
  """A calibrated one-shot method: a statistic of each layer's inputs and a per-layer solve.

  Attributes:
    name: the method's name, for error messages.
    solve: ``solve(weight, statistic, target, layer) -> (new_weight, mask)``: ``weight`` is the
      float32 ``[fan_in, fan_out]`` matrix (`Layer.to_matrix`), ``statistic`` the mean of
      ``statistic(X)`` per token over all calibration batches (``None`` without a statistic),
      ``target`` a `Target`; returns the new float32 matrix and the boolean mask of kept weights
      (``True`` = kept; the new matrix must be zero where the mask is ``False``).
    statistic: ``statistic(X) -> pytree`` of the ``[tokens, fan_in]`` float32 inputs of one batch,
      a sum over its tokens (``X.T @ X``, ``sum(X ** 2, 0)``); ``None`` for a method that reads no
      data. The driver calls it inside one ``jax.jit`` with the feature extraction, keyed on the
      function, so a module-level function compiles once per layer shape.
  """

  name: str
  solve: Callable[[jax.Array, Any, Target, Layer], tuple[jax.Array, jax.Array]]
  statistic: Callable[[jax.Array], Any] | None = None


# --------------------------------------------------------------------------- values of the walk


class _Ref(NamedTuple):
  """A value that is a selected leaf (its slice ``at``), after the elementwise ops ``chain``."""

  leaf: int
  at: tuple[int, ...]
  chain: tuple[Any, ...]  # equations (convert_element_type, copy) to apply, in order


class _Same:
  """A value that is the same for every batch (params, constants, what depends only on them)."""

  __slots__ = ("value",)

  def __init__(self, value: Any):
    self.value = value


_Value = Union[_Ref, _Same, list]  # a list holds one array per batch


def _per_batch(value: Any, b: int) -> Any:
  return value.value if isinstance(value, _Same) else value[b]


# --------------------------------------------------------------------------- features of a layer


class _DotGeometry(NamedTuple):
  perm: tuple[int, ...]  # activation dims: tokens first, then the contracted ones in input order
  fan_in: int


class _ConvGeometry(NamedTuple):
  filter_shape: tuple[int, ...]  # per spatial dimension of the convolution
  window_strides: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]
  lhs_dilation: tuple[int, ...]
  rhs_dilation: tuple[int, ...]
  lhs_spec: tuple[int, ...]
  out_spec: tuple[int, ...]
  cin: int


def _features(x: jax.Array, geometry: _DotGeometry | _ConvGeometry) -> jax.Array:
  """The ``[tokens, fan_in]`` float32 inputs of a layer from its activation operand ``x``."""
  if isinstance(geometry, _DotGeometry):
    return jnp.transpose(x, geometry.perm).reshape(-1, geometry.fan_in).astype(jnp.float32)
  g = geometry
  n = len(g.filter_shape)
  # The kernel layout given to the patches is OIHW-like (spatial axes ascending), so that their
  # features are ordered (cin, spatial dims in order); they are reordered to (spatial..., cin).
  dn = jax.lax.ConvDimensionNumbers(g.lhs_spec, tuple(range(n + 2)), g.out_spec)
  patches = jax.lax.conv_general_dilated_patches(
    x,
    g.filter_shape,
    g.window_strides,
    g.padding,
    lhs_dilation=g.lhs_dilation,
    rhs_dilation=g.rhs_dilation,
    dimension_numbers=dn,
    precision=jax.lax.Precision.HIGHEST,
  )
  spatial = math.prod(g.filter_shape)
  patches = jnp.moveaxis(patches, g.out_spec[1], -1)
  patches = patches.reshape(-1, g.cin, spatial)
  return jnp.swapaxes(patches, 1, 2).reshape(-1, spatial * g.cin).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("geometry",))
def _jit_features(x: jax.Array, geometry: _DotGeometry | _ConvGeometry) -> jax.Array:
  return _features(x, geometry)


@functools.partial(jax.jit, static_argnames=("geometry", "statistic"))
def _jit_accumulate(
  total: Any,
  tokens: jax.Array,
  x: jax.Array,
  geometry: _DotGeometry | _ConvGeometry,
  statistic: Callable[[jax.Array], Any],
) -> tuple[Any, jax.Array, Any]:
  """Adds one batch's statistic to the running sum; returns the sum, the tokens and the mean."""
  features = _features(x, geometry)
  total = jax.tree.map(jnp.add, total, statistic(features))
  tokens = tokens + features.shape[0]
  return total, tokens, jax.tree.map(lambda t: t / jnp.maximum(tokens, 1.0), total)


def _statistic(
  acts: Sequence[jax.Array],
  geometry: _DotGeometry | _ConvGeometry,
  statistic: Callable[[jax.Array], Any],
) -> Any:
  """The mean per token of ``statistic`` over the inputs of every batch (one compiled program)."""
  shapes = jax.eval_shape(lambda x: statistic(_features(x, geometry)), acts[0])
  total = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  tokens = np.zeros((), np.float32)
  mean = None
  for a in acts:
    total, tokens, mean = _jit_accumulate(total, tokens, a, geometry, statistic)
  return mean


@functools.partial(jax.jit, static_argnames=("order", "fan_in", "fan_out"))
def _jit_to_matrix(w: jax.Array, order: tuple[int, ...], fan_in: int, fan_out: int) -> jax.Array:
  return jnp.transpose(w, order).reshape(fan_in, fan_out).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("order", "shape", "dtype"))
def _jit_from_matrices(
  new: jax.Array, keep: jax.Array, order: tuple[int, ...], shape: tuple[int, ...], dtype: Any
) -> tuple[jax.Array, jax.Array]:
  moved = tuple(shape[a] for a in order)
  inverse = tuple(int(a) for a in np.argsort(order))
  back = lambda m: jnp.transpose(m.reshape(moved), inverse)
  return back(new).astype(dtype), back(keep.astype(bool))


# --------------------------------------------------------------------------- the walk


# on_layer(layer, leaf index, weight in the leaf's dtype, activations (one array per batch),
# geometry) -> the new weight (leaf dtype), or None to leave it.
_OnLayer = Callable[[Layer, int, jax.Array, list, Any], Union[jax.Array, None]]


def _name(names: Sequence[str], leaf: int, index: tuple[int, ...]) -> str:
  return names[leaf] + "".join(f"[{i}]" for i in index)


class _Walker:
  """Evaluates a jaxpr for all batches in lockstep, handing each layer to ``on_layer``."""

  def __init__(
    self,
    leaves: list[Any],
    names: list[str],
    num_batches: int,
    on_layer: _OnLayer,
    owner: str,
  ):
    self.current = dict(enumerate(leaves))  # selected leaf index -> its current value
    self.names = names
    self.num_batches = num_batches
    self.on_layer = on_layer
    self.owner = owner
    self.done: set[tuple[int, tuple[int, ...]]] = set()
    self.depth: dict[int, int] = {}  # leaf -> how many scan axes its layers index
    self.found: list[Layer] = []

  # --- helpers

  def fail(self, ref: _Ref, message: str, error: type = ValueError) -> Exception:
    return error(f"{self.owner}: leaf {_name(self.names, ref.leaf, ref.at)!r} {message}")

  def materialize(self, ref: _Ref) -> jax.Array:
    value = self.current[ref.leaf]
    if ref.at:
      value = value[ref.at]
    for eqn in ref.chain:
      value = _bind(eqn, [value])[0]
    return value

  def read(self, env: dict, v: Any) -> _Value:
    if isinstance(v, jex_core.Literal):
      return _Same(v.val)
    return env[v]

  # --- jaxprs

  def run(self, jaxpr: Any, consts: Sequence[Any], args: Sequence[_Value]) -> list[_Value]:
    env: dict[Any, _Value] = {}
    for v, c in zip(jaxpr.constvars, consts):
      env[v] = _Same(c)
    for v, a in zip(jaxpr.invars, args):
      env[v] = a
    last: dict[Any, int] = {}
    for i, eqn in enumerate(jaxpr.eqns):
      for v in eqn.invars:
        if not isinstance(v, jex_core.Literal):
          last[v] = i
    for v in jaxpr.outvars:
      if not isinstance(v, jex_core.Literal):
        last[v] = len(jaxpr.eqns)
    free: dict[int, list] = {}
    for v, i in last.items():
      free.setdefault(i, []).append(v)
    for i, eqn in enumerate(jaxpr.eqns):
      ins = [self.read(env, v) for v in eqn.invars]
      outs = self.equation(eqn, ins)
      for v, o in zip(eqn.outvars, outs):
        if not isinstance(v, jex_core.DropVar):
          env[v] = o
      for v in free.get(i, ()):
        env.pop(v, None)
    return [self.read(env, v) for v in jaxpr.outvars]

  def equation(self, eqn: Any, ins: list[_Value]) -> list[_Value]:
    name = eqn.primitive.name
    refs = [v for v in ins if isinstance(v, _Ref)]
    if not refs:
      return self.evaluate(eqn, ins)
    if name in _PASSTHROUGH and len(ins) == 1:
      (ref,) = refs
      return [ref._replace(chain=ref.chain + (eqn,))]
    if name in _LAYERS:
      return self.layer(eqn, ins)
    if name == "scan":
      return self.scan(eqn, ins)
    if name in _CALLS:
      inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
      if inner is not None:
        jaxpr, consts = (inner.jaxpr, inner.consts) if hasattr(inner, "consts") else (inner, [])
        return self.run(jaxpr, consts, ins)
    if name in ("while", "cond") or _has_subjaxpr(eqn):
      raise self.fail(
        refs[0],
        f"is used inside a {name!r} equation; calibrated pruning unrolls scan loops only "
        f"(exclude the leaf with prune=).",
        NotImplementedError,
      )
    raise self.fail(
      refs[0],
      f"is used by {name!r}, not as the weight operand of a dot_general or "
      f"conv_general_dilated (exclude the leaf with prune=).",
    )

  def evaluate(self, eqn: Any, ins: list[_Value]) -> list[_Value]:
    """Binds ``eqn`` once if its inputs are the same for every batch, else once per batch."""
    if all(isinstance(v, _Same) for v in ins):
      return [_Same(o) for o in _bind(eqn, [v.value for v in ins])]  # type: ignore[union-attr]
    per = [_bind(eqn, [_per_batch(v, b) for v in ins]) for b in range(self.num_batches)]
    return [list(outs) for outs in zip(*per)] if per else []

  # --- layers

  def layer(self, eqn: Any, ins: list[_Value]) -> list[_Value]:
    name = eqn.primitive.name
    positions = [i for i, v in enumerate(ins) if isinstance(v, _Ref)]
    first = ins[positions[0]]
    assert isinstance(first, _Ref)
    if len(positions) > 1:
      other = ins[positions[1]]
      assert isinstance(other, _Ref)
      raise self.fail(
        first,
        f"and leaf {_name(self.names, other.leaf, other.at)!r} are both operands of one "
        f"{name}; a layer multiplies one pruned weight with data.",
      )
    (w,) = positions
    ref = first
    shape = tuple(int(d) for d in eqn.invars[w].aval.shape)
    if name == "dot_general":
      (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
      wc, ac, wb = (lc, rc, lb) if w == 0 else (rc, lc, rb)
      if wb:
        raise self.fail(
          ref,
          f"enters a dot_general with batch dimensions {tuple(wb)} on the weight (shape "
          f"{shape}); a layer's weight is contracted with its inputs, not batched.",
        )
      pairs = sorted(zip((int(a) for a in wc), (int(a) for a in ac)))
      inputs = tuple(a for a, _ in pairs)
      act = ins[1 - w]
      act_ndim = len(eqn.invars[1 - w].aval.shape)
      contracted = [b for _, b in pairs]
      perm = tuple(d for d in range(act_ndim) if d not in contracted) + tuple(contracted)
      outputs = tuple(d for d in range(len(shape)) if d not in inputs)
      fan_in = math.prod(shape[a] for a in inputs)
      geometry: _DotGeometry | _ConvGeometry = _DotGeometry(perm, fan_in)
    else:
      if w != 1:
        raise self.fail(
          ref,
          "is the input (lhs) of a conv_general_dilated; only the kernel (rhs) of a "
          "convolution is a layer's weight.",
        )
      p = eqn.params
      for count in ("feature_group_count", "batch_group_count"):
        if int(p[count]) != 1:
          raise self.fail(
            ref,
            f"is the kernel of a conv_general_dilated with {count}={int(p[count])}; only "
            f"ungrouped convolutions ({count}=1) are supported.",
          )
      dn = p["dimension_numbers"]
      rhs_spec = tuple(int(a) for a in dn.rhs_spec)
      inputs = rhs_spec[2:] + (rhs_spec[1],)
      outputs = (rhs_spec[0],)
      fan_in = math.prod(shape[a] for a in inputs)
      act = ins[0]
      geometry = _ConvGeometry(
        tuple(shape[a] for a in rhs_spec[2:]),
        tuple(int(s) for s in p["window_strides"]),
        tuple((int(lo), int(hi)) for lo, hi in p["padding"]),
        tuple(int(d) for d in p["lhs_dilation"]),
        tuple(int(d) for d in p["rhs_dilation"]),
        tuple(int(a) for a in dn.lhs_spec),
        tuple(int(a) for a in dn.out_spec),
        shape[rhs_spec[1]],
      )
    key = (ref.leaf, ref.at)
    if key not in self.done:
      depth = self.depth.setdefault(ref.leaf, len(ref.at))
      if depth != len(ref.at):
        raise self.fail(
          ref,
          "is used both whole and slice by slice (scanned over); calibrated pruning needs "
          "one or the other.",
        )
      index = None if not ref.at else ref.at[0] if len(ref.at) == 1 else ref.at
      info = Layer(
        self.names[ref.leaf],
        index,
        name,
        shape,
        inputs,
        outputs,
        fan_in,
        math.prod(shape[a] for a in outputs),
      )
      self.found.append(info)
      self.done.add(key)
      acts = [act.value] if isinstance(act, _Same) else list(act)
      base = self.current[ref.leaf]
      weight = base[ref.at] if ref.at else base
      new = self.on_layer(info, ref.leaf, weight, acts, geometry)
      if new is not None:
        self.current[ref.leaf] = base.at[ref.at].set(new) if ref.at else new
    ins = list(ins)
    ins[w] = _Same(self.materialize(ref))
    return self.evaluate(eqn, ins)

  # --- scan

  def scan(self, eqn: Any, ins: list[_Value]) -> list[_Value]:
    p = eqn.params
    num_consts, num_carry, length = int(p["num_consts"]), int(p["num_carry"]), int(p["length"])
    consts = ins[:num_consts]
    carry = ins[num_consts : num_consts + num_carry]
    xs = ins[num_consts + num_carry :]
    for v in carry:
      if isinstance(v, _Ref):
        raise self.fail(
          v,
          "is the carry of a scan; only scanned-over (stacked) leaves and "
          "constants of a scan can be layers' weights.",
        )
    if length == 0:
      raise self.fail(next(v for v in ins if isinstance(v, _Ref)), "enters a scan of length 0.")
    body = p["jaxpr"]
    ys: list[list[_Value]] = []
    order = range(length - 1, -1, -1) if p["reverse"] else range(length)
    for i in order:
      sliced: list[_Value] = []
      for x in xs:
        if isinstance(x, _Ref):
          sliced.append(x._replace(at=x.at + (i,)))
        elif isinstance(x, _Same):
          sliced.append(_Same(x.value[i]))
        else:
          sliced.append([a[i] for a in x])
      outs = self.run(body.jaxpr, body.consts, list(consts) + list(carry) + sliced)
      for o in outs:
        if isinstance(o, _Ref):
          raise self.fail(o, "is an output of a scan's body; it must be used by a layer there.")
      carry = outs[:num_carry]
      ys.append(outs[num_carry:])
    if p["reverse"]:
      ys.reverse()
    stacked: list[_Value] = []
    for k in range(len(eqn.outvars) - num_carry):
      column = [y[k] for y in ys]
      if all(isinstance(c, _Same) for c in column):
        stacked.append(_Same(jnp.stack([c.value for c in column])))  # type: ignore[union-attr]
      else:
        stacked.append(
          [jnp.stack([_per_batch(c, b) for c in column]) for b in range(self.num_batches)]
        )
    return list(carry) + stacked


def _has_subjaxpr(eqn: Any) -> bool:
  """Whether ``eqn`` is a higher-order primitive (control flow, a call the walk does not enter)."""
  kinds = (jex_core.Jaxpr, jex_core.ClosedJaxpr)
  for value in eqn.params.values():
    items = value if isinstance(value, (tuple, list)) else (value,)
    if any(isinstance(x, kinds) for x in items):
      return True
  return False


def _bind(eqn: Any, args: Sequence[Any]) -> list[Any]:
  """Evaluates one equation on concrete (or traced) arguments, as ``jax.core.eval_jaxpr`` does."""
  params = eqn.primitive.get_bind_params(eqn.params)
  ctx = getattr(eqn, "ctx", None)
  manager = getattr(ctx, "manager", None) or contextlib.nullcontext()
  with manager:
    out = eqn.primitive.bind(*args, **params)
  return list(out) if eqn.primitive.multiple_results else [out]


# --------------------------------------------------------------------------- the driver


def _as_array(x: Any) -> Any:
  return x if isinstance(x, jax.ShapeDtypeStruct) else jnp.asarray(x)


def _check_batches(calibration_batches: Any, owner: str) -> list[tuple[Any, ...]]:
  """The batches as tuples of arrays, checked to have batch 0's structure, shapes and dtypes."""
  if hasattr(calibration_batches, "shape") or isinstance(calibration_batches, (str, bytes)):
    raise TypeError(
      f"{owner}: calibration_batches must be a sequence of batches (e.g. a list of arrays, or of "
      f"tuples of the arguments after params), got {type(calibration_batches).__name__}."
    )
  try:
    raw = list(calibration_batches)
  except TypeError:
    raise TypeError(
      f"{owner}: calibration_batches must be a sequence of batches, got "
      f"{type(calibration_batches).__name__}."
    ) from None
  if not raw:
    raise ValueError(f"{owner}: calibration_batches is empty; give at least one batch.")
  batches = []
  for b in raw:
    args = tuple(b) if isinstance(b, (tuple, list)) else (b,)
    batches.append(jax.tree.map(_as_array, args))

  def describe(batch):
    return jax.tree.structure(batch), [
      (tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(batch)
    ]

  first = describe(batches[0])
  for i, batch in enumerate(batches[1:], start=1):
    this = describe(batch)
    if this != first:
      shapes = lambda d: [f"{t}{list(s)}" for s, t in d[1]]
      raise ValueError(
        f"{owner}: calibration batch {i} has arguments {shapes(this)} (structure {this[0]}), "
        f"batch 0 has {shapes(first)} (structure {first[0]}); every batch must have the same "
        f"structure, shapes and dtypes."
      )
  return batches


def _walk(
  fn: Callable[..., Any],
  params: Params,
  batches: Sequence[tuple[Any, ...]],
  flags: Sequence[bool],
  on_layer: _OnLayer,
  owner: str,
  *,
  abstract: bool = False,
) -> _Walker:
  """Runs the walk of ``fn(params, *batch)`` over ``batches``; returns the finished walker."""
  named = leaves_lib.named_leaves(leaves_lib.unwrap_variables(params))
  names = [n for n, _ in named]
  leaves = [_as_array(x) for _, x in named]
  closed = jax.make_jaxpr(fn)(params, *batches[0])
  batch_leaves = [jax.tree.leaves(b) for b in batches]
  if len(closed.jaxpr.invars) != len(leaves) + len(batch_leaves[0]):
    raise ValueError(
      f"{owner}: fn(params, *batch) reads {len(closed.jaxpr.invars)} arrays, but params and the "
      f"batch have {len(leaves) + len(batch_leaves[0])} leaves."
    )
  state: dict[str, _Walker] = {}

  def body(leaves, batch_leaves):
    args: list[_Value] = [
      _Ref(i, (), ()) if flags[i] else _Same(leaf) for i, leaf in enumerate(leaves)
    ]
    for k in range(len(batch_leaves[0])):
      args.append([bl[k] for bl in batch_leaves])
    walker = _Walker(list(leaves), names, len(batch_leaves), on_layer, owner)
    outs = walker.run(closed.jaxpr, closed.consts, args)
    for o in outs:
      if isinstance(o, _Ref):
        raise walker.fail(
          o, "is returned by fn; only leaves used as layers' weights can be pruned."
        )
    state["walker"] = walker

  if abstract:
    jax.eval_shape(body, leaves, batch_leaves)
  else:
    body(leaves, batch_leaves)
  walker = state["walker"]
  used = {leaf for leaf, _ in walker.done}
  unused = [names[i] for i, f in enumerate(flags) if f and i not in used]
  if unused:
    raise ValueError(
      f"{owner}: leaf {unused[0]!r} is selected for pruning, but no dot_general or "
      f"conv_general_dilated of fn uses it as its weight (unused leaves: {unused}); exclude it "
      f"with prune=."
    )
  return walker


def _target(owner: str, sparsity: Any, pattern: Any, prune: PathSelector) -> Target:
  sel = plan_lib.make_selection(owner, sparsity=sparsity, prune=prune, pattern=pattern)
  if isinstance(sel.pattern, patterns_lib.NM):
    if sel.pattern.axis != -2:
      raise ValueError(
        f"{owner}: an N:M pattern groups the inputs of each layer (its input axis: -2 of a Dense "
        f"or HWIO kernel, the innermost contracting axis of any layer); give "
        f"jaxprune.patterns.n_m(n, m) with its default axis, got axis={sel.pattern.axis}."
      )
    return Target(None, (sel.pattern.n, sel.pattern.m))
  if not isinstance(sel.pattern, patterns_lib.Unstructured):
    raise ValueError(
      f"{owner}: pattern must be None (unstructured) or jaxprune.patterns.n_m(n, m), got "
      f"{pattern!r}."
    )
  return Target(float(sparsity), None)


def _index(layer: Layer) -> tuple[int, ...]:
  if layer.layer is None:
    return ()
  return layer.layer if isinstance(layer.layer, tuple) else (layer.layer,)


def run(
  method: Method,
  fn: Callable[..., Any],
  params: Params,
  calibration_batches: Sequence[Any],
  sparsity: Sparsity | None = None,
  *,
  pattern: patterns_lib.Pattern | None = None,
  prune: PathSelector = None,
) -> tuple[Masks, Params]:
  """Prunes every layer of ``fn`` in turn with ``method``, on inputs from the pruned earlier layers.

  The driver of `jaxprune.wanda` and `jaxprune.sparsegpt` (see the module docstring for how
  layers are found): for each layer in the order ``fn`` uses them, the statistic of its inputs
  over every calibration batch, the method's solve, and the new weight in place for the rest of
  the function.

  Args:
    method: the `Method`.
    fn: any JAX function ``fn(params, *batch)``, e.g. ``lambda p, x: model.apply({'params': p},
      x)``.
    params: the trained params (a pytree; Flax nnx ``State`` and ``Variable`` leaves work).
    calibration_batches: a sequence of batches, each a tuple of the arguments after ``params`` (a
      bare array is one argument); all of one structure, shapes and dtypes.
    sparsity: the fraction pruned, in ``[0, 1)``; ``None`` with an N:M pattern.
    pattern: ``None`` (unstructured) or `jaxprune.patterns.n_m` (groups of ``m`` consecutive
      inputs of each output; the axis must be the default).
    prune: which leaves are pruned (`jaxprune.leaves.Selector`; by default the kernels).

  Returns:
    ``(masks, params)``: the masks, a tree shaped like the params with a boolean mask (``True`` =
    kept) for each pruned leaf and ``None`` for the others (the format of `jaxprune.prune`), and
    the params with every pruned leaf replaced by the method's new weights (in its dtype; zero
    where the mask is ``False``) and the other leaves untouched.

  Raises:
    ValueError: for a bad sparsity or pattern, an N:M group that does not divide a layer's input
      axis, no or mismatched calibration batches, or a selected leaf that is not the weight of a
      ``dot_general`` or ``conv_general_dilated`` (the message names the leaf and the primitive).
    NotImplementedError: for a selected leaf used inside a ``while`` or ``cond``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxprune
    >>> from jaxprune import calibration
    >>> keep_largest = calibration.Method(
    ...   "keep_largest",
    ...   lambda w, stat, target, layer: (jnp.where(jnp.abs(w) >= 2, w, 0.0), jnp.abs(w) >= 2),
    ... )
    >>> params = {'w': jnp.array([[1.0, -3.0], [2.0, 0.5]])}
    >>> fn = lambda p, x: x @ p['w']
    >>> masks, new = calibration.run(keep_largest, fn, params, [jnp.ones((4, 2))], 0.5)
    >>> new['w']
    Array([[ 0., -3.],
           [ 2.,  0.]], dtype=float32)
  """
  owner = method.name
  target = _target(owner, sparsity, pattern, prune)
  batches = _check_batches(calibration_batches, owner)
  flags = leaves_lib.prunable_paths(params, prune, owner=owner)
  masks: dict[int, jax.Array] = {}
  shapes = [tuple(jnp.shape(x)) for _, x in leaves_lib.named_leaves(params)]

  def on_layer(layer, leaf, weight, acts, geometry):
    if target.n_m is not None:
      axis = layer.input_axes[-1]
      m = target.n_m[1]
      if layer.shape[axis] % m:
        raise ValueError(
          f"{owner}: leaf {layer.name!r}: M={m} does not divide its input axis {axis} of size "
          f"{layer.shape[axis]} (weight shape {layer.shape}); N:M groups run along the "
          f"innermost input axis."
        )
    order = layer.input_axes + layer.output_axes
    matrix = _jit_to_matrix(weight, order, layer.fan_in, layer.fan_out)
    stats = None
    if method.statistic is not None:
      stats = _statistic(acts, geometry, method.statistic)
    new, keep = method.solve(matrix, stats, target, layer)
    new, keep = _jit_from_matrices(new, keep, order, layer.shape, np.dtype(weight.dtype))
    index = _index(layer)
    if not index:
      masks[leaf] = keep
    else:
      full = masks[leaf] if leaf in masks else jnp.asarray(np.ones(shapes[leaf], bool))
      masks[leaf] = full.at[index].set(keep)
    return new

  walker = _walk(fn, params, batches, flags, on_layer, owner)
  leaves, treedef = jax.tree.flatten(leaves_lib.unwrap_variables(params))
  out_masks = [masks.get(i) for i in range(len(leaves))]
  new_leaves = [walker.current[i] if f else leaf for i, (leaf, f) in enumerate(zip(leaves, flags))]
  new_params = jax.tree.unflatten(jax.tree.structure(params), new_leaves)
  return jax.tree.unflatten(treedef, out_masks), new_params


def layers(
  fn: Callable[..., Any], params: Params, *batch: Any, prune: PathSelector = None
) -> list[Layer]:
  """The layers of ``fn(params, *batch)`` that calibrated pruning would prune, in use order.

  Nothing is computed: the walk runs on abstract values (``jax.eval_shape``), so the params and
  the batch may be ``jax.ShapeDtypeStruct`` leaves (``jax.eval_shape(model.init, ...)``).

  Args:
    fn: any JAX function ``fn(params, *batch)``.
    params: the params (arrays or ``jax.ShapeDtypeStruct``).
    *batch: one batch of the arguments after ``params``.
    prune: which leaves are pruned (`jaxprune.leaves.Selector`; by default the kernels).

  Returns:
    One `Layer` per weight (per slice of a stacked leaf scanned over), in the order ``fn`` uses
    them.

  Raises:
    ValueError, NotImplementedError: as `run`, for selected leaves it cannot prune.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxprune
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    >>> x = jnp.ones((4, 3))
    >>> params = model.init(jax.random.key(0), x)['params']
    >>> fn = lambda p, x: model.apply({'params': p}, x)
    >>> for layer in jaxprune.calibration.layers(fn, params, x):
    ...   print(layer.name, layer.kind, layer.fan_in, layer.fan_out)
    layers_0/kernel dot_general 3 8
    layers_2/kernel dot_general 8 2
  """
  owner = "layers"
  flags = leaves_lib.prunable_paths(params, prune, owner=owner)
  batches = _check_batches([batch], owner)
  return _walk(fn, params, batches, flags, lambda *a: None, owner, abstract=True).found


def layer_inputs(
  fn: Callable[..., Any], params: Params, *batch: Any, prune: PathSelector = None
) -> list[tuple[Layer, jax.Array]]:
  """Every layer of ``fn(params, *batch)`` with the ``[tokens, fan_in]`` inputs it reads.

  ``x @ layer.to_matrix(weight)`` is the layer's output (a convolution's, one row per output
  position). Nothing is pruned: each layer reads the unpruned earlier layers.

  Args:
    fn: any JAX function ``fn(params, *batch)``.
    params: the params.
    *batch: one batch of the arguments after ``params``.
    prune: which leaves are pruned (`jaxprune.leaves.Selector`; by default the kernels).

  Returns:
    ``(layer, x)`` pairs in use order, ``x`` float32.

  Raises:
    ValueError, NotImplementedError: as `run`.

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> params = {'w': jnp.ones((2, 3, 4))}  # contracted over its axes 0 and 1
    >>> fn = lambda p, x: jnp.einsum('bij,ijk->bk', x, p['w'])
    >>> found = jaxprune.calibration.layer_inputs(fn, params, jnp.ones((5, 2, 3)))
    >>> [(layer.fan_in, x.shape) for layer, x in found]
    [(6, (5, 6))]
  """
  owner = "layer_inputs"
  flags = leaves_lib.prunable_paths(params, prune, owner=owner)
  batches = _check_batches([batch], owner)
  found: list[tuple[Layer, jax.Array]] = []

  def record(layer, leaf, weight, acts, geometry):
    found.append((layer, _jit_features(acts[0], geometry)))
    return None

  _walk(fn, params, batches, flags, record, owner)
  return found


class _Operand(NamedTuple):
  """A layer's activation operand as ``fn`` computes it, for analyses that differentiate through
  the layer's input map (i-SpaSP: `jaxprune.structured.ispasp`)."""

  layer: Layer
  x: jax.Array  # float32, in fn's layout
  features: Callable[[jax.Array], jax.Array]  # x -> [tokens, fan_in] (linear: patches, reshape)
  axes: tuple[int | None, ...]  # x's axis read by each input axis of the weight (None: spatial)


def _layer_operands(
  fn: Callable[..., Any], params: Params, *batch: Any, prune: PathSelector = None
) -> list[_Operand]:
  """As `layer_inputs`, with each layer's raw activation and its map to the ``[tokens, fan_in]``
  inputs instead of the inputs (a convolution's input, not its patches)."""
  owner = "layer_inputs"
  flags = leaves_lib.prunable_paths(params, prune, owner=owner)
  batches = _check_batches([batch], owner)
  found: list[_Operand] = []

  def record(layer, leaf, weight, acts, geometry):
    x = jnp.asarray(acts[0], jnp.float32)
    if isinstance(geometry, _DotGeometry):
      axes: tuple[int | None, ...] = tuple(geometry.perm[x.ndim - len(layer.input_axes) :])
    else:  # the kernel's spatial axes, then its input-feature axis (the lhs feature dimension)
      axes = (None,) * len(geometry.filter_shape) + (geometry.lhs_spec[1],)
    found.append(_Operand(layer, x, functools.partial(_features, geometry=geometry), axes))
    return None

  _walk(fn, params, batches, flags, record, owner)
  return found


# --------------------------------------------------------------------------- selection


def _keep_highest(scores: jax.Array, keep: jax.Array, axis: int | None = None) -> jax.Array:
  """Keeps exactly the ``keep`` highest scores overall (``axis=None``) or of each slice along
  ``axis`` (0: of each output column of a ``[fan_in, fan_out]`` matrix).

  The order is `jaxprune.selection.ordered_key`'s (``-inf < NaN < finite < inf``), ties keep the
  lower index. The threshold is read off a sort of the keys, and the ties at it are counted in
  index order. For the layers of calibrated pruning, each selected once, this compiles faster
  than the radix select of `jaxprune.selection` (every layer shape is compiled anew) and runs
  several times faster on CPU for a selection per output.
  """
  key = ~selection.ordered_key(scores)  # ascending key = descending score
  key = key.reshape(-1, 1) if axis is None else jnp.moveaxis(key, axis, 0)
  n = key.shape[0]
  ordered = jnp.sort(key, axis=0)
  threshold = jax.lax.dynamic_index_in_dim(ordered, jnp.clip(keep - 1, 0, n - 1), 0)
  better = key < threshold
  tie = key == threshold
  room = keep - jnp.sum(better, axis=0, keepdims=True, dtype=jnp.int32)
  kept = (better | (tie & (jnp.cumsum(tie, axis=0, dtype=jnp.int32) <= room))) & (keep > 0)
  return kept.reshape(scores.shape) if axis is None else jnp.moveaxis(kept, 0, axis)


# --------------------------------------------------------------------------- magnitude


@functools.partial(jax.jit, static_argnames=("n_m",))
def _magnitude_keep(w: jax.Array, keep: jax.Array, n_m: tuple[int, int] | None) -> jax.Array:
  score = jnp.abs(w)
  if n_m is not None:
    return patterns_lib.NM(n_m[0], n_m[1], 0).mask(score)
  return _keep_highest(score, keep)


def _magnitude_solve(
  w: jax.Array, statistic: Any, target: Target, layer: Layer
) -> tuple[jax.Array, jax.Array]:
  del statistic
  size = layer.fan_in * layer.fan_out
  count = 0 if target.n_m else size - int(plan_lib.num_pruned(target.sparsity or 0.0, size))
  keep = _magnitude_keep(w, jnp.asarray(count, jnp.int32), target.n_m)
  return jnp.where(keep, w, 0.0), keep


_MAGNITUDE = Method("magnitude", _magnitude_solve)


def magnitude(
  fn: Callable[..., Any],
  params: Params,
  calibration_batches: Sequence[Any],
  sparsity: Sparsity | None = None,
  *,
  pattern: patterns_lib.Pattern | None = None,
  prune: PathSelector = None,
) -> Masks:
  """Magnitude pruning of every layer of ``fn`` through the calibrated driver: the baseline.

  Each layer (each slice of a stacked leaf) prunes exactly ``round(sparsity * size)`` of its
  smallest ``|w|``, or keeps the ``n`` largest of every ``m`` consecutive inputs of each output;
  the data are not read (the batches only drive the walk), so the masks are those of
  ``jaxprune.prune(params, sparsity)`` for unstacked leaves.

  Args:
    fn, params, calibration_batches, sparsity, pattern, prune: as in `run`.

  Returns:
    The masks, a tree shaped like the params (``None`` for leaves not pruned).

  Raises:
    ValueError, NotImplementedError: as `run`.

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> params = {'w': jnp.array([[1.0, -3.0], [2.0, 0.5]])}
    >>> fn = lambda p, x: x @ p['w']
    >>> jaxprune.calibration.magnitude(fn, params, [jnp.ones((1, 2))], 0.5)['w']
    Array([[False,  True],
           [ True, False]], dtype=bool)
  """
  return run(_MAGNITUDE, fn, params, calibration_batches, sparsity, pattern=pattern, prune=prune)[0]
