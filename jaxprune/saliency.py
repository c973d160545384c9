"""Saliency pruning: remove the weights whose first-order Taylor estimate ``|w * g|`` is smallest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import optax

from jaxprune import patterns as patterns_lib
from jaxprune import schedules as schedules_lib
from jaxprune import scores
from jaxprune.groups import Group
from jaxprune.pruning import pruning
from jaxprune.typing import Distribution, PathSelector, Sparsity

__all__ = ["saliency_pruning"]


def saliency_pruning(
  sparsity: Sparsity | None = None,
  *,
  distribution: Distribution = "uniform",
  pattern: patterns_lib.Pattern | None = None,
  schedule: schedules_lib.Schedule | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, float] | None = None,
  groups: Sequence[Group] = (),
  packed_masks: bool = False,
  application: str = "persistent",
  inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Prunes the weights with the smallest saliency ``|w * g|``.

  ``g`` is the raw gradient of the loss when the optimizer is wrapped with ``inner=`` (the intended
  use). As the last link of a chain the pruner only sees the optimizer's updates, so ``g`` is then
  the update of that step, not the gradient.

  Args:
    sparsity: target fraction of pruned weights, in ``[0, 1)``.
    distribution, pattern, schedule, prune, overrides, groups, packed_masks, application, inner:
      as in `jaxprune.magnitude_pruning`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a `jaxprune.PruningState`.

  Raises:
    ValueError, TypeError: for bad arguments; see `jaxprune.pruning`.

  Example:
    >>> import jax.numpy as jnp, optax, jaxprune
    >>> params = {'w': jnp.array([[1.0, 2.0], [3.0, 4.0]])}
    >>> tx = jaxprune.saliency_pruning(0.5, inner=optax.sgd(0.1))
    >>> state = tx.init(params)
    >>> grads = {'w': jnp.array([[4.0, 0.1], [1.0, 1.0]])}
    >>> updates, state = tx.update(grads, state, params)
    >>> jaxprune.get_masks(state)['w']
    Array([[ True, False],
           [False,  True]], dtype=bool)

  References:
    Molchanov et al., `Importance estimation for neural network pruning
    <https://arxiv.org/abs/1906.10771>`_, 2019
  """
  return pruning(
    scores.saliency,
    sparsity,
    distribution=distribution,
    pattern=pattern,
    schedule=schedule,
    prune=prune,
    overrides=overrides,
    groups=groups,
    packed_masks=packed_masks,
    application=application,
    inner=inner,
    name="saliency_pruning",
  )
