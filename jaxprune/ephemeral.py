"""Ephemeral masks: dense weights, masked in the forward pass with a straight-through gradient.

A pruner with ephemeral masks (`jaxprune.ste_pruning`, `jaxprune.sr_ste`,
`jaxprune.movement_pruning`, `jaxprune.scl`, or any pruner built with ``application="ephemeral"``)
keeps the weights dense; its masks are those of the weights after each update. The model applies
them in its forward pass::

    def loss_fn(params, opt_state, batch):
      sparse = jaxprune.ephemeral.masked_params(params, opt_state)
      return loss(model.apply({'params': sparse}, batch.x), batch.y)

or, for any function whose first argument holds the params (a Flax linen variables dict too)::

    logits = jaxprune.masked_apply(model.apply, opt_state)({'params': params}, batch.x)

The forward pass then sees exactly the sparse weights, and the gradient reaches every dense weight
as if the mask were not there (the straight-through estimator). The deployed model is
``jaxprune.apply_masks(params, jaxprune.get_masks(opt_state))``.

With a Flax nnx model, split the params off, mask them and merge::

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    sparse_model = nnx.merge(graphdef, jaxprune.ephemeral.masked_params(params, optimizer), rest)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune import leaves as leaves_lib
from jaxprune import masks as masks_lib
from jaxprune.typing import Masks, OptState, Params

__all__ = ["masked_apply", "masked_params"]


def _masks_of(masks_or_state: Masks | OptState) -> Masks:
  try:
    return masks_lib.get_masks(masks_or_state)
  except ValueError:
    return masks_or_state


def _fits(treedef: Any, masks: Masks) -> bool:
  try:
    leaves_lib.flatten_up_to(treedef, masks)
  except (ValueError, TypeError):
    return False
  return True


def masked_params(
  params: Params, masks_or_state: Masks | OptState, *, straight_through: bool = True
) -> Params:
  """``params`` with the pruned entries zeroed in value, and a straight-through gradient.

  Args:
    params: the dense params, or a Flax linen variables dict whose ``'params'`` entry they are
      (the other collections are returned as they are).
    masks_or_state: a masks tree (``None`` for unpruned leaves) or any optimizer state holding a
      jaxprune pruner (read with `jaxprune.get_masks`), or an ``nnx.Optimizer``.
    straight_through: ``True``: the gradient with respect to each weight is the gradient with
      respect to its masked value, pruned or not; ``False``: pruned weights get zero gradient.

  Returns:
    The masked params, of the params' dtypes.

  Raises:
    ValueError: for masks not shaped like the params, naming the leaves that differ.

  Example:
    >>> import jax, jax.numpy as jnp, jaxprune
    >>> params, masks = {'w': jnp.array([1.0, 2.0])}, {'w': jnp.array([True, False])}
    >>> jaxprune.ephemeral.masked_params(params, masks)['w']
    Array([1., 0.], dtype=float32)
    >>> jax.grad(lambda p: jnp.sum(jaxprune.ephemeral.masked_params(p, masks)['w'] * 3.0))(params)['w']
    Array([3., 3.], dtype=float32)
  """
  masks = _masks_of(masks_or_state)
  # nnx Variables (a State from nnx.split) are leaves here: their values are masked in place.
  treedef = jax.tree.structure(params, is_leaf=leaves_lib.is_variable)
  if (
    not _fits(treedef, masks)
    and isinstance(params, Mapping)
    and "params" in params
    and _fits(jax.tree.structure(params["params"]), masks)
  ):  # a linen variables dict: mask its params collection
    inner = masked_params(params["params"], masks, straight_through=straight_through)
    return type(params)({**params, "params": inner})  # type: ignore[call-arg]
  if not _fits(treedef, masks):
    with_none = lambda t: jax.tree_util.tree_flatten_with_path(
      t, is_leaf=lambda x: x is None or leaves_lib.is_variable(x)
    )[0]
    have = [leaves_lib.path_str(p) for p, _ in with_none(masks)]
    want = [leaves_lib.path_str(p) for p, _ in with_none(params)]
    raise ValueError(
      "masked_params: the masks are not shaped like the params: params leaves without a mask "
      f"{[n for n in want if n not in have]}, masks of no param {[n for n in have if n not in want]}."
    )
  out = []
  flat_masks = leaves_lib.flatten_up_to(treedef, masks)
  for p, m in zip(leaves_lib.flatten_up_to(treedef, params), flat_masks):
    if m is None:
      out.append(p)
      continue
    value = leaves_lib.unwrap_variable(p)
    mask = masks_lib.unpack(leaves_lib.unwrap_variable(m))
    masked = jnp.where(mask, value, jnp.zeros((), value.dtype))
    if straight_through:
      masked = value + jax.lax.stop_gradient(masked - value)
    out.append(p.replace(value=masked) if leaves_lib.is_variable(p) else masked)
  return jax.tree.unflatten(treedef, out)


def masked_apply(
  fn: Callable[..., Any], masks_or_state: Masks | OptState, *, straight_through: bool = True
) -> Callable[..., Any]:
  """``fn`` with its first argument (the params, or a linen variables dict) masked.

  ``masked_apply(fn, state)(params, *args, **kwargs)`` is
  ``fn(masked_params(params, state), *args, **kwargs)``: the forward pass of any Flax model or JAX
  function with the masks of an ephemeral pruner applied, and a straight-through gradient.

  Args:
    fn: a function whose first argument holds the params, e.g. ``model.apply``.
    masks_or_state: as in `masked_params`.
    straight_through: as in `masked_params`.

  Returns:
    The wrapped function.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxprune
    >>> model = nn.Dense(2, use_bias=False)
    >>> variables = {'params': {'kernel': jnp.array([[1.0, -3.0], [2.0, 0.5]])}}
    >>> masks = jaxprune.prune(variables['params'], 0.5)
    >>> jaxprune.masked_apply(model.apply, masks)(variables, jnp.ones((1, 2)))
    Array([[ 2., -3.]], dtype=float32)
  """

  def apply(params: Any, *args: Any, **kwargs: Any) -> Any:
    return fn(
      masked_params(params, masks_or_state, straight_through=straight_through), *args, **kwargs
    )

  return apply
