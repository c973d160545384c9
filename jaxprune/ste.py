"""Straight-through training: magnitude masks in the forward pass, dense weights trained (STE, SR-STE).

The weights stay dense. Each update recomputes the magnitude masks of the weights after the step,
the model applies them in its forward pass (`jaxprune.ephemeral.masked_params`), and the gradient
of the masked weights reaches every dense weight unchanged (the straight-through estimator), so a
pruned weight that grows back above its group's threshold is kept again. The deployed model is
``jaxprune.apply_masks(params, jaxprune.get_masks(opt_state))``: exactly the target sparsity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import optax

from jaxprune import engine, scores
from jaxprune import patterns as patterns_lib
from jaxprune import plan as plan_lib
from jaxprune import schedules as schedules_lib
from jaxprune.checks import check_bool, check_int, number
from jaxprune.typing import Distribution, PathSelector, Sparsity

__all__ = ["sr_ste", "ste_pruning"]


def _every_update(schedule: schedules_lib.Schedule | None, owner: str) -> schedules_lib.Schedule:
  if schedule is None:
    return schedules_lib.periodic(0, None, 1)
  if not isinstance(schedule, schedules_lib.Schedule):
    raise TypeError(f"{owner}: schedule must be a jaxprune.schedules.Schedule, got {schedule!r}.")
  return schedule


def ste_pruning(
  sparsity: Sparsity | None = None,
  *,
  distribution: Distribution = "uniform",
  pattern: patterns_lib.Pattern | None = None,
  schedule: schedules_lib.Schedule | None = None,
  prune: PathSelector = None,
  overrides: Mapping[str, float] | None = None,
  packed_masks: bool = False,
  inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Magnitude masks applied in the forward pass only, with a straight-through gradient (STE).

  The weights stay dense and every one of them trains. At each mask update (every update by
  default) the masks become the magnitude masks of the weights after the step, so the masks the
  forward pass applies with ``jaxprune.ephemeral.masked_params(params, opt_state)`` are always
  those of the current weights. Pruned weights can come back.

  Args:
    sparsity: target fraction of pruned weights, in ``[0, 1)`` (``None`` with an N:M pattern).
    distribution, pattern, prune, overrides, packed_masks, inner: as in
      `jaxprune.magnitude_pruning`.
    schedule: when the masks are recomputed and to which sparsity; by default at every update, at
      the target (``jaxprune.schedules.periodic(0, None, 1)``). A ``polynomial`` schedule ramps the
      sparsity up; after its ``end_step`` the masks stay fixed.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a `jaxprune.PruningState`.

  Raises:
    ValueError, TypeError: for bad arguments; see `jaxprune.pruning`.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxprune
    >>> params = {'w': jnp.array([[1.0, -2.0], [0.5, 3.0]])}
    >>> tx = optax.chain(optax.sgd(1.0), jaxprune.ste_pruning(0.5))
    >>> state = tx.init(params)
    >>> grads = {'w': jnp.array([[0.0, 0.0], [-4.0, 0.0]])}  # pushes 0.5 to 4.5
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)  # dense: nothing is zeroed
    >>> jaxprune.get_masks(state)['w']  # the masks of the new weights
    Array([[False, False],
           [ True,  True]], dtype=bool)
    >>> jaxprune.ephemeral.masked_params(params, state)['w']  # what the forward pass sees
    Array([[0. , 0. ],
           [4.5, 3. ]], dtype=float32)

  References:
    Bengio, Léonard & Courville, `Estimating or propagating gradients through stochastic neurons
    <https://arxiv.org/abs/1308.3432>`_, 2013; Zhou et al., `Learning N:M fine-grained structured
    sparse neural networks from scratch <https://arxiv.org/abs/2102.04010>`_, ICLR 2021
  """
  name = "ste_pruning"
  selection = plan_lib.make_selection(
    name,
    sparsity=sparsity,
    prune=prune,
    pattern=pattern,
    distribution=distribution,
    overrides=overrides,
  )
  check_bool("packed_masks", packed_masks, name)
  method = engine.Method(
    name,
    scores.magnitude,
    sparsity,
    selection,
    _every_update(schedule, name),
    application="ephemeral",
    packed_masks=packed_masks,
  )
  return engine.transformation(method, inner)


