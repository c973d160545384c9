"""Type aliases of jaxprune's public signatures, as ``jax.typing`` and optax's ``Params`` are.

Pytrees have no static type: a tree of params, gradients, masks or scores is `ArrayTree`, which is
``Any`` to a type checker (as ``chex.ArrayTree``, optax's ``Params``, is to users of the untyped
optax). The aliases say what a tree holds; `Array`, `ArrayLike`, `Shape`, `Sparsity`,
`PathSelector` and `Distribution` are checked.

Example:
  >>> import jax.numpy as jnp, jaxprune
  >>> from jaxprune.typing import Masks, Params, Sparsity
  >>> def every_leaf(params: Params, sparsity: Sparsity) -> Masks:
  ...   return jaxprune.prune(params, sparsity, prune='.*')
  >>> every_leaf({'w': jnp.array([1.0, -3.0, 2.0, 0.5])}, 0.5)['w']
  Array([False,  True,  True, False], dtype=bool)
"""

from typing import Any, TypeAlias, Union

import jax
import jax.typing

from jaxprune.allocation import Allocation
from jaxprune.leaves import Selector

__all__ = [
  "Array",
  "ArrayLike",
  "ArrayTree",
  "Distribution",
  "Masks",
  "OptState",
  "Params",
  "PathSelector",
  "Scores",
  "Shape",
  "Sparsity",
  "Updates",
]

Array: TypeAlias = jax.Array
"""A JAX array, what jaxprune's functions return (``jax.Array``)."""

ArrayLike: TypeAlias = jax.typing.ArrayLike
"""What ``jnp.asarray`` accepts (JAX and NumPy arrays and scalars, Python numbers and bools)."""

ArrayTree: TypeAlias = Any
"""A pytree of arrays (dicts, lists, tuples, NamedTuples, ``nnx.State``), ``Any`` to mypy."""

Params: TypeAlias = ArrayTree
"""A model's parameters, a pytree of arrays (Flax nnx ``Variable`` leaves are unwrapped)."""

Updates: TypeAlias = ArrayTree
"""Gradients or optimizer updates, a pytree shaped like the `Params`."""

OptState: TypeAlias = ArrayTree
"""An optax optimizer state (where a function says so, a Flax ``nnx.Optimizer`` too)."""

Masks: TypeAlias = ArrayTree
"""Shaped like the `Params`, a bool array (``True`` = kept) per pruned leaf, ``None`` elsewhere."""

Scores: TypeAlias = ArrayTree
"""A pytree shaped like the `Params` of floating-point scores; the highest are kept."""

Shape: TypeAlias = tuple[int, ...]
"""An array's shape."""

Sparsity: TypeAlias = Union[float, jax.Array]
"""A fraction of the weights to prune in ``[0, 1)``, a number or a scalar array (may be traced)."""

PathSelector: TypeAlias = Selector
"""What ``prune=`` takes, a `jaxprune.leaves.Selector` (``None``, regexes, a predicate, ...)."""

Distribution: TypeAlias = Union[str, Allocation]
"""What ``distribution=`` takes (``"uniform"``, ``"erk"``, ``"er"``, ``"global"`` or a function)."""
