"""How a model-wide target sparsity is shared among the pruned leaves.

An allocation function takes the target sparsity and the shapes of the pruned leaves and returns one
sparsity per leaf. The target may be a Python float (the result is then computed exactly in float64)
or a traced array (for ``optax.inject_hyperparams``; the result is then a float32 array).

``"global"`` is not an allocation function: it selects with one threshold over all leaves together,
so the per-leaf sparsities come out of the scores (see `jaxprune.pruning`).

`allocate` calls an allocation and checks what it returns (one value per leaf, each in ``[0, 1)``),
naming the transformation and the leaf at fault.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.checks import check_regex

if TYPE_CHECKING:  # jaxprune.typing imports this module
  from jaxprune.typing import Distribution, Sparsity

__all__ = ["Allocation", "Stacked", "uniform", "erk", "er", "stacked", "get_allocation", "allocate"]

Allocation = Callable[[Any, Sequence[tuple[int, ...]]], list[Any]]


def _is_concrete(x: Any) -> bool:
  return isinstance(x, (int, float, np.floating, np.integer))


def uniform(sparsity: Sparsity, shapes: Sequence[tuple[int, ...]]) -> list[Any]:
  """Every leaf gets the target sparsity."""
  return [sparsity for _ in shapes]


def _erdos_renyi(
  sparsity: Sparsity,
  shapes: Sequence[tuple[int, ...]],
  dims: Callable[[tuple[int, ...]], tuple[int, ...]],
) -> list[Any]:
  """Solve ``sum_l min(eps * r_l, 1) * n_l = (1 - s) * sum_l n_l`` for the densities ``eps * r_l``.

  A zero-size leaf (a shape with a 0 dim) holds no weight of the budget: it gets sparsity 0 and
  takes no part in the solve.
  """
  if not shapes:
    return []
  xp = np if _is_concrete(sparsity) else jnp
  sizes = xp.asarray([math.prod(s) for s in shapes], dtype=xp.float64 if xp is np else jnp.float32)
  raw = xp.asarray(
    [sum(dims(s)) / math.prod(dims(s)) if math.prod(s) else 0.0 for s in shapes], dtype=sizes.dtype
  )
  budget_total = (1 - sparsity) * xp.sum(sizes)
  dense = xp.asarray([math.prod(s) == 0 for s in shapes], dtype=bool)  # zero-size: sparsity 0
  eps = xp.zeros((), sizes.dtype)
  for _ in range(len(shapes)):  # each round makes at least one more leaf dense, or nothing changes
    budget = budget_total - xp.sum(xp.where(dense, sizes, 0))
    weight = xp.sum(xp.where(dense, 0, raw * sizes))
    eps = xp.where(weight > 0, budget / xp.where(weight > 0, weight, 1), 0)
    dense = dense | (eps * raw > 1)
  density = xp.where(dense, 1.0, xp.clip(eps * raw, 0.0, 1.0))
  result = 1 - density
  return [float(v) for v in result] if xp is np else [result[i] for i in range(len(shapes))]


def erk(sparsity: Sparsity, shapes: Sequence[tuple[int, ...]]) -> list[Any]:
  """Erdos-Renyi-Kernel: density proportional to ``sum(shape) / prod(shape)`` over all dims.

  References:
    Evci et al., `Rigging the lottery: making all tickets winners <https://arxiv.org/abs/1911.11134>`_,
    2020
  """
  return _erdos_renyi(sparsity, shapes, lambda s: s)


def er(sparsity: Sparsity, shapes: Sequence[tuple[int, ...]]) -> list[Any]:
  """Erdos-Renyi: density proportional to ``(n_in + n_out) / (n_in * n_out)`` of the last two dims.

  References:
    Mocanu et al., `Scalable training of artificial neural networks with adaptive sparse connectivity
    <https://arxiv.org/abs/1707.04780>`_, 2018
  """
  return _erdos_renyi(sparsity, shapes, lambda s: s[-2:])


_ALLOCATIONS = {"uniform": uniform, "erk": erk, "er": er}


@dataclasses.dataclass(frozen=True)
class Stacked:
  """A distribution over the layers of stacked leaves (see `stacked`); called like its inner one."""

  distribution: Distribution
  axes: tuple[tuple[str, int], ...]

  def __call__(self, sparsity: Sparsity, shapes: Sequence[tuple[int, ...]]) -> list[Any]:
    fn = get_allocation(self.distribution)
    assert fn is not None  # `stacked` refuses "global"
    return fn(sparsity, shapes)

  @property
  def __name__(self) -> str:  # for messages, like an allocation function's name
    return f"stacked({self.distribution!r})"

  def axis_of(self, name: str, ndim: int, owner: str) -> int | None:
    """The stacked axis of leaf ``name`` (of ``ndim`` dims), or ``None`` for an ordinary leaf."""
    hits = [(key, axis) for key, axis in self.axes if re.fullmatch(key, name)]
    if len(hits) > 1:
      raise ValueError(
        f"{owner}: leaf {name!r} is matched by two stacked patterns, {hits[0][0]!r} and "
        f"{hits[1][0]!r}."
      )
    if not hits:
      return None
    key, axis = hits[0]
    if not -ndim <= axis < ndim or ndim < 2:
      raise ValueError(
        f"{owner}: stacked pattern {key!r} names axis {axis} of leaf {name!r}, which has {ndim} "
        f"dims; the stacked axis must leave at least one dim per layer."
      )
    return axis % ndim


def stacked(distribution: Distribution = "uniform", *, axes: Mapping[str, int]) -> Stacked:
  """Treats each layer of a stacked leaf as a leaf of its own: for scan-over-layers models.

  A model run with ``jax.lax.scan`` or ``flax.linen.scan`` over ``L`` layers keeps one leaf of shape
  ``(L, ...)`` per parameter instead of ``L`` leaves. Under ``stacked(D, axes={regex: axis})`` every
  leaf whose path matches a regex (in full) is split along ``axis`` into ``L`` units named
  ``path[l]``: a layer-wise distribution prunes each layer to its own sparsity, ERK allocates by the
  layer's shape, and overrides match either the leaf's path (every layer) or ``path[l]`` (one).
  A group (`jaxprune.groups.Group`, or a channel group read off the jaxpr, e.g. attention heads)
  whose members are all stacked along the same axis with the same ``L`` is split the same way,
  into units ``name[l]`` that couple slice ``l`` of every member: each layer prunes its own
  channels or heads. The masks stay one array per leaf, shaped like it.

  Args:
    distribution: the allocation over units (``"uniform"``, ``"erk"``, ``"er"`` or a function);
      not ``"global"``, which has one threshold over all entries, stacked or not.
    axes: ``{path regex: stacked axis}``.

  Returns:
    A distribution to pass as ``distribution=`` to any pruner.

  Raises:
    ValueError: for ``"global"``, an unknown name, bad regexes or axes.
    TypeError: for a key that is not a string.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxprune
    >>> params = {'layers': {'kernel': jnp.arange(24.0).reshape(3, 2, 4) - 10}}
    >>> tx = jaxprune.magnitude_pruning(
    ...   0.5, distribution=jaxprune.allocation.stacked(axes={'layers/.*': 0}), inner=optax.sgd(0.0))
    >>> _, state = tx.update(params, tx.init(params), params)
    >>> jaxprune.get_masks(state)['layers']['kernel'].sum(axis=(1, 2))  # half of every layer
    Array([4, 4, 4], dtype=int32)
  """
  if isinstance(distribution, Stacked):
    raise ValueError("stacked: the distribution is stacked already.")
  if distribution == "global":
    raise ValueError(
      "stacked: distribution 'global' selects with one threshold over every entry, so layers "
      "need no splitting; pass distribution='global' without stacked()."
    )
  get_allocation(distribution)  # unknown names fail here
  if not isinstance(axes, Mapping) or not axes:
    raise ValueError(f"stacked: axes must be a non-empty mapping {{regex: axis}}, got {axes!r}.")
  for key, axis in axes.items():
    check_regex(key, "stacked", "axes")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
      raise ValueError(f"stacked: the axis of pattern {key!r} must be an int, got {axis!r}.")
  return Stacked(distribution, tuple((k, int(a)) for k, a in axes.items()))


def get_allocation(distribution: Distribution) -> Allocation | None:
  """The allocation function for ``distribution``; ``None`` for ``"global"``.

  Raises:
    ValueError: for an unknown name.
  """
  if callable(distribution):
    return distribution
  if distribution == "global":
    return None
  if distribution not in _ALLOCATIONS:
    raise ValueError(
      f"unknown distribution {distribution!r}; expected one of "
      f"{sorted(_ALLOCATIONS) + ['global']} or a function (sparsity, shapes) -> list."
    )
  return _ALLOCATIONS[distribution]


def _describe(value: Any) -> str:
  try:
    return repr(value.item()) if hasattr(value, "item") and jnp.ndim(value) == 0 else repr(value)
  except Exception:  # pylint: disable=broad-except
    return repr(value)


def allocate(
  distribution: Distribution,
  sparsity: Sparsity,
  shapes: Sequence[tuple[int, ...]],
  names: Sequence[str] | None = None,
  *,
  owner: str,
) -> list[Any]:
  """The per-leaf sparsities of ``distribution`` for the leaves of ``shapes``, checked.

  Calls the allocation (a name or a function, as in `get_allocation`) and checks what it returns.
  Traced values (under ``jit`` or ``optax.inject_hyperparams``) cannot be checked and pass.

  Args:
    distribution: ``"uniform"``, ``"erk"``, ``"er"``, ``"global"`` or a function
      ``(sparsity, shapes) -> list``.
    sparsity: the target sparsity (a number or a traced scalar).
    shapes: the shapes of the leaves sharing the target.
    names: the leaves' names, for error messages; by default ``leaf 0``, ``leaf 1``, ...
    owner: the name of the transformation, for error messages.

  Returns:
    One sparsity per leaf, as the allocation returned them; for ``"global"`` (no allocation: the
    leaves share one threshold) a list of ``None``.

  Raises:
    ValueError: for an unknown distribution name, if the allocation returns a number of values that
      differs from the number of leaves, or a concrete value that is outside ``[0, 1)``, NaN or not a
      real number (a bool, a string, an array that is not a scalar).
  """
  shapes = [tuple(s) for s in shapes]
  names = [f"leaf {i}" for i in range(len(shapes))] if names is None else [str(n) for n in names]
  if len(names) != len(shapes):
    raise ValueError(f"{owner}: allocate got {len(names)} names for {len(shapes)} shapes.")
  fn = get_allocation(distribution)
  if fn is None:
    return [None] * len(shapes)
  label = getattr(fn, "__name__", None) or repr(fn)
  result = fn(sparsity, shapes)
  try:
    if isinstance(result, (jax.Array, np.ndarray)):  # concrete or traced: one entry per leaf
      if jnp.ndim(result) != 1:
        raise TypeError
      values = [result[i] for i in range(result.shape[0])]
    else:
      values = list(result)
  except TypeError:
    raise ValueError(
      f"{owner}: the allocation {label} must return a sequence of {len(shapes)} "
      f"sparsities (one per leaf), got {_describe(result)}."
    ) from None
  if len(values) != len(shapes):
    raise ValueError(
      f"{owner}: the allocation {label} returned {len(values)} sparsities for "
      f"{len(shapes)} leaves (expected one per leaf: {names})."
    )
  for name, value in zip(names, values):
    if isinstance(value, jax.core.Tracer):
      if jnp.ndim(value) != 0:
        raise ValueError(
          f"{owner}: the allocation {label} returned a sparsity of shape "
          f"{jnp.shape(value)} for leaf {name!r}; expected a scalar."
        )
      continue
    what = f"{owner}: the allocation {label} returned sparsity {_describe(value)} for leaf {name!r}"
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
      raise ValueError(f"{what}; expected a number in [0, 1).")
    if isinstance(value, (jax.Array, np.ndarray)) and (
      np.ndim(value) != 0
      or not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer))
    ):
      raise ValueError(f"{what}; expected a real scalar in [0, 1).")
    try:
      number = float(value)
    except (TypeError, ValueError):
      raise ValueError(f"{what}; expected a number in [0, 1).") from None
    if not 0.0 <= number < 1.0:  # NaN fails every comparison
      raise ValueError(f"{what}; expected a number in [0, 1).")
  return values