def sr_ste(
  n: int,
  m: int,
  *,
  decay: float = 2e-4,
  axis: int = -2,
  schedule: schedules_lib.Schedule | None = None,
  prune: PathSelector = None,
  packed_masks: bool = False,
  inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """SR-STE: N:M masks in the forward pass, with the sparse-refined decay of the pruned weights.

  Straight-through N:M training (`ste_pruning` with ``pattern=jaxprune.patterns.n_m(n, m)``) whose
  gradient gets the sparse-refined term: the optimizer is fed ``g + decay * (1 - M) * w``, where
  ``g`` is the gradient with respect to the masked weights and ``M`` the mask of the forward pass,
  so the pruned weights decay towards zero and the masks settle (the paper's update
  ``w <- w - lr (g + decay (1 - M) w)`` for SGD).

  Args:
    n: weights kept in each group of ``m``.
    m: group size, along ``axis`` (the input axis of a Flax kernel by default).
    decay: ``lambda_w``, the decay of the pruned weights (the paper's 2e-4).
    axis: the axis of the groups (see `jaxprune.patterns.n_m`).
    schedule: as in `ste_pruning` (every update by default).
    prune, packed_masks: as in `jaxprune.magnitude_pruning`.
    inner: the optimizer, wrapped: the decay term is added to its gradient (required).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a `jaxprune.PruningState`.

  Raises:
    ValueError: without ``inner``, for a negative or NaN ``decay``, or an N:M pattern that does
      not fit (see `jaxprune.patterns.n_m`).
    TypeError: for a ``decay`` that is not a number.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxprune
    >>> params = {'w': jnp.array([[1.0], [-2.0], [0.5], [3.0]])}
    >>> tx = jaxprune.sr_ste(2, 4, decay=0.5, inner=optax.sgd(1.0))
    >>> state = tx.init(params)  # the first step's masks keep everything
    >>> updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    >>> -updates['w']  # lr * decay * w for the two pruned weights, 0 for the kept ones
    Array([[0.5 ],
           [0.  ],
           [0.25],
           [0.  ]], dtype=float32)

  References:
    Zhou et al., `Learning N:M fine-grained structured sparse neural networks from scratch
    <https://arxiv.org/abs/2102.04010>`_, ICLR 2021
  """
  name = "sr_ste"
  n = check_int("n", n, 1, name)
  m = check_int("m", m, 1, name)
  value = number(decay, f"{name}: decay")
  if value is not None and not value >= 0:
    raise ValueError(f"{name}: decay must be a number >= 0, got {decay!r}.")
  selection = plan_lib.make_selection(
    name, sparsity=None, prune=prune, pattern=patterns_lib.n_m(n, m, axis=axis)
  )
  check_bool("packed_masks", packed_masks, name)

  def gradients(info: engine.StepInfo, fields: Any, grads: list[Any]) -> list[Any]:
    del fields
    out = list(grads)
    for i, mask in info.masks.items():
      w = info.params[i]
      pruned = jnp.where(mask, jnp.zeros((), w.dtype), w).astype(out[i].dtype)
      out[i] = out[i] + jnp.asarray(decay, out[i].dtype) * pruned
    return out

  method = engine.Method(
    name,
    scores.magnitude,
    None,
    selection,
    _every_update(schedule, name),
    application="ephemeral",
    needs_inner="the decay term is added to the gradient that the optimizer receives.",
    packed_masks=packed_masks,
    hooks=engine.Hooks(gradients=gradients),
  )
  return engine.transformation(method, inner)
