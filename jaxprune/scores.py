"""Scores: how important each weight is. Higher scores are kept.

A score is a `Score` declaration: a function of `ScoreInputs` that returns a tree of scores shaped
like the params (only the pruned leaves' scores are read), and what it reads:

- ``params`` always; ``grads`` only if ``reads_grads`` (the raw gradients when the pruner wraps the
  optimizer with ``inner=``, the incoming updates when it is the last link of a chain);
- ``extra_args``: names of extra arguments of ``tx.update(..., name=value)`` it needs (activation
  statistics, for example); a missing one is an error that names it;
- its own ``state``, carried in the pruner's state (``score_state``): ``init(params)`` builds it and
  ``update(state, inputs)`` advances it at every update, so that running statistics (movement,
  Fisher, PLATON) need no loop of their own.

The pruner calls the score only on mask-update steps; a stateful score's ``update`` runs at every
step. A plain function ``(params, grads, count) -> scores`` is accepted wherever a score is
(`from_function`), read as a score that reads gradients. Scores are callable for direct use:
``jaxprune.scores.magnitude(params)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxprune.typing import ArrayLike, Params, Scores, Updates

__all__ = [
  "Score",
  "ScoreInputs",
  "ScoreFn",
  "as_score",
  "from_function",
  "magnitude",
  "movement",
  "random",
  "saliency",
]

ScoreFn = Callable[[Params, Updates, jax.Array], Scores]
"""The plain-function form: ``(params, grads, count) -> scores``."""


class ScoreInputs(NamedTuple):
  """What a score function reads.

  Attributes:
    params: the params (plain arrays).
    grads: the gradients (or incoming updates, see the module docstring); ``None`` unless the score
      reads gradients.
    count: the pruner's update count (int32 scalar).
    state: the score's own state (``None`` for stateless scores), already advanced by this update.
    extra: the declared extra arguments of ``update``, by name.
    pruned: the indices (in ``jax.tree.leaves(params)`` order) of the leaves the pruner prunes, or
      ``None`` when unknown (a score called directly): scores whose value depends on the set of
      pruned leaves (a mean over layers) read it.
  """

  params: Params
  grads: Updates | None
  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax states do
  state: Any
  extra: Mapping[str, Any]
  pruned: tuple[int, ...] | None = None


class Score(NamedTuple):
  """A score declaration (see the module docstring).

  Attributes:
    name: the score's name, for messages.
    fn: ``ScoreInputs -> scores``, a tree shaped like the params.
    reads_grads: whether ``fn`` (or ``update``) reads ``grads``.
    extra_args: the names of the extra update arguments it needs.
    init: ``params -> state`` for a score with state, else ``None``.
    update: ``(state, ScoreInputs) -> state``, run at every update, else ``None``.
    channel_fn: ``(ScoreInputs, groups) -> scores``: one float32 array of length ``group.size`` per
      `jaxprune.structured.ChannelGroup` of the selection (``jaxprune.structured.importance``), or
      ``None``. When given, channel groups are scored by it; otherwise (and for every other unit)
      by ``fn``'s scores, averaged over each channel's positions and summed over members.
    entry: ``(param, grad) -> score``, the same score as ``fn`` computed elementwise on any piece
      of one leaf and its gradient (``grad`` is ``None`` unless ``reads_grads``), or ``None``.
      When given, the pruners compute the scores of unstructured leaves a piece at a time inside
      the selection (`jaxprune.selection.Streamed`) instead of materialising them: the mask update
      then needs memory for a few pieces, not for a copy of the params.
  """

  name: str
  fn: Callable[[ScoreInputs], Scores]
  reads_grads: bool = False
  extra_args: tuple[str, ...] = ()
  init: Callable[[Params], Any] | None = None
  update: Callable[[Any, ScoreInputs], Any] | None = None
  channel_fn: Callable[[ScoreInputs, Sequence[Any]], Sequence[jax.Array]] | None = None
  entry: Callable[[jax.Array, Any], jax.Array] | None = None

  def __call__(
    self,
    params: Params,
    grads: Updates | None = None,
    count: ArrayLike = 0,
    *,
    state: Any = None,
    **extra: Any,
  ) -> Scores:
    """The scores of ``params`` (for direct use, outside a pruner)."""
    if self.init is not None and state is None:
      state = self.init(params)
    inputs = ScoreInputs(params, grads, jnp.asarray(count, jnp.int32), state, extra)
    if self.update is not None:
      inputs = inputs._replace(state=self.update(state, inputs))
    return self.fn(inputs)


def from_function(fn: ScoreFn, *, name: str | None = None, reads_grads: bool = True) -> Score:
  """A `Score` from a plain function ``(params, grads, count) -> scores``.

  Args:
    fn: the function.
    name: its name in messages (the function's name by default).
    reads_grads: whether it reads ``grads``; unknown for a plain function, so ``True`` by default.

  Returns:
    The declaration.
  """
  return Score(
    name or str(getattr(fn, "__name__", "score")),
    lambda x: fn(x.params, x.grads, x.count),
    reads_grads=reads_grads,
  )


def as_score(score: Score | ScoreFn, owner: str) -> Score:
  """``score`` as a `Score` (plain functions through `from_function`); ``TypeError`` otherwise."""
  if isinstance(score, Score):
    return score
  if callable(score):
    return from_function(score)
  raise TypeError(
    f"{owner}: score must be a jaxprune.scores.Score or a function (params, grads, "
    f"count) -> scores, got {score!r}."
  )


def _f32(x: jax.Array) -> jax.Array:
  return x.astype(jnp.float32)


def _abs(w: jax.Array, g: Any = None) -> jax.Array:
  del g
  return jnp.abs(_f32(w))


def _abs_product(w: jax.Array, g: jax.Array) -> jax.Array:
  return jnp.abs(_f32(w) * _f32(g))


magnitude = Score("magnitude", lambda x: jax.tree.map(_abs, x.params), entry=_abs)
"""``|w|``: magnitude pruning (Han et al. 2015, Zhu & Gupta 2017)."""

saliency = Score(
  "saliency",
  lambda x: jax.tree.map(_abs_product, x.params, x.grads),
  reads_grads=True,
  entry=_abs_product,
)
"""``|w * g|``: first-order Taylor estimate of the loss change when ``w`` is removed.

References:
  Molchanov et al., `Importance estimation for neural network pruning
  <https://arxiv.org/abs/1906.10771>`_, 2019; Lee et al., `SNIP <https://arxiv.org/abs/1810.02340>`_,
  2019
"""


def random(seed: int | jax.Array = 0) -> Score:
  """Uniform random scores, a fresh draw at every mask update, reproducible from ``seed``.

  Leaf ``i`` at update count ``t`` draws from ``fold_in(fold_in(key(seed), t), i)``, so the draw does
  not depend on how the params are sharded.

  Args:
    seed: integer seed (a Python int, or an integer scalar array under ``inject_hyperparams``).

  Returns:
    A `Score`.

  Raises:
    TypeError: for a seed that is not an integer.

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> s = jaxprune.scores.random(0)({'w': jnp.zeros((2, 3))})
    >>> s['w'].shape
    (2, 3)
  """
  if isinstance(seed, bool) or not (
    isinstance(seed, int)
    or (hasattr(seed, "dtype") and jnp.issubdtype(seed.dtype, jnp.integer) and jnp.ndim(seed) == 0)
  ):
    raise TypeError(f"random: seed must be an int, got {seed!r}.")

  def fn(x: ScoreInputs) -> Scores:
    key = jax.random.fold_in(jax.random.key(seed), x.count)
    leaves, treedef = jax.tree.flatten(x.params)
    drawn = [
      jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(leaf))
      for i, leaf in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, drawn)

  return Score("random", fn)


def movement() -> Score:
  """Movement: ``-sum_t w_t * g_t``, accumulated over every update (a score with state).

  Weights moving away from zero score high, weights moving towards zero low, whatever their
  magnitude. The running sum is the score's state in the pruner's state, advanced at every update.
  Read ``grads`` as the raw gradients: use the pruner with ``inner=``.

  Returns:
    A `Score` with state.

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> score = jaxprune.scores.movement()
    >>> score({'w': jnp.array([1.0, -2.0])}, {'w': jnp.array([0.5, 0.5])})['w']
    Array([-0.5,  1. ], dtype=float32)

  References:
    Sanh, Wolf & Rush, `Movement pruning: adaptive sparsity by fine-tuning
    <https://arxiv.org/abs/2005.07683>`_, NeurIPS 2020
  """

  def init(params: Params) -> Scores:
    return jax.tree.map(lambda w: jnp.zeros(jnp.shape(w), jnp.float32), params)

  def update(state: Scores, x: ScoreInputs) -> Scores:
    return jax.tree.map(lambda s, w, g: s - _f32(w) * _f32(g), state, x.params, x.grads)

  return Score("movement", lambda x: x.state, reads_grads=True, init=init, update=update)
