"""Fisher pruning: Optimal Brain Damage's saliency with the empirical Fisher as the Hessian."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune import engine
from jaxprune import patterns as patterns_lib
from jaxprune import plan as plan_lib
from jaxprune import schedules as schedules_lib
from jaxprune import scores as scores_lib
from jaxprune.checks import check_bool, number
from jaxprune.typing import Distribution, Params, PathSelector, Sparsity

__all__ = ["FisherState", "fisher_pruning", "fisher_score", "squared_gradients"]

SQUARED_GRADS = "squared_grads"


class FisherState(NamedTuple):
  """The running diagonal Fisher estimate.

  Attributes:
    fisher: the average of the squared gradients, shaped like the params (float32).
    steps: the number of updates averaged (int32 scalar).
  """

  fisher: Params
  steps: jax.Array


def fisher_score(*, decay: float | None = None, per_example: bool = False) -> scores_lib.Score:
  """OBD's saliency ``1/2 h w^2``, ``h`` the running diagonal empirical Fisher (a score with state).

  ``h`` averages the squared gradients over every update: their plain mean with ``decay=None``, an
  exponential average with ``decay`` otherwise. With ``per_example=False`` a step contributes the
  square of its (mini-batch mean) gradient; with ``per_example=True`` it contributes the mean over
  the batch of the squared per-example gradients, the empirical Fisher proper, passed as
  ``tx.update(grads, state, params, squared_grads=...)`` (see `squared_gradients`).

  Args:
    decay: ``None`` (the mean over all updates) or an averaging factor in ``[0, 1)``.
    per_example: read the squared per-example gradients from the ``squared_grads`` argument.

  Returns:
    A `jaxprune.scores.Score` with a `FisherState`.

  Raises:
    ValueError, TypeError: for a ``decay`` outside ``[0, 1)``.

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> score = jaxprune.fisher.fisher_score()
    >>> params = {'w': jnp.array([1.0, 2.0])}
    >>> state = score.init(params)
    >>> for g in ([2.0, 1.0], [0.0, 1.0]):  # mean g^2: [2, 1]
    ...   x = jaxprune.scores.ScoreInputs(params, {'w': jnp.array(g)}, 0, state, {})
    ...   state = score.update(state, x)
    >>> score.fn(x._replace(state=state))['w']  # 1/2 * [2, 1] * [1, 4]
    Array([1., 2.], dtype=float32)
  """
  owner = "fisher_pruning"
  if decay is not None:
    value = number(decay, f"{owner}: decay")
    if value is not None and not 0.0 <= value < 1.0:
      raise ValueError(f"{owner}: decay must be None or in [0, 1), got {decay!r}.")
  check_bool("per_example", per_example, owner)

  def init(params: Params) -> FisherState:
    zeros = jax.tree.map(lambda w: jnp.zeros(jnp.shape(w), jnp.float32), params)
    return FisherState(zeros, jnp.zeros([], jnp.int32))

  def update(state: FisherState, x: scores_lib.ScoreInputs) -> FisherState:
    if per_example:
      sample = jax.tree.map(lambda s: jnp.asarray(s, jnp.float32), x.extra[SQUARED_GRADS])
    else:
      sample = jax.tree.map(lambda g: jnp.square(jnp.asarray(g, jnp.float32)), x.grads)
    if decay is None:  # the running mean
      rate = 1.0 / (state.steps + 1).astype(jnp.float32)
    else:
      rate = 1.0 - jnp.asarray(decay, jnp.float32)
    fisher = jax.tree.map(lambda f, s: f + rate * (s - f), state.fisher, sample)
    return FisherState(fisher, optax.safe_increment(state.steps))

  def fn(x: scores_lib.ScoreInputs) -> Params:
    return jax.tree.map(
      lambda f, w: 0.5 * f * jnp.square(jnp.asarray(w, jnp.float32)), x.state.fisher, x.params
    )

  return scores_lib.Score(
    "fisher",
    fn,
    reads_grads=not per_example,
    extra_args=(SQUARED_GRADS,) if per_example else (),
    init=init,
    update=update,
  )


def fisher_pruning(
  sparsity: Sparsity | None = None,
  *,
  decay: float | None = None,
  per_example: bool = False,
  distribution: Distribution = "uniform",
  pattern: patterns_lib.Pattern | None = None,
  schedule: schedules_lib.Schedule | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, float] | None = None,
  packed_masks: bool = False,
  inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Prunes the weights of least Optimal Brain Damage saliency, with the empirical Fisher.

  OBD estimates the loss increase of removing ``w_k`` as ``1/2 h_kk w_k^2``; here ``h_kk`` is the
  diagonal empirical Fisher, averaged over training (`fisher_score`): the mean of the squared
  gradients, or of the squared per-example gradients with ``per_example=True``. The average is kept
  in the pruner's state and advanced at every update, so the scores at a mask update cover all the
  training so far.

  Args:
    sparsity: target fraction of pruned weights, in ``[0, 1)`` (``None`` with an N:M pattern).
    decay, per_example: see `fisher_score`.
    distribution, pattern, schedule, prune, overrides, packed_masks: as in
      `jaxprune.magnitude_pruning`.
    inner: the optimizer, wrapped; required unless ``per_example`` (the squared gradients are then
      passed in), since the Fisher reads the raw gradients.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a `jaxprune.PruningState` whose
    ``score_state`` is a `FisherState`.

  Raises:
    ValueError, TypeError: for bad arguments (see `jaxprune.pruning`), a missing ``inner``, or a
      missing ``squared_grads`` argument with ``per_example=True``.

  Example:
    >>> import jax.numpy as jnp, optax, jaxprune
    >>> params = {'w': jnp.array([[1.0, 2.0], [3.0, 1.0]])}
    >>> tx = jaxprune.fisher_pruning(
    ...     0.5, schedule=jaxprune.schedules.one_shot(1), inner=optax.sgd(0.0))
    >>> state = tx.init(params)
    >>> for g in ([[4.0, 1.0], [0.1, 4.0]], [[0.0, 1.0], [0.1, 4.0]]):  # h: [8, 1], [.01, 16]
    ...   _, state = tx.update({'w': jnp.array(g)}, state, params)
    >>> jaxprune.get_masks(state)['w']  # saliency h w^2 / 2: [4, 2], [.045, 8]
    Array([[ True, False],
           [False,  True]], dtype=bool)

  References:
    LeCun, Denker & Solla, `Optimal brain damage
    <https://proceedings.neurips.cc/paper/1989/hash/6c9882bbac1c7093bd25041881277658-Abstract.html>`_,
    NeurIPS 1989; Theis et al., `Faster gaze prediction with dense networks and Fisher pruning
    <https://arxiv.org/abs/1801.05787>`_, 2018
  """
  name = "fisher_pruning"
  score = fisher_score(decay=decay, per_example=per_example)
  if schedule is None:
    schedule = schedules_lib.one_shot(0)
  if not isinstance(schedule, schedules_lib.Schedule):
    raise TypeError(f"{name}: schedule must be a jaxprune.schedules.Schedule, got {schedule!r}.")
  check_bool("packed_masks", packed_masks, name)
  selection = plan_lib.make_selection(
    name,
    sparsity=sparsity,
    prune=prune,
    pattern=pattern,
    distribution=distribution,
    overrides=overrides,
  )
  method = engine.Method(
    name,
    score,
    sparsity,
    selection,
    schedule,
    needs_inner=None if per_example else "the Fisher estimate reads the raw gradients.",
    packed_masks=packed_masks,
  )
  return engine.transformation(method, inner)


