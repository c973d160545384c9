"""RigL: drop the smallest weights, grow where the gradient is largest (Evci et al. 2020)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import optax

from jaxprune import dst
from jaxprune import patterns as patterns_lib
from jaxprune.checks import check_fraction
from jaxprune.groups import Group
from jaxprune.typing import Distribution, PathSelector, Sparsity

__all__ = ["rigl"]


def rigl(
  sparsity: Sparsity,
  *,
  end_step: int,
  drop_fraction: float = 0.3,
  drop_schedule: str = "cosine",
  frequency: int = 100,
  begin_step: int | None = None,
  distribution: Distribution = "erk",
  seed: int = 0,
  pattern: patterns_lib.Pattern | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, float] | None = None,
  groups: Sequence[Group] = (),
  packed_masks: bool = False,
  inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Rigged lottery: sparse-to-sparse training that moves the mask towards large gradients.

  The run starts from a random mask (ERK by default). Every ``frequency`` updates until
  ``end_step``, each leaf drops its ``k`` active weights of smallest magnitude and grows the ``k``
  inactive ones with the largest gradient magnitude, ``k = round(f(t) * active)`` with
  ``f(t) = drop_fraction / 2 * (1 + cos(pi * t / end_step))`` (``drop_schedule="constant"``:
  ``f = drop_fraction``). Each leaf's active count never changes. Grown weights and their optimizer
  statistics start at zero. See `jaxprune.dst` for the details shared with SET and GraNet.

  Args:
    sparsity: overall sparsity, shared among the leaves by ``distribution``.
    end_step: ``T_end``: no mask changes after it (typically 75% of training).
    drop_fraction: ``alpha``, the fraction of active weights dropped at the first update.
    drop_schedule: ``"cosine"`` (RigL) or ``"constant"``.
    frequency: ``dT``, updates between mask updates.
    begin_step: first mask update; ``frequency`` by default.
    distribution: ``"erk"`` (default), ``"er"``, ``"uniform"`` or a function.
    seed: seed of the initial mask.
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
      drop schedule, ``frequency < 1``, ``begin_step >= end_step``, ``distribution="global"``, or
      no ``inner``.

  Example:
    RigL's MNIST setting (LeNet-300-100, 98% sparsity, ``dT = 100``, ``alpha = 0.3``):

    >>> import optax, jaxprune
    >>> tx = jaxprune.rigl(0.98, end_step=7500, frequency=100, drop_fraction=0.3,
    ...                    inner=optax.sgd(0.1, momentum=0.9))

  References:
    Evci, Gale, Menick, Castro & Elsen, `Rigging the lottery: making all tickets winners
    <https://arxiv.org/abs/1911.11134>`_, 2020
  """
  check_fraction(drop_fraction, "rigl: drop_fraction")
  fraction = dst.drop_fraction_schedule(drop_schedule, drop_fraction, end_step, name="rigl")
  return dst.dynamic_sparse(
    sparsity,
    grow="gradient",
    drop_fraction=fraction,
    frequency=frequency,
    begin_step=frequency if begin_step is None else begin_step,
    end_step=end_step,
    distribution=distribution,
    seed=seed,
    pattern=pattern,
    prune=prune,
    overrides=overrides,
    groups=groups,
    packed_masks=packed_masks,
    inner=inner,
    name="rigl",
  )
