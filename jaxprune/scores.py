"""Score functions: how important each weight is. Higher scores are kept.

A score function takes ``(params, grads, count)`` and returns a tree of scores shaped like ``params``
(only the pruned leaves' scores are read). ``grads`` are the raw gradients when the pruner wraps the
optimizer (``inner=``) and the incoming updates when it is the last link of a chain; ``count`` is the
pruner's update count. Users can pass their own function of this signature to `jaxprune.pruning`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["ScoreFn", "magnitude", "saliency", "random"]

ScoreFn = Callable[[Any, Any, jax.Array], Any]


def magnitude(params: Any, grads: Any, count: jax.Array) -> Any:
  """``|w|``: magnitude pruning (Han et al. 2015, Zhu & Gupta 2017)."""
  del grads, count
  return jax.tree.map(jnp.abs, params)


def saliency(params: Any, grads: Any, count: jax.Array) -> Any:
  """``|w * g|``: first-order Taylor estimate of the loss change when ``w`` is removed.

  References:
    Molchanov et al., `Importance estimation for neural network pruning
    <https://arxiv.org/abs/1906.10771>`_, 2019; Lee et al., `SNIP <https://arxiv.org/abs/1810.02340>`_, 2019
  """
  del count
  return jax.tree.map(lambda w, g: jnp.abs(w.astype(jnp.float32) * g.astype(jnp.float32)), params,
                      grads)


def random(seed: int = 0) -> ScoreFn:
  """Uniform random scores, a fresh draw at every mask update, reproducible from ``seed``.

  Leaf ``i`` at update count ``t`` draws from ``fold_in(fold_in(key(seed), t), i)``, so the draw does
  not depend on how the params are sharded.

  Args:
    seed: integer seed (a Python int, or an integer scalar array under ``inject_hyperparams``).

  Returns:
    A score function.
  """
  if isinstance(seed, bool) or not (isinstance(seed, int) or (
      hasattr(seed, "dtype") and jnp.issubdtype(seed.dtype, jnp.integer) and jnp.ndim(seed) == 0)):
    raise TypeError(f"random: seed must be an int, got {seed!r}.")

  def score(params: Any, grads: Any, count: jax.Array) -> Any:
    del grads
    key = jax.random.fold_in(jax.random.key(seed), count)
    leaves, treedef = jax.tree.flatten(params)
    drawn = [jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(leaf))
             for i, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, drawn)

  return score
