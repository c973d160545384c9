"""SET: sparse evolutionary training, drop the smallest weights and regrow at random (Mocanu et al.
2018)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import optax

from jaxprune import dst
from jaxprune import patterns as patterns_lib
from jaxprune.checks import check_fraction
from jaxprune.groups import Group
from jaxprune.typing import Distribution, PathSelector, Sparsity

__all__ = ["set_sparse"]

_NEVER = 2**31 - 2


def set_sparse(
  sparsity: Sparsity,
  *,
  drop_fraction: float = 0.3,
  drop_schedule: str = "constant",
  frequency: int = 100,
  begin_step: int | None = None,
  end_step: int | None = None,
  distribution: Distribution = "erk",
  seed: int = 0,
  pattern: patterns_lib.Pattern | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, float] | None = None,
  groups: Sequence[Group] = (),
  packed_masks: bool = False,
  inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Sparse evolutionary training: the mask evolves by magnitude drops and random regrowth.

  The run starts from a random mask (ERK by default; the paper's Erdos-Renyi is ``"er"``). Every
  ``frequency`` updates each leaf drops the fraction ``drop_fraction`` (``zeta``) of its active
  weights with the smallest magnitude and regrows as many, uniformly at random among the inactive
  ones (seeded by ``seed``), starting at zero with zero optimizer statistics. Each leaf's active
  count never changes. See `jaxprune.dst`.

  Args:
    sparsity: overall sparsity, shared among the leaves by ``distribution``.
    drop_fraction: ``zeta``, the fraction of active weights replaced at each update.
    drop_schedule: ``"constant"`` (SET: ``zeta`` at every update) or ``"cosine"`` (RigL's
      annealing, ``zeta / 2 * (1 + cos(pi * t / end_step))``, as the RigL paper and its code run
      SET for comparison; needs ``end_step``).
    frequency: updates between mask updates (SET updates once per epoch).
    begin_step: first mask update; ``frequency`` by default.
    end_step: last mask update; none by default (the mask evolves for the whole run).
    distribution: ``"erk"`` (default), ``"er"``, ``"uniform"`` or a function.
    seed: seed of the initial mask and of the regrowth.
    pattern: what is dropped and grown together: unstructured (default), block or channel.
    prune: which leaves are sparse, as in `jaxprune.pruning`.
    overrides: ``{path regex: sparsity}`` for leaves (or groups) at their own sparsity.
    groups: `jaxprune.groups.Group` units spanning several leaves, dropped and grown whole.
    packed_masks: store masks as bits.
    inner: the optimizer to wrap (required).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a `jaxprune.PruningState`.

  Raises:
    ValueError: for a sparsity outside ``[0, 1)``, a drop fraction outside ``[0, 1]``, an unknown
      drop schedule (or ``"cosine"`` without ``end_step``), ``frequency < 1``, ``begin_step >= end_step``, ``distribution="global"``, or no ``inner``.

  Example:
    >>> import optax, jaxprune
    >>> tx = jaxprune.set_sparse(0.95, drop_fraction=0.3, frequency=469, seed=0,
    ...                          inner=optax.sgd(0.05, momentum=0.9))

  References:
    Mocanu, Mocanu, Stone, Nguyen, Gibescu & Liotta, `Scalable training of artificial neural networks
    with adaptive sparse connectivity inspired by network science
    <https://arxiv.org/abs/1707.04780>`_, Nature Communications 2018
  """
  check_fraction(drop_fraction, "set_sparse: drop_fraction")
  return dst.dynamic_sparse(
    sparsity,
    grow="random",
    drop_fraction=dst.drop_fraction_schedule(
      drop_schedule, drop_fraction, end_step, name="set_sparse"
    ),
    frequency=frequency,
    begin_step=frequency if begin_step is None else begin_step,
    end_step=_NEVER if end_step is None else end_step,
    distribution=distribution,
    seed=seed,
    pattern=pattern,
    prune=prune,
    overrides=overrides,
    groups=groups,
    packed_masks=packed_masks,
    inner=inner,
    name="set_sparse",
  )
