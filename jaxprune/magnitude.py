"""Magnitude pruning: remove the weights of smallest absolute value."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import optax

from jaxprune import patterns as patterns_lib
from jaxprune import schedules as schedules_lib
from jaxprune import scores
from jaxprune.groups import Group
from jaxprune.pruning import pruning
from jaxprune.typing import Distribution, PathSelector, Sparsity

__all__ = ["magnitude_pruning"]


def magnitude_pruning(
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
  """Prunes the weights of smallest magnitude ``|w|``, one-shot or gradually.

  Layer-wise by default (each pruned leaf loses exactly ``round(sparsity * size)`` weights);
  ``distribution="global"`` uses one threshold over all pruned leaves. With
  ``schedule=jaxprune.schedules.polynomial(...)`` this is Zhu & Gupta's gradual magnitude pruning.

  Args:
    sparsity: target fraction of pruned weights, in ``[0, 1)`` (``None`` with an N:M pattern).
    distribution: ``"uniform"``, ``"erk"``, ``"er"``, ``"global"`` or an allocation function.
    pattern: a `jaxprune.patterns` pattern; unstructured by default.
    schedule: a `jaxprune.schedules` schedule; by default the masks are computed at the first update
      and then stay fixed.
    prune: which leaves to prune (default: the kernels, see `jaxprune.leaves.default_prunable`).
    overrides: ``{path regex: sparsity}`` per-leaf (or per-group) targets.
    groups: `jaxprune.groups.Group` units spanning several leaves, pruned whole.
    packed_masks: keep masks as bits in the state.
    application: ``"persistent"`` (pruned weights exactly zero) or ``"ephemeral"`` (see
      `jaxprune.pruning`).
    inner: an optimizer to wrap instead of chaining.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a `jaxprune.PruningState`.

  Raises:
    ValueError, TypeError: for bad arguments; see `jaxprune.pruning`.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxprune
    >>> params = {'w': jax.random.normal(jax.random.key(0), (8, 8)), 'b': jnp.zeros(8)}
    >>> tx = optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning(0.75))
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> int((params['w'] == 0).sum())
    48

  References:
    Han et al., `Learning both weights and connections for efficient neural networks
    <https://arxiv.org/abs/1506.02626>`_, 2015; Zhu & Gupta, `To prune, or not to prune
    <https://arxiv.org/abs/1710.01878>`_, 2017
  """
  return pruning(
    scores.magnitude,
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
    name="magnitude_pruning",
  )
