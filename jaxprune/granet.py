"""GraNet: gradual magnitude pruning with zero-cost regrowth by gradient (Liu et al. 2021)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import optax

from jaxprune import dst
from jaxprune import patterns as patterns_lib
from jaxprune.checks import check_fraction
from jaxprune.groups import Group
from jaxprune.typing import Distribution, PathSelector, Sparsity

__all__ = ["granet"]


def granet(
  sparsity: Sparsity,
  *,
  end_step: int,
  begin_step: int = 0,
  frequency: int = 100,
  initial_sparsity: float = 0.0,
  drop_fraction: float = 0.5,
  power: float = 3.0,
  distribution: Distribution = "erk",
  seed: int = 0,
  pattern: patterns_lib.Pattern | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, float] | None = None,
  groups: Sequence[Group] = (),
  packed_masks: bool = False,
  inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Gradual pruning with neuroregeneration: prune towards the target, regrow by gradient.

  Each leaf's sparsity follows Zhu & Gupta's cubic schedule from ``initial_sparsity`` (its
  ``distribution`` share; 0 starts dense, above 0 from a random sparse mask) at ``begin_step`` to
  ``sparsity`` at ``end_step``. At each mask update (every ``frequency`` updates, and at
  ``end_step``) a leaf drops by magnitude down to its scheduled active count minus ``k``, then grows
  ``k`` weights with the largest gradient magnitude among the inactive ones,
  ``k = round(f(t) * active)``, ``f`` decaying from ``drop_fraction`` to 0 at ``end_step`` along a
  cosine. Grown weights and their optimizer statistics start at zero. See `jaxprune.dst`.

  Args:
    sparsity: final overall sparsity, shared among the leaves by ``distribution``.
    end_step: the update at which the final sparsity is reached; masks never change afterwards.
    begin_step: the first mask update.
    frequency: updates between mask updates.
    initial_sparsity: overall sparsity at ``begin_step``.
    drop_fraction: the regrowth fraction at the start (the paper's default 0.5), cosine-annealed.
    power: exponent of the sparsity schedule (3: cubic).
    distribution: ``"erk"`` (default), ``"er"``, ``"uniform"`` or a function.
    seed: seed of the initial mask when ``initial_sparsity > 0``.
    pattern: what is dropped and grown together: unstructured (default), block or channel.
    prune: which leaves are sparse, as in `jaxprune.pruning`.
    overrides: ``{path regex: sparsity}`` for leaves (or groups) at their own sparsity.
    groups: `jaxprune.groups.Group` units spanning several leaves, dropped and grown whole.
    packed_masks: store masks as bits.
    inner: the optimizer to wrap (required).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a `jaxprune.PruningState`.

  Raises:
    ValueError: for sparsities outside ``[0, 1)`` or an initial sparsity above the final one, a drop
      fraction outside ``[0, 1]``, ``frequency < 1``, ``begin_step >= end_step``,
      ``distribution="global"``, or no ``inner``.

  Example:
    >>> import optax, jaxprune
    >>> tx = jaxprune.granet(0.95, begin_step=500, end_step=3000, frequency=100,
    ...                      inner=optax.sgd(0.05, momentum=0.9))

  References:
    Liu et al., `Sparse training via boosting pruning plasticity with neuroregeneration
    <https://arxiv.org/abs/2106.10404>`_, NeurIPS 2021
  """
  check_fraction(drop_fraction, "granet: drop_fraction")
  return dst.dynamic_sparse(
    sparsity,
    grow="gradient",
    drop_fraction=dst.cosine_drop_fraction(drop_fraction, end_step),
    frequency=frequency,
    begin_step=begin_step,
    end_step=end_step,
    initial_sparsity=initial_sparsity,
    sparsity_power=power,
    distribution=distribution,
    seed=seed,
    pattern=pattern,
    prune=prune,
    overrides=overrides,
    groups=groups,
    packed_masks=packed_masks,
    inner=inner,
    name="granet",
  )
