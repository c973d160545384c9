"""Random pruning: a seeded uniformly random mask, the baseline of every pruning paper."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import optax

from jaxprune import patterns as patterns_lib
from jaxprune import schedules as schedules_lib
from jaxprune import scores
from jaxprune.groups import Group
from jaxprune.pruning import pruning
from jaxprune.typing import Distribution, PathSelector, Sparsity

__all__ = ["random_pruning"]


def random_pruning(
  sparsity: Sparsity | None = None,
  *,
  seed: int | jax.Array = 0,
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
  """Prunes weights chosen uniformly at random, reproducibly from ``seed``.

  Weights pruned at an earlier mask update stay pruned, so a gradual schedule removes a random subset
  of the survivors each time. With ``distribution="erk"`` this is the ERK random baseline of RigL.

  Args:
    sparsity: target fraction of pruned weights, in ``[0, 1)``.
    seed: integer seed; the same seed gives the same masks on any device layout.
    distribution, pattern, schedule, prune, overrides, groups, packed_masks, application, inner:
      as in `jaxprune.magnitude_pruning`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a `jaxprune.PruningState`.

  Raises:
    ValueError, TypeError: for bad arguments; see `jaxprune.pruning`.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxprune
    >>> params = {'w': jnp.ones((4, 4))}
    >>> tx = optax.chain(optax.sgd(0.1), jaxprune.random_pruning(0.5, seed=1))
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    >>> int((optax.apply_updates(params, updates)['w'] == 0).sum())
    8

  References:
    Liu et al., `The unreasonable effectiveness of random pruning
    <https://arxiv.org/abs/2202.02643>`_, 2022
  """
  return pruning(
    scores.random(seed),
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
    name="random_pruning",
  )
