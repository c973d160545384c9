"""Movement pruning: keep the weights moving away from zero during fine-tuning (hard and soft)."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from jaxprune import engine, learned, rules, scores
from jaxprune import patterns as patterns_lib
from jaxprune import plan as plan_lib
from jaxprune import schedules as schedules_lib
from jaxprune.checks import check_bool, number
from jaxprune.typing import Distribution, PathSelector, Sparsity

__all__ = ["movement_pruning"]

VARIANTS = ("hard", "soft")


def _soft_score(
  threshold: float,
  regularization: float,
  schedule: schedules_lib.Schedule,
  optimizer: optax.GradientTransformation,
) -> scores.Score:
  """Soft movement's learned scores ``S``: masks ``sigmoid(S) > tau_t``, the regulariser
  ``lambda_t * mean over pruned leaves of mean(sigmoid(S))`` with ``lambda_t = lambda tau_t / tau``."""

  def level(count):
    return jnp.asarray(schedule.sparsity(count, threshold), jnp.float32)

  def gradient(values, x):
    pruned = learned.pruned_leaves(x)
    num_pruned = max(sum(pruned), 1)
    weight = jnp.asarray(regularization, jnp.float32) * level(x.count) / threshold / num_pruned
    leaves, treedef = jax.tree.flatten(values)
    out = []
    for s, gw, is_pruned in zip(leaves, learned.masked_gradient(x), pruned):
      if not is_pruned:
        out.append(jnp.zeros_like(s))
        continue
      sig = jax.nn.sigmoid(s)
      out.append(gw + weight * sig * (1.0 - sig) / s.size)
    return jax.tree.unflatten(treedef, out)

  def margin(values, count):
    return jax.tree.map(lambda s: jax.nn.sigmoid(s) - level(count), values)

  return learned.learned_score(
    "soft_movement", init_value=0.0, gradient=gradient, margin=margin, optimizer=optimizer
  )


def movement_pruning(
  sparsity: Sparsity | None = None,
  *,
  variant: str = "hard",
  distribution: Distribution = "uniform",
  pattern: patterns_lib.Pattern | None = None,
  schedule: schedules_lib.Schedule | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, float] | None = None,
  threshold: float = 0.1,
  regularization: float = 400.0,
  score_optimizer: optax.GradientTransformation | None = None,
  packed_masks: bool = False,
  inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Movement pruning: masks from how the weights move during training, not from their size.

  The weights stay dense; the forward pass applies the masks with
  ``jaxprune.ephemeral.masked_params(params, opt_state)`` (straight-through gradient), and a pruned
  weight is frozen at its value (its gradient is masked) until the scores bring it back.

  - ``variant="hard"``: the score of a weight is ``S = -sum_t w_t * g_t`` over every update (``g``
    the gradient with respect to the masked weight), high for weights moving away from zero; each
    mask update keeps the top ``1 - sparsity`` of ``S`` (per leaf by default, any distribution and
    pattern of the library).
  - ``variant="soft"``: ``S`` is learned by ``score_optimizer`` from the gradient ``g * w`` plus a
    regulariser ``lambda_t * mean over the pruned leaves of mean(sigmoid(S))``; a weight is kept
    while ``sigmoid(S) > tau_t``. ``tau_t`` follows the schedule's ramp from 0 to ``threshold``
    (as a sparsity would: cubic for ``jaxprune.schedules.polynomial``) and
    ``lambda_t = regularization * tau_t / threshold``. The sparsity is whatever the regulariser
    makes it: ``sparsity`` must be ``None``.

  Args:
    sparsity: target fraction of pruned weights (hard), ``None`` for soft.
    variant: ``"hard"`` or ``"soft"``.
    distribution, pattern, prune, overrides: as in `jaxprune.magnitude_pruning` (hard only; soft
      takes ``prune``).
    schedule: when the masks are recomputed (and, hard, to which sparsity; soft: the ramp of
      ``tau``); every update at the target by default. The paper's cubic schedule is
      ``jaxprune.schedules.polynomial(begin_step, end_step, frequency=1)``.
    threshold: soft: the final ``tau`` in ``(0, 1)`` (the paper's 0.1 on SQuAD).
    regularization: soft: the final ``lambda`` (the paper's 400), at least 0.
    score_optimizer: soft: trains ``S`` (default ``optax.adam(1e-2)``, the paper's score learning
      rate; every ``S`` starts at 0).
    packed_masks: keep masks as bits in the state.
    inner: the optimizer, wrapped (required: the scores read the raw gradients).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a `jaxprune.PruningState` whose
    ``score_state`` holds ``S`` (soft: a `jaxprune.learned.LearnedState`).

  Raises:
    ValueError: without ``inner``; for an unknown variant, a soft variant with a sparsity, a
      ``threshold`` outside ``(0, 1)`` or a negative ``regularization``; and as
      `jaxprune.pruning`.
    TypeError: for arguments of the wrong type.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxprune
    >>> params = {'w': jnp.array([[1.0, -1.0], [2.0, 0.5]])}
    >>> tx = jaxprune.movement_pruning(0.5, inner=optax.sgd(0.1))
    >>> state = tx.init(params)
    >>> grads = {'w': jnp.array([[-1.0, -1.0], [1.0, -2.0]])}  # w * g: -1, 1, 2, -1
    >>> updates, state = tx.update(grads, state, params)
    >>> jaxprune.get_masks(state)['w']  # kept: moving away from zero
    Array([[ True, False],
           [False,  True]], dtype=bool)

  References:
    Sanh, Wolf & Rush, `Movement pruning: adaptive sparsity by fine-tuning
    <https://arxiv.org/abs/2005.07683>`_, NeurIPS 2020
  """
  name = "movement_pruning"
  if variant not in VARIANTS:
    raise ValueError(f"{name}: variant must be one of {VARIANTS}, got {variant!r}.")
  check_bool("packed_masks", packed_masks, name)
  if schedule is None:
    schedule = schedules_lib.periodic(0, None, 1)
  if not isinstance(schedule, schedules_lib.Schedule):
    raise TypeError(f"{name}: schedule must be a jaxprune.schedules.Schedule, got {schedule!r}.")
  needs = "the movement scores read the raw gradients."
  if variant == "hard":
    selection = plan_lib.make_selection(
      name,
      sparsity=sparsity,
      prune=prune,
      pattern=pattern,
      distribution=distribution,
      overrides=overrides,
    )
    score, rule = scores.movement(), rules.prune
  else:
    if sparsity is not None:
      raise ValueError(
        f"{name}: the soft variant learns its sparsity (threshold and regularization set it); "
        f"pass sparsity=None, got {sparsity!r}."
      )
    if pattern is not None or overrides or distribution != "uniform":
      raise ValueError(
        f"{name}: the soft variant keeps single weights by their own scores; it takes no "
        "pattern, overrides or distribution."
      )
    tau = number(threshold, f"{name}: threshold")
    if tau is not None and not 0.0 < tau < 1.0:
      raise ValueError(f"{name}: threshold must be a number in (0, 1), got {threshold!r}.")
    lam = number(regularization, f"{name}: regularization")
    if lam is not None and not lam >= 0.0:
      raise ValueError(f"{name}: regularization must be a number >= 0, got {regularization!r}.")
    optimizer = optax.adam(1e-2) if score_optimizer is None else score_optimizer
    selection = plan_lib.make_selection(name, sparsity=0.0, prune=prune)
    score, rule = _soft_score(threshold, regularization, schedule, optimizer), rules.threshold
  method = engine.Method(
    name,
    score,
    sparsity,
    selection,
    schedule,
    rule=rule,
    application="ephemeral",
    needs_inner=needs,
    packed_masks=packed_masks,
    train_pruned=False,
  )
  return engine.transformation(method, inner)
