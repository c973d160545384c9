"""Learned masks: mask scores that the pruner trains itself, and masks where they pass a threshold.

A learned-mask score keeps one float32 score per weight in the pruner's state, with the state of
its own optax optimizer. At every update it computes the scores' gradient from the step's
gradient (with respect to the masked weights, the straight-through estimator) and the weights,
plus the gradient of the method's regulariser, and takes one optimizer step on the scores. The
score it reports is a *margin*: entries with a positive margin are kept (`jaxprune.rules.threshold`).
Soft movement pruning (`jaxprune.movement_pruning` with ``variant="soft"``) and sparse
connectivity learning (`jaxprune.scl`) are two declarations of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune import scores as scores_lib
from jaxprune.typing import Params

__all__ = ["LearnedState", "learned_score", "masked_gradient", "pruned_leaves"]


class LearnedState(NamedTuple):
  """The state of a learned-mask score.

  Attributes:
    scores: one float32 score per weight, a tree shaped like the params.
    opt_state: the state of the optimizer that trains the scores.
  """

  scores: Params
  opt_state: optax.OptState


def learned_score(
  name: str,
  *,
  init_value: float,
  gradient: Callable[[Params, scores_lib.ScoreInputs], Params],
  margin: Callable[[Params, jax.Array], Params],
  optimizer: optax.GradientTransformation,
) -> scores_lib.Score:
  """A `jaxprune.scores.Score` whose scores are trained by ``optimizer``.

  Args:
    name: the score's name, for messages.
    init_value: every score's initial value.
    gradient: ``(scores, inputs) -> gradient of the scores``, a tree shaped like the params
      (``inputs.grads`` are the gradients with respect to the masked weights).
    margin: ``(scores, count) -> margins``: the entries with a positive margin are kept.
    optimizer: trains the scores, one step per update.

  Returns:
    A score with state (`LearnedState`) that reads gradients.

  Example:
    >>> import jax.numpy as jnp, optax, jaxprune
    >>> score = jaxprune.learned.learned_score(
    ...     'demo', init_value=1.0, gradient=lambda s, x: x.grads,
    ...     margin=lambda s, count: s, optimizer=optax.sgd(1.0))
    >>> score({'w': jnp.zeros(3)}, {'w': jnp.array([0.5, 2.0, -1.0])})['w']
    Array([ 0.5, -1. ,  2. ], dtype=float32)
  """

  def init(params: Params) -> LearnedState:
    values = jax.tree.map(lambda w: jnp.full(jnp.shape(w), init_value, jnp.float32), params)
    return LearnedState(values, optimizer.init(values))

  def update(state: LearnedState, x: scores_lib.ScoreInputs) -> LearnedState:
    grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), gradient(state.scores, x))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.scores)
    return LearnedState(optax.apply_updates(state.scores, updates), opt_state)

  def fn(x: scores_lib.ScoreInputs) -> Params:
    return margin(x.state.scores, x.count)

  return scores_lib.Score(name, fn, reads_grads=True, init=init, update=update)


def pruned_leaves(x: scores_lib.ScoreInputs) -> list[bool]:
  """Whether each leaf (``jax.tree.leaves`` order) is pruned: ``x.pruned``, or every leaf of at
  least two dimensions when the score is called outside a pruner."""
  leaves = jax.tree.leaves(x.params)
  if x.pruned is None:
    return [jnp.ndim(w) >= 2 for w in leaves]
  chosen = set(x.pruned)
  return [i in chosen for i in range(len(leaves))]


def masked_gradient(x: scores_lib.ScoreInputs) -> list[Any]:
  """``g * w`` per leaf in float32: the gradient of a score ``S`` that scales ``w`` through the
  straight-through mask (``d loss / d S = d loss / d (w M) * w``)."""
  assert x.grads is not None  # learned scores read gradients
  return [
    jnp.asarray(g, jnp.float32) * jnp.asarray(w, jnp.float32)
    for g, w in zip(jax.tree.leaves(x.grads), jax.tree.leaves(x.params))
  ]
