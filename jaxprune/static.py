"""Static sparse training: one mask, fixed from the first update to the last."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import optax

from jaxprune import engine
from jaxprune import patterns as patterns_lib
from jaxprune import plan as plan_lib
from jaxprune import schedules as schedules_lib
from jaxprune import scores as scores_lib
from jaxprune.checks import check_bool
from jaxprune.groups import Group
from jaxprune.typing import Distribution, Masks, PathSelector, Sparsity

__all__ = ["static_sparse"]


def static_sparse(
  sparsity: Sparsity | None = None,
  *,
  masks: Masks | None = None,
  distribution: Distribution = "erk",
  seed: int = 0,
  pattern: patterns_lib.Pattern | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, float] | None = None,
  groups: Sequence[Group] = (),
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
    pattern, prune, overrides, groups: what a random mask prunes, as in `jaxprune.pruning`.
    packed_masks: store the masks as bits.
    inner: an optimizer to wrap (its statistics of pruned weights then stay zero); without it the
      transformation must be the last link of a chain.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a `jaxprune.PruningState`.

  Raises:
    ValueError: for both or neither of ``sparsity`` and ``masks``, a sparsity outside ``[0, 1)``,
      masks not shaped like the params (the message names the leaf), or selection options with
      ``masks``.
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
  name = "static_sparse"
  if (sparsity is None) == (masks is None):
    raise ValueError("static_sparse: give exactly one of sparsity (a random mask) and masks.")
  check_bool("packed_masks", packed_masks, name)
  if masks is not None:
    if prune is not None or pattern is not None or overrides or groups:
      raise ValueError(
        "static_sparse: prune, pattern, overrides and groups select leaves for a "
        "random mask; with masks= the pruned leaves are those with a mask."
      )
    selection = plan_lib.Selection(None, patterns_lib.unstructured(), "uniform", {}, ())
    method = engine.Method(
      name,
      scores_lib.magnitude,
      None,
      selection,
      schedules_lib.one_shot(0),
      given_masks=masks,
      packed_masks=packed_masks,
    )
  else:
    selection = plan_lib.make_selection(
      name,
      sparsity=sparsity,
      prune=prune,
      pattern=pattern,
      distribution=distribution,
      overrides=overrides,
      groups=groups,
    )
    method = engine.Method(
      name,
      scores_lib.random(seed),
      sparsity,
      selection,
      schedules_lib.one_shot(0),
      packed_masks=packed_masks,
    )
  return engine.transformation(method, inner)
