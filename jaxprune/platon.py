"""PLATON: prune by the upper confidence bound of each weight's importance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune import engine
from jaxprune import leaves as leaves_lib
from jaxprune import patterns as patterns_lib
from jaxprune import plan as plan_lib
from jaxprune import schedules as schedules_lib
from jaxprune import scores as scores_lib
from jaxprune.checks import check_bool, check_int, number
from jaxprune.typing import Distribution, Params, PathSelector, Sparsity

__all__ = ["PlatonState", "platon", "platon_score"]


class PlatonState(NamedTuple):
  """The running statistics of PLATON's score, each shaped like the params (float32).

  Attributes:
    window: the mean of ``|w * g|`` over the current window of updates.
    importance: ``I-bar``, the exponential average of the windows' means.
    uncertainty: ``U-bar``, the exponential average of ``|window - I-bar|``.
  """

  window: Params
  importance: Params
  uncertainty: Params


def platon_score(beta1: float = 0.85, beta2: float = 0.95, window: int = 10) -> scores_lib.Score:
  """PLATON's score ``I-bar * U-bar``, a score with state advanced at every update.

  At update ``t`` with ``j = t mod window``: when ``j == 0`` the last window's mean ``I`` enters the
  averages (``I-bar <- beta1 I-bar + (1 - beta1) I``, then ``U-bar <- beta2 U-bar + (1 - beta2)
  |I - I-bar|``) and a new window starts at ``|w * g|``; otherwise ``I <- (j I + |w * g|) / (j + 1)``.
  This is the authors' code's order (Pruner.py, ``update_ipt_with_local_window``), with ``w`` the
  weights before the step rather than after it.

  Args:
    beta1: the importance's averaging factor, in ``[0, 1)``.
    beta2: the uncertainty's averaging factor, in ``[0, 1)``.
    window: ``Delta T``, updates per window, at least 1.

  Returns:
    A `jaxprune.scores.Score` with a `PlatonState`; it reads gradients.

  Raises:
    ValueError, TypeError: for factors outside ``[0, 1)`` or a window below 1.

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> score = jaxprune.platon_score(beta1=0.5, beta2=0.5, window=1)
    >>> params, grads = {'w': jnp.array([2.0])}, {'w': jnp.array([3.0])}
    >>> state = score.init(params)
    >>> for t in range(3):  # I = 6 enters the averages from the second update on
    ...   state = score.update(state, jaxprune.scores.ScoreInputs(params, grads, t, state, {}))
    >>> state.importance['w'], state.uncertainty['w']  # 0.5*3 + 0.5*6; 0.5*1.5 + 0.5*|6 - 4.5|
    (Array([4.5], dtype=float32), Array([1.5], dtype=float32))
  """
  owner = "platon"
  for what, value in (("beta1", beta1), ("beta2", beta2)):
    v = number(value, f"{owner}: {what}")
    if v is not None and not 0.0 <= v < 1.0:
      raise ValueError(f"{owner}: {what} must be in [0, 1), got {value!r}.")
  window = check_int("window", window, 1, owner)

  def zeros(params: Params) -> Params:
    return jax.tree.map(lambda w: jnp.zeros(jnp.shape(w), jnp.float32), params)

  def init(params: Params) -> PlatonState:
    return PlatonState(zeros(params), zeros(params), zeros(params))

  def update(state: PlatonState, x: scores_lib.ScoreInputs) -> PlatonState:
    j = jnp.asarray(x.count, jnp.int32) % window
    start = j == 0
    b1 = jnp.asarray(beta1, jnp.float32)
    b2 = jnp.asarray(beta2, jnp.float32)

    def leaf(win, imp, unc, w, g):
      now = jnp.abs(jnp.asarray(w, jnp.float32) * jnp.asarray(g, jnp.float32))
      new_imp = jnp.where(start, b1 * imp + (1 - b1) * win, imp)
      new_unc = jnp.where(start, b2 * unc + (1 - b2) * jnp.abs(win - new_imp), unc)
      jf = j.astype(jnp.float32)
      new_win = jnp.where(start, now, (win * jf + now) / (jf + 1))
      return new_win, new_imp, new_unc

    out = jax.tree.map(leaf, state.window, state.importance, state.uncertainty, x.params, x.grads)
    treedef = jax.tree.structure(state.window)
    parts = leaves_lib.flatten_up_to(treedef, out)
    return PlatonState(*(jax.tree.unflatten(treedef, [p[k] for p in parts]) for k in range(3)))

  def fn(x: scores_lib.ScoreInputs) -> Params:
    return jax.tree.map(lambda i, u: i * u, x.state.importance, x.state.uncertainty)

  return scores_lib.Score("platon", fn, reads_grads=True, init=init, update=update)


def platon(
  sparsity: Sparsity,
  *,
  schedule: schedules_lib.Schedule,
  beta1: float = 0.85,
  beta2: float = 0.95,
  window: int = 10,
  distribution: Distribution = "global",
  pattern: patterns_lib.Pattern | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, float] | None = None,
  packed_masks: bool = False,
  inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """PLATON: gradual pruning by the upper confidence bound of the weights' importance.

  The importance of a weight is the sensitivity ``|w * g|``, averaged over windows of ``window``
  updates; PLATON keeps its exponential average ``I-bar`` and the exponential average ``U-bar`` of
  its deviation from it (`platon_score`), and keeps the weights of largest ``I-bar * U-bar``, by
  default with one threshold over all pruned leaves (the paper's global k-th value). Pruned weights
  are zero; a mask update may bring one back (its score then restarts from the averages), as in the
  authors' code, which recomputes every mask from the scores.

  The paper's schedule is the cubic ramp of the kept fraction between ``t_i`` and ``T - t_f``, with
  mask updates every ``window`` updates:
  ``jaxprune.schedules.polynomial(begin_step=t_i, end_step=T - t_f, frequency=window)``.

  Args:
    sparsity: target fraction of pruned weights, in ``[0, 1)``.
    schedule: when the masks change and to which sparsity (required: PLATON is gradual).
    beta1, beta2, window: see `platon_score` (the paper's 0.85, 0.95 and 10).
    distribution: ``"global"`` by default; any distribution of `jaxprune.magnitude_pruning`.
    pattern, prune, overrides, packed_masks: as in `jaxprune.magnitude_pruning`.
    inner: the optimizer, wrapped (required: the importance reads the raw gradients).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a `jaxprune.PruningState` whose
    ``score_state`` is a `PlatonState`.

  Raises:
    ValueError, TypeError: without ``inner``, for bad factors or window, and as
      `jaxprune.pruning`.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxprune
    >>> params = {'w': jax.random.normal(jax.random.key(0), (8, 8))}
    >>> tx = jaxprune.platon(0.75, inner=optax.sgd(0.01), window=2,
    ...     schedule=jaxprune.schedules.polynomial(begin_step=4, end_step=8, frequency=2))
    >>> state = tx.init(params)
    >>> for t in range(9):
    ...   grads = {'w': jax.random.normal(jax.random.key(t + 1), (8, 8))}
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> int((params['w'] == 0).sum())
    48

  References:
    Zhang et al., `PLATON: pruning large transformer models with upper confidence bound of weight
    importance <https://arxiv.org/abs/2206.12562>`_, ICML 2022
  """
  name = "platon"
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
    platon_score(beta1, beta2, window),
    sparsity,
    selection,
    schedule,
    monotone=False,
    needs_inner="the importance |w * g| reads the raw gradients.",
    packed_masks=packed_masks,
  )
  return engine.transformation(method, inner)