def squared_gradients(
  loss_fn: Callable[..., jax.Array], params: Params, *batch: Any
) -> tuple[jax.Array, Params, Params]:
  """The mean loss, its gradient and the mean of the squared per-example gradients.

  ``loss_fn(params, *example)`` is the loss of one example (the arrays of ``batch`` without their
  leading axis); it is differentiated per example with ``jax.vmap``.

  Args:
    loss_fn: the loss of one example.
    params: the params.
    *batch: arrays with a leading batch axis.

  Returns:
    ``(loss, grads, squared_grads)``: the batch means of the loss, of the gradients and of their
    squares, for ``tx.update(grads, state, params, squared_grads=squared_grads)``.

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> loss = lambda p, x: p['w'] * x
    >>> _, g, g2 = jaxprune.fisher.squared_gradients(loss, {'w': jnp.array(1.0)}, jnp.array([1., 3.]))
    >>> g['w'], g2['w']  # per-example gradients 1 and 3
    (Array(2., dtype=float32), Array(5., dtype=float32))
  """
  losses, grads = jax.vmap(jax.value_and_grad(loss_fn), in_axes=(None,) + (0,) * len(batch))(
    params, *batch
  )
  mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
  squares = jax.tree.map(lambda g: jnp.mean(jnp.square(jnp.asarray(g, jnp.float32)), axis=0), grads)
  return jnp.mean(losses), mean, squares
