"""Static sparse training: one mask, fixed from the first update to the last."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import allocation as allocation_lib
from jaxprune import leaves as leaves_lib
from jaxprune import masks as masks_lib
from jaxprune import schedules as schedules_lib
from jaxprune import scores as scores_lib
from jaxprune.pruning import PruningState, _Leaf, _mask_grads, _project, pruning

__all__ = ["static_sparse"]


def _given_plan(masks: Any, params: Any) -> list[_Leaf]:
  """The leaves that ``masks`` prunes, checked against ``params``."""
  names = [name for name, _ in leaves_lib.named_leaves(params)]
  treedef = jax.tree.structure(params)
  try:
    given = treedef.flatten_up_to(masks)
  except (ValueError, TypeError) as e:
    raise ValueError(f"static_sparse: masks must be a tree shaped like the params (None for unpruned "
                     f"leaves): {e}") from None
  plan = []
  for index, (name, leaf, mask) in enumerate(zip(names, treedef.flatten_up_to(params), given)):
    if mask is None:
      continue
    mask = masks_lib.unpack(leaves_lib.unwrap_variable(mask))
    leaf = leaves_lib.unwrap_variable(leaf)
    if jnp.shape(mask) != jnp.shape(leaf) or jnp.result_type(mask) != jnp.bool_:
      raise ValueError(f"static_sparse: the mask of leaf {name!r} must be a bool array of shape "
                       f"{jnp.shape(leaf)}, got {jnp.result_type(mask)}{list(jnp.shape(mask))}.")
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
      raise TypeError(f"static_sparse: leaf {name!r} has a mask but is not floating-point "
                      f"({jnp.result_type(leaf)}).")
    plan.append(_Leaf(index, name, tuple(jnp.shape(leaf)), None))
  return plan


def static_sparse(
    sparsity: float | jax.Array | None = None,
    *,
    masks: Any = None,
    distribution: str | allocation_lib.Allocation = "erk",
    seed: int = 0,
    prune: leaves_lib.Selector = None,
    packed_masks: bool = False,
    inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Trains with one fixed mask: random (ERK by default) or given.

  With ``sparsity`` the mask is drawn at the first update, uniformly at random within each leaf,
  each leaf's sparsity set by ``distribution``. With ``masks`` (for instance the masks of a lottery
  ticket from `jaxprune.get_masks`, or of a pruning-at-initialisation method) those masks are in
  the state from ``init`` on, and the params' pruned entries become zero at the first update
  (`jaxprune.apply_masks` zeroes them beforehand, if the first forward pass must already be sparse).
  Either way the pruned weights are exactly zero after every update and the mask never changes.

  Args:
    sparsity: target sparsity of the random mask, in ``[0, 1)``. Give this or ``masks``.
    masks: a tree shaped like the params: a boolean array (``True`` = kept) for each pruned leaf,
      ``None`` for the others.
    distribution: how a random mask's sparsity is spread over the leaves: ``"erk"`` (default),
      ``"er"``, ``"uniform"``, ``"global"`` or a function, as in `jaxprune.pruning`.
    seed: seed of the random mask.
    prune: which leaves a random mask prunes, as in `jaxprune.pruning`.
    packed_masks: store the masks as bits.
    inner: an optimizer to wrap (its statistics of pruned weights then stay zero); without it the
      transformation must be the last link of a chain.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a `jaxprune.PruningState`.

  Raises:
    ValueError: for both or neither of ``sparsity`` and ``masks``, a sparsity outside ``[0, 1)``,
      masks not shaped like the params (the message names the leaf), or ``prune`` with ``masks``.
    TypeError: for a mask on a non-floating-point leaf.

  Example:
    >>> import jax.numpy as jnp, optax, jaxprune
    >>> params = {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}
    >>> tx = jaxprune.static_sparse(masks={'w': jnp.eye(2, dtype=bool), 'b': None},
    ...                             inner=optax.sgd(0.1))
    >>> updates, state = tx.update({'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}, tx.init(params), params)
    >>> optax.apply_updates(params, updates)['w']
    Array([[0.9, 0. ],
           [0. , 0.9]], dtype=float32)

  References:
    Mocanu et al., `Scalable training of artificial neural networks with adaptive sparse
    connectivity inspired by network science <https://arxiv.org/abs/1707.04780>`_, 2018 (ER);
    Evci et al., `Rigging the lottery: making all tickets winners <https://arxiv.org/abs/1911.11134>`_,
    2020 (ERK)
  """
  if (sparsity is None) == (masks is None):
    raise ValueError("static_sparse: give exactly one of sparsity (a random mask) and masks.")
  if sparsity is not None:
    return pruning(scores_lib.random(seed), sparsity, distribution=distribution,
                   schedule=schedules_lib.one_shot(0), prune=prune, packed_masks=packed_masks,
                   inner=inner, name="static_sparse")
  if prune is not None:
    raise ValueError("static_sparse: prune selects leaves for a random mask; with masks= the "
                     "pruned leaves are those with a mask.")
  if not isinstance(packed_masks, bool):
    raise TypeError(f"static_sparse: packed_masks must be a bool, got {packed_masks!r}.")
  if inner is not None:
    inner = optax.with_extra_args_support(inner)
  # Host copies: the masks are constants of the run, not traced inputs.
  masks = jax.tree.map(lambda m: np.asarray(masks_lib.unpack(leaves_lib.unwrap_variable(m))), masks,
                       is_leaf=lambda x: isinstance(x, masks_lib.PackedMask) or leaves_lib.is_variable(x))

  def store(mask):
    mask = jnp.asarray(mask)
    return masks_lib.pack(mask) if packed_masks else mask

  def init_fn(params):
    unwrapped = leaves_lib.unwrap_variables(params)
    plan = _given_plan(masks, unwrapped)
    treedef = jax.tree.structure(unwrapped)
    given = treedef.flatten_up_to(masks)
    stored = [None] * len(given)
    for leaf in plan:
      stored[leaf.index] = store(given[leaf.index])
    inner_state = optax.EmptyState() if inner is None else inner.init(params)
    return PruningState(count=jnp.zeros([], jnp.int32), masks=jax.tree.unflatten(treedef, stored),
                        inner_state=inner_state)

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("static_sparse: params must be given to update (tx.update(updates, state, "
                       "params)).")
    plan = _given_plan(masks, params)
    treedef = jax.tree.structure(params)
    stored = treedef.flatten_up_to(state.masks)
    current = {leaf.index: masks_lib.unpack(stored[leaf.index]) for leaf in plan}
    inner_state = state.inner_state
    if inner is not None:
      grads = _mask_grads(plan, current, treedef.flatten_up_to(updates))
      updates, inner_state = inner.update(jax.tree.unflatten(treedef, grads), inner_state, params,
                                          **extra_args)
    out = _project(plan, current, treedef.flatten_up_to(updates), treedef.flatten_up_to(params))
    return jax.tree.unflatten(treedef, out), PruningState(
        count=optax.safe_increment(state.count), masks=state.masks, inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
