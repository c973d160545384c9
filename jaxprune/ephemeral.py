"""Ephemeral masks: dense weights, masked in the forward pass with a straight-through gradient.

A pruner built with ``application="ephemeral"`` keeps the weights dense and trains all of them; its
masks are recomputed from the dense weights at every mask update (pruned weights can come back).
The model applies them in its forward pass::

    def loss_fn(params, opt_state, batch):
      sparse = jaxprune.ephemeral.masked_params(params, opt_state)
      return loss(model.apply({'params': sparse}, batch.x), batch.y)

The forward pass then sees exactly the sparse weights, and the gradient reaches every dense weight
as if the mask were not there (the straight-through estimator): the basis of STE, SR-STE and learned
masks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxprune import leaves as leaves_lib
from jaxprune import masks as masks_lib
from jaxprune.typing import Masks, OptState, Params

__all__ = ["masked_params"]


def masked_params(
  params: Params, masks_or_state: Masks | OptState, *, straight_through: bool = True
) -> Params:
  """``params`` with the pruned entries zeroed in value, and a straight-through gradient.

  Args:
    params: the dense params.
    masks_or_state: a masks tree (``None`` for unpruned leaves) or any optimizer state holding a
      jaxprune pruner (read with `jaxprune.get_masks`).
    straight_through: ``True``: the gradient with respect to each weight is the gradient with
      respect to its masked value, pruned or not; ``False``: pruned weights get zero gradient.

  Returns:
    The masked params, of the params' dtypes.

  Example:
    >>> import jax, jax.numpy as jnp, jaxprune
    >>> params, masks = {'w': jnp.array([1.0, 2.0])}, {'w': jnp.array([True, False])}
    >>> jaxprune.ephemeral.masked_params(params, masks)['w']
    Array([1., 0.], dtype=float32)
    >>> jax.grad(lambda p: jnp.sum(jaxprune.ephemeral.masked_params(p, masks)['w'] * 3.0))(params)['w']
    Array([3., 3.], dtype=float32)
  """
  try:
    masks = masks_lib.get_masks(masks_or_state)
  except ValueError:
    masks = masks_or_state
  treedef = jax.tree.structure(params)
  out = []
  flat_masks = leaves_lib.flatten_up_to(treedef, masks)
  for p, m in zip(leaves_lib.flatten_up_to(treedef, params), flat_masks):
    if m is None:
      out.append(p)
      continue
    masked = jnp.where(masks_lib.unpack(leaves_lib.unwrap_variable(m)), p, jnp.zeros((), p.dtype))
    out.append(p + jax.lax.stop_gradient(masked - p) if straight_through else masked)
  return jax.tree.unflatten(treedef, out)
