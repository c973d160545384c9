"""Masks in the optimizer state: packing, and finding them in any state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import leaves as leaves_lib
from jaxprune.typing import ArrayTree, Masks, OptState, Params

__all__ = ["PackedMask", "apply_masks", "get_masks", "host_arrays", "pack", "unpack"]


class PackedMask(NamedTuple):
  """A boolean mask stored one bit per entry, packed along the last axis (leading axes keep their
  sharding).

  Attributes:
    bits: ``uint8`` array of shape ``mask.shape[:-1] + (ceil(mask.shape[-1] / 8),)``; ``(1,)`` for a
      0-d mask.
    padding: a ``uint8`` array of shape ``(p + 1,)``, where ``p`` (0 to 7) is the number of padding
      bits in the last byte, or of shape ``()`` for a 0-d mask (whose one bit sits in ``bits[0]``).
      It carries the unpacked shape in its own static shape, so the mask can be unpacked from the
      state alone and survives every pytree transport (``jit``, orbax checkpoints, which reject
      zero-size arrays, ``nnx.Optimizer``) for at most 8 bytes.
  """

  bits: jax.Array
  padding: jax.Array


def pack(mask: jax.Array) -> PackedMask:
  """Packs a boolean mask of any shape, ``()`` included, into bits (see `PackedMask`).

  ``unpack(pack(mask))`` has ``mask``'s shape and values.
  """
  mask = jnp.asarray(mask)
  if mask.ndim == 0:
    return PackedMask(jnp.packbits(mask.reshape(1)), jnp.zeros((), jnp.uint8))
  padding = -mask.shape[-1] % 8
  return PackedMask(jnp.packbits(mask, axis=-1), jnp.zeros((padding + 1,), jnp.uint8))


def unpack(mask: Any) -> Any:
  """The boolean mask of a `PackedMask`, of the shape that was packed; other values are returned
  unchanged."""
  if isinstance(mask, PackedMask):
    bits, padding = leaves_lib.unwrap_variable(mask.bits), leaves_lib.unwrap_variable(mask.padding)
    if jnp.ndim(padding) == 0:  # a 0-d mask
      return jnp.unpackbits(bits, axis=-1, count=1).astype(bool).reshape(bits.shape[:-1])
    length = 8 * bits.shape[-1] - (padding.shape[0] - 1)
    return jnp.unpackbits(bits, axis=-1, count=length).astype(bool)
  return mask


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


def host_arrays(tree: ArrayTree) -> dict[str, np.ndarray]:
  """Every array leaf of ``tree`` as a NumPy array keyed by its path, packed masks unpacked and nnx
  ``Variable`` values unwrapped; ``None`` leaves are skipped. For reporting, not for jitted code."""
  is_leaf = lambda x: isinstance(x, PackedMask) or leaves_lib.is_variable(x)
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return {
    leaves_lib.path_str(path): np.asarray(jax.device_get(unpack(leaves_lib.unwrap_variable(x))))
    for path, x in flat
  }


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
