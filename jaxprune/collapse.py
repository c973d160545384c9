"""Layer collapse: masks that empty a layer or cut every path from the input to the output.

Pruning at initialisation with gradient scores can remove a whole layer (Tanaka et al. 2020), after
which the network computes a constant. `layer_collapse` checks a tree of masks for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxprune import masks as masks_lib
from jaxprune.typing import Masks

__all__ = ["CollapseReport", "layer_collapse"]


class CollapseReport(NamedTuple):
  """What `layer_collapse` found.

  Attributes:
    empty_leaves: pruned leaves with no weight left.
    dead_outputs: per leaf, output units (last axis) with no surviving incoming weight.
    dead_inputs: per leaf, input units (second-to-last axis) with no surviving outgoing weight.
    connected: whether some path of kept weights runs from an input unit of the first kernel to an
      output unit of the last one, through every kernel in ``chain``.
    chain: the leaves the path check went through, in order.
  """

  empty_leaves: list[str]
  dead_outputs: dict[str, int]
  dead_inputs: dict[str, int]
  connected: bool
  chain: list[str]

  @property
  def collapsed(self) -> bool:
    """True if a leaf is empty or no input-to-output path survives."""
    return bool(self.empty_leaves) or not self.connected

  def describe(self) -> str:
    parts = []
    if self.empty_leaves:
      parts.append(f"leaves pruned to zero: {self.empty_leaves}")
    if not self.connected:
      parts.append(f"no path of kept weights from input to output through {self.chain}")
    dead = {k: v for k, v in self.dead_outputs.items() if v}
    if dead:
      parts.append(f"units with no kept input: {dead}")
    return "; ".join(parts) if parts else "no collapse"


def _connectivity(mask: jax.Array) -> jax.Array:
  """``[in, out]``: whether input unit i reaches output unit o through the leaf (any spatial tap)."""
  if mask.ndim == 2:
    return mask
  return jnp.any(mask.reshape(-1, mask.shape[-2], mask.shape[-1]), axis=0)  # conv: (..., in, out)


def layer_collapse(masks: Masks, order: Sequence[str] | None = None) -> CollapseReport:
  """Checks masks for layer collapse.

  The path check treats the kernels (leaves with at least 2 dimensions, in tree order unless
  ``order`` lists their paths) as a chain, the output units (last axis) of one feeding the input
  units (second-to-last axis) of the next; a convolution connects an input to an output channel if
  any spatial tap is kept. When the next kernel has ``k`` times as many inputs as the previous has
  outputs (a channels-last flatten between a convolution and a dense layer), input ``i`` is fed by
  channel ``i % C``. The chain stops at the first kernel whose input size fits neither way;
  ``chain`` says how far it went. Residual connections are not modelled: for such networks read
  ``empty_leaves`` and ``dead_outputs``. Everything is reduced on the devices holding the masks
  (only counts reach the host), so masks sharded over several processes are checked where they are.

  Args:
    masks: a tree of boolean masks (``None`` for unpruned leaves), e.g. from `jaxprune.get_masks`.
    order: the paths of the kernels in the order data flows through them.

  Returns:
    A `CollapseReport`.

  Example:
    >>> import numpy as np, jaxprune
    >>> masks = {'a': np.ones((4, 3), bool), 'b': np.zeros((3, 2), bool)}
    >>> jaxprune.collapse.layer_collapse(masks).empty_leaves
    ['b']
  """
  arrays = {k: v.astype(bool) for k, v in masks_lib.device_arrays(masks).items()}
  kernels = {k: v for k, v in arrays.items() if v.ndim >= 2}
  names = list(kernels) if order is None else list(order)
  missing = [n for n in names if n not in kernels]
  if missing:
    raise ValueError(
      f"layer_collapse: order names {missing}, which are not kernel masks; the masks "
      f"have {list(kernels)}."
    )
  count = masks_lib.count_true
  empty = [k for k, v in arrays.items() if v.size and not count(v)]
  dead_out, dead_in = {}, {}
  for k, v in kernels.items():
    c = _connectivity(v)
    dead_out[k] = count(~c.any(axis=0))
    dead_in[k] = count(~c.any(axis=1))
  reach, chain = None, []
  for name in names:
    c = _connectivity(kernels[name])
    if reach is not None and c.shape[0] != reach.size:
      if c.shape[0] % reach.size:
        break
      reach = jnp.tile(reach, c.shape[0] // reach.size)  # a channels-last flatten
    reach = c.any(axis=0) if reach is None else (reach[:, None] & c).any(axis=0)
    chain.append(name)
  connected = reach is not None and count(reach) > 0
  return CollapseReport(empty, dead_out, dead_in, connected, chain)
