"""How a model-wide target sparsity is shared among the pruned leaves.

An allocation function takes the target sparsity and the shapes of the pruned leaves and returns one
sparsity per leaf. The target may be a Python float (the result is then computed exactly in float64)
or a traced array (for ``optax.inject_hyperparams``; the result is then a float32 array).

``"global"`` is not an allocation function: it selects with one threshold over all leaves together,
so the per-leaf sparsities come out of the scores (see `jaxprune.pruning`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

__all__ = ["Allocation", "uniform", "erk", "er", "get_allocation"]

Allocation = Callable[[Any, Sequence[tuple[int, ...]]], list[Any]]


def _is_concrete(x: Any) -> bool:
  return isinstance(x, (int, float, np.floating, np.integer))


def uniform(sparsity: Any, shapes: Sequence[tuple[int, ...]]) -> list[Any]:
  """Every leaf gets the target sparsity."""
  return [sparsity for _ in shapes]


def _erdos_renyi(sparsity: Any, shapes: Sequence[tuple[int, ...]], dims) -> list[Any]:
  """Solve ``sum_l min(eps * r_l, 1) * n_l = (1 - s) * sum_l n_l`` for the densities ``eps * r_l``."""
  if not shapes:
    return []
  xp = np if _is_concrete(sparsity) else jnp
  sizes = xp.asarray([math.prod(s) for s in shapes], dtype=xp.float64 if xp is np else jnp.float32)
  raw = xp.asarray([sum(dims(s)) / math.prod(dims(s)) for s in shapes], dtype=sizes.dtype)
  budget_total = (1 - sparsity) * xp.sum(sizes)
  dense = xp.zeros(len(shapes), dtype=bool)
  eps = xp.zeros((), sizes.dtype)
  for _ in range(len(shapes)):  # each round makes at least one more leaf dense, or nothing changes
    budget = budget_total - xp.sum(xp.where(dense, sizes, 0))
    weight = xp.sum(xp.where(dense, 0, raw * sizes))
    eps = xp.where(weight > 0, budget / xp.where(weight > 0, weight, 1), 0)
    dense = dense | (eps * raw > 1)
  density = xp.where(dense, 1.0, xp.clip(eps * raw, 0.0, 1.0))
  result = 1 - density
  return [float(v) for v in result] if xp is np else [result[i] for i in range(len(shapes))]


def erk(sparsity: Any, shapes: Sequence[tuple[int, ...]]) -> list[Any]:
  """Erdos-Renyi-Kernel: density proportional to ``sum(shape) / prod(shape)`` over all dims.

  References:
    Evci et al., `Rigging the lottery: making all tickets winners <https://arxiv.org/abs/1911.11134>`_,
    2020
  """
  return _erdos_renyi(sparsity, shapes, lambda s: s)


def er(sparsity: Any, shapes: Sequence[tuple[int, ...]]) -> list[Any]:
  """Erdos-Renyi: density proportional to ``(n_in + n_out) / (n_in * n_out)`` of the last two dims.

  References:
    Mocanu et al., `Scalable training of artificial neural networks with adaptive sparse connectivity
    <https://arxiv.org/abs/1707.04780>`_, 2018
  """
  return _erdos_renyi(sparsity, shapes, lambda s: s[-2:])


_ALLOCATIONS = {"uniform": uniform, "erk": erk, "er": er}


def get_allocation(distribution: str | Allocation) -> Allocation | None:
  """The allocation function for ``distribution``; ``None`` for ``"global"``.

  Raises:
    ValueError: for an unknown name.
  """
  if callable(distribution):
    return distribution
  if distribution == "global":
    return None
  if distribution not in _ALLOCATIONS:
    raise ValueError(f"unknown distribution {distribution!r}; expected one of "
                     f"{sorted(_ALLOCATIONS) + ['global']} or a function (sparsity, shapes) -> list.")
  return _ALLOCATIONS[distribution]
