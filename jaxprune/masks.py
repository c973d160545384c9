"""Masks in the optimizer state: packing, and finding them in any state."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import leaves as leaves_lib
from jaxprune import sharding as sharding_lib
from jaxprune.typing import ArrayTree, Masks, OptState, Params

__all__ = [
  "PackedMask",
  "apply_masks",
  "count_true",
  "device_arrays",
  "get_masks",
  "host_arrays",
  "pack",
  "pack_axis",
  "packed_axis",
  "unpack",
]


class PackedMask(NamedTuple):
  """A boolean mask stored one bit per entry, packed along one axis (by default the last; the
  pruners pick an axis the param is not sharded on, so the bits keep the param's sharding).

  Attributes:
    bits: ``uint8`` array of the mask's shape with the packed axis ``a`` of length
      ``ceil(mask.shape[a] / 8)``; ``(1,)`` for a 0-d mask.
    padding: a ``uint8`` array of shape ``(p + 1,)`` when the last axis is packed, ``(p + 1, a + 1)``
      when axis ``a`` is, where ``p`` (0 to 7) is the number of padding bits in the last byte; of
      shape ``()`` for a 0-d mask (whose one bit sits in ``bits[0]``). It carries the unpacked shape
      and the axis in its own static shape, so the mask can be unpacked from the state alone and
      survives every pytree transport (``jit``, orbax checkpoints, which reject zero-size arrays,
      ``nnx.Optimizer``) for at most 64 bytes.
  """

  bits: jax.Array
  padding: jax.Array


def pack(mask: jax.Array, axis: int = -1) -> PackedMask:
  """Packs a boolean mask of any shape, ``()`` included, into bits along ``axis`` (see
  `PackedMask`).

  ``unpack(pack(mask, axis))`` has ``mask``'s shape and values.

  Raises:
    ValueError: if ``axis`` is not an axis of ``mask``.
  """
  mask = jnp.asarray(mask)
  if mask.ndim == 0:
    return PackedMask(jnp.packbits(mask.reshape(1)), jnp.zeros((), jnp.uint8))
  if not -mask.ndim <= axis < mask.ndim:
    raise ValueError(f"pack: axis {axis} is not an axis of a mask of shape {mask.shape}.")
  axis %= mask.ndim
  padding = -mask.shape[axis] % 8
  shape = (padding + 1,) if axis == mask.ndim - 1 else (padding + 1, axis + 1)
  run = lambda m: PackedMask(jnp.packbits(m, axis=axis), jnp.zeros(shape, jnp.uint8))
  length = -(-mask.shape[axis] // 8)
  out = lambda: PackedMask(sharding_lib.resized(mask, axis, length), sharding_lib.replicated(mask))
  return sharding_lib.run_in_auto_mode(run, out, mask)


def packed_axis(mask: PackedMask) -> int:
  """The axis a `PackedMask` was packed along (``-1`` for a 0-d mask)."""
  padding = leaves_lib.unwrap_variable(mask.padding)
  if jnp.ndim(padding) == 0:
    return -1
  if jnp.ndim(padding) == 2:
    return jnp.shape(padding)[1] - 1
  return jnp.ndim(leaves_lib.unwrap_variable(mask.bits)) - 1


def unpack(mask: Any) -> Any:
  """The boolean mask of a `PackedMask`, of the shape that was packed; other values are returned
  unchanged."""
  if isinstance(mask, PackedMask):
    bits, padding = leaves_lib.unwrap_variable(mask.bits), leaves_lib.unwrap_variable(mask.padding)
    if jnp.ndim(padding) == 0:  # a 0-d mask
      return jnp.unpackbits(bits, axis=-1, count=1).astype(bool).reshape(bits.shape[:-1])
    axis = packed_axis(mask)
    length = 8 * bits.shape[axis] - (jnp.shape(padding)[0] - 1)
    run = lambda b: jnp.unpackbits(b, axis=axis, count=length).astype(bool)
    return sharding_lib.run_in_auto_mode(
      run, lambda: sharding_lib.resized(bits, axis, length), bits
    )
  return mask


def _shard_counts(x: Any) -> tuple[int, ...]:
  """Into how many shards each axis of ``x`` is split, as far as its sharding is known: that of a
  concrete array, or of a traced one under explicit mesh axes; otherwise ones."""
  shape = tuple(jnp.shape(x))
  sharding = sharding_lib.sharding_of(x)
  if isinstance(sharding, jax.sharding.NamedSharding):
    sizes = dict(sharding.mesh.shape)
    spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    names = [e if isinstance(e, tuple) else (e,) for e in spec[: len(shape)]]
    return tuple(math.prod(sizes.get(n, 1) for n in ns if n is not None) for ns in names)
  if isinstance(sharding, jax.sharding.Sharding) and not isinstance(x, jax.core.Tracer):
    local = sharding.shard_shape(shape)
    return tuple(-(-n // k) if k else 1 for n, k in zip(shape, local))
  return (1,) * len(shape)


def pack_axis(param: Any) -> int:
  """The axis the pruners pack a mask of ``param`` along, so that the bits keep ``param``'s
  sharding: the last axis ``param`` is not sharded on, preferring one of at least 8 entries (no
  padding byte per row); when every axis is sharded, the last whose shards are whole bytes (a
  multiple of 8 entries each); failing that the last axis (its bits are then replicated along the
  mesh axes that do not divide them). ``-1`` for a 0-d param."""
  shape = tuple(jnp.shape(param))
  if not shape:
    return -1
  counts = _shard_counts(param)
  free = [a for a in range(len(shape)) if counts[a] == 1]
  if free:
    long = [a for a in free if shape[a] >= 8]
    return (long or free)[-1]
  whole = [a for a in range(len(shape)) if shape[a] % (8 * counts[a]) == 0]
  return (whole or [len(shape) - 1])[-1]


def _is_pruning_state(x: Any) -> bool:
  # Every jaxprune state keeps its masks in a field named `masks` next to a `count`.
  return (
    isinstance(x, tuple) and hasattr(x, "_fields") and "masks" in x._fields and "count" in x._fields
  )


def find_states(opt_state: OptState, is_state: Callable[[Any], bool]) -> list[Any]:
  """The subtrees of an optimizer state (or of an ``nnx.Optimizer``) for which ``is_state`` holds."""
  if hasattr(opt_state, "opt_state") and hasattr(opt_state, "tx"):  # an nnx.Optimizer
    opt_state = opt_state.opt_state
  return [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]


def _mask_leaves(masks: Masks) -> tuple[list[Any], Any]:
  """Leaves of a masks tree, a packed mask or an nnx ``Variable`` counting as one leaf."""
  is_leaf = lambda x: (
    x is None or isinstance(x, (PackedMask, optax.MaskedNode)) or leaves_lib.is_variable(x)
  )
  return jax.tree.flatten(masks, is_leaf=is_leaf)


def get_masks(opt_state: OptState) -> Masks:
  """The pruning masks in an optimizer state, as a tree shaped like the params.

  Works on any state that contains a jaxprune pruner: inside ``optax.chain``,
  ``optax.inject_hyperparams``, ``optax.MultiSteps``, ``optax.partition``, or the ``opt_state`` of a
  Flax ``nnx.Optimizer`` (the optimizer object itself is accepted too). If the state holds several
  pruners, a weight is kept only if every pruner keeps it.

  Args:
    opt_state: an optimizer state.

  Returns:
    A tree shaped like the params: a boolean array (``True`` = kept) for each pruned leaf and ``None``
    for each leaf that no pruner prunes. Packed masks are returned unpacked.

  Raises:
    ValueError: if the state contains no pruner.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxprune
    >>> params = {'w': jnp.arange(1.0, 5.0).reshape(2, 2)}
    >>> tx = optax.chain(optax.sgd(0.1), jaxprune.magnitude_pruning(0.5))
    >>> state = tx.init(params)
    >>> _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    >>> jaxprune.get_masks(state)['w']
    Array([[False, False],
           [ True,  True]], dtype=bool)
  """
  states = find_states(opt_state, _is_pruning_state)
  if not states:
    raise ValueError(
      "get_masks: the optimizer state contains no jaxprune pruner (no state with a 'masks' field)."
    )
  combined, treedef = None, None
  for state in states:
    leaves, here = _mask_leaves(state.masks)
    leaves = [
      None if isinstance(m, optax.MaskedNode) else unpack(leaves_lib.unwrap_variable(m))
      for m in leaves
    ]
    if combined is None:
      combined, treedef = leaves, here
      continue
    if len(leaves) != len(combined):
      raise ValueError("get_masks: the pruners in this state have masks of different structures.")
    combined = [a if b is None else b if a is None else a & b for a, b in zip(combined, leaves)]
  assert combined is not None  # states is not empty
  return jax.tree.unflatten(treedef, combined)


def device_arrays(tree: ArrayTree) -> dict[str, jax.Array]:
  """Every array leaf of ``tree`` keyed by its path, packed masks unpacked and nnx ``Variable``
  values unwrapped; ``None`` leaves are skipped. The arrays stay where they are (sharded, on other
  processes' devices too): nothing is copied to the host."""
  is_leaf = lambda x: isinstance(x, PackedMask) or leaves_lib.is_variable(x)
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return {
    leaves_lib.path_str(path): jnp.asarray(unpack(leaves_lib.unwrap_variable(x)))
    for path, x in flat
  }


def host_arrays(tree: ArrayTree) -> dict[str, np.ndarray]:
  """`device_arrays` copied to the host as NumPy arrays. For looking at small masks in one process;
  the library's summaries count on the devices instead (`count_true`), which also works when the
  arrays span several processes."""
  return {k: np.asarray(jax.device_get(v)) for k, v in device_arrays(tree).items()}


_COUNT_LIMIT = 2**31 - 1  # int32 counts; larger arrays are counted in blocks


def _blocks(shape: tuple[int, ...], limit: int) -> list[tuple[Any, ...]]:
  """Static indices splitting an array of ``shape`` into blocks of at most ``limit`` entries, as
  ``(start, stop)`` pairs (slices of the leading axis) or ints (one row, split further)."""
  if not shape or math.prod(shape) <= limit:
    return [()]
  row = math.prod(shape[1:])
  if row > limit:
    return [(i, *rest) for i in range(shape[0]) for rest in _blocks(shape[1:], limit)]
  rows = limit // row
  return [((a, min(a + rows, shape[0])),) for a in range(0, shape[0], rows)]


@functools.partial(jax.jit, static_argnums=0)
def _count_blocks(blocks: tuple[tuple[Any, ...], ...], x: jax.Array) -> list[jax.Array]:
  index = lambda b: tuple(slice(*i) if isinstance(i, tuple) else i for i in b)
  return [jnp.sum(x[index(b)] != 0, dtype=jnp.int32) for b in blocks]


def count_true(x: Any, *, limit: int = _COUNT_LIMIT) -> int:
  """The exact number of nonzero (``True``) entries of ``x``, reduced on the devices that hold it.

  Only scalars reach the host, so this works for arrays sharded over many devices and over several
  processes (every process must call it, as for any computation on such arrays). Arrays of more than
  ``limit`` entries are counted in blocks, each an exact ``int32`` sum.

  Args:
    x: an array (boolean, numeric, a NumPy array or a sharded ``jax.Array``).
    limit: the most entries one ``int32`` partial count covers.

  Returns:
    The count, as a Python int.

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> jaxprune.masks.count_true(jnp.array([[True, False], [True, True]]))
    3
  """
  x = jnp.asarray(x)
  return sum(int(c) for c in _count_blocks(tuple(_blocks(tuple(x.shape), limit)), x))


def apply_masks(params: Params, masks: Masks) -> Params:
  """``params`` with the pruned entries set to zero (``None`` masks leave a leaf unchanged).

  Pruners zero pruned weights through their updates; this is for params that have not been through
  an update yet, e.g. a fresh initialisation trained with given masks (`jaxprune.static_sparse`).

  Args:
    params: a tree of arrays.
    masks: a tree shaped like ``params`` of boolean masks, `PackedMask` values or ``None``.

  Returns:
    The masked params, of the params' dtypes.

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> jaxprune.apply_masks({'w': jnp.ones(3)}, {'w': jnp.array([True, False, True])})['w']
    Array([1., 0., 1.], dtype=float32)
  """
  treedef = jax.tree.structure(params)
  leaves = leaves_lib.flatten_up_to(treedef, params)
  out = [
    p if m is None else jnp.where(unpack(leaves_lib.unwrap_variable(m)), p, jnp.zeros((), p.dtype))
    for p, m in zip(leaves, leaves_lib.flatten_up_to(treedef, masks))
  ]
  return jax.tree.unflatten(treedef, out)
