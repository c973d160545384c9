"""Sparse connectivity learning (SCL): a binary mask per weight, learned through an identity STE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxprune import engine, learned, rules
from jaxprune import plan as plan_lib
from jaxprune import schedules as schedules_lib
from jaxprune.checks import check_bool, number
from jaxprune.typing import PathSelector

__all__ = ["scl"]

_EPS = 1e-12


def _per_feature(g: jax.Array) -> jax.Array:
  """``g`` divided, for each index of its last axis (an output feature), by its root mean square
  over the other axes: every feature's mask gradient gets the same scale."""
  if jnp.ndim(g) < 2:
    return g / (jnp.sqrt(jnp.mean(jnp.square(g))) + _EPS)
  axes = tuple(range(jnp.ndim(g) - 1))
  return g / (jnp.sqrt(jnp.mean(jnp.square(g), axis=axes, keepdims=True)) + _EPS)


def scl(
  *,
  regularization: float = 0.5,
  init_value: float = 1.0,
  normalize: bool = True,
  mask_optimizer: optax.GradientTransformation | None = None,
  schedule: schedules_lib.Schedule | None = None,
  prune: PathSelector = None,
  packed_masks: bool = False,
  inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Sparse connectivity learning: the network learns its own binary masks, and their number.

  Each pruned weight is ``w = v * step(m)``, with ``v`` the dense weight and ``m`` a mask variable in
  the pruner's state (``m > 0``: kept). ``m`` is trained by ``mask_optimizer`` with the identity
  straight-through estimator of the step (``d step / d m := 1``): its gradient is ``g * v`` (``g``
  the gradient with respect to the masked weight), normalised per output feature (its root mean
  square over the feature's weights set to 1: the paper's balancing of the features' mask
  gradients), plus ``regularization``, the gradient of ``regularization * (number of
  connections)``. The sparsity is learned: larger ``regularization``, sparser network. Pruned
  weights are frozen until their mask comes back; the forward pass applies the masks with
  ``jaxprune.ephemeral.masked_params``.

  The paper gives the normalisation and the regulariser in words; the exact normalisation (per
  output feature, by the root mean square), the initial value and the default optimizer are this
  library's choices.

  Args:
    regularization: ``lambda``, the cost of one connection relative to a normalised mask gradient,
      at least 0.
    init_value: the initial ``m`` of every weight (positive: every weight starts kept).
    normalize: normalise the mask gradients per output feature (the last axis).
    mask_optimizer: trains ``m`` (default ``optax.sgd(1e-2)``).
    schedule: when the masks are recomputed from ``m`` (every update by default).
    prune, packed_masks: as in `jaxprune.magnitude_pruning`.
    inner: the optimizer of the weights, wrapped (required: the masks read the raw gradients).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a `jaxprune.PruningState` whose
    ``score_state`` is a `jaxprune.learned.LearnedState` holding ``m``.

  Raises:
    ValueError: without ``inner``, for a negative ``regularization`` or a ``init_value`` that is
      not positive.
    TypeError: for arguments of the wrong type.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxprune
    >>> params = {'w': jnp.array([[1.0, 1.0], [1.0, 1.0]])}
    >>> tx = jaxprune.scl(regularization=0.0, init_value=0.1, normalize=False,
    ...                   mask_optimizer=optax.sgd(1.0), inner=optax.sgd(0.0))
    >>> state = tx.init(params)
    >>> grads = {'w': jnp.array([[0.5, -0.5], [0.0, 0.2]])}
    >>> _, state = tx.update(grads, state, params)
    >>> jaxprune.get_masks(state)['w']  # m = 0.1 - g * w
    Array([[False,  True],
           [ True, False]], dtype=bool)

  References:
    Tang et al., `Automatic sparse connectivity learning for neural networks
    <https://arxiv.org/abs/2201.05020>`_, IEEE TNNLS 2023
  """
  name = "scl"
  lam = number(regularization, f"{name}: regularization")
  if lam is not None and not lam >= 0.0:
    raise ValueError(f"{name}: regularization must be a number >= 0, got {regularization!r}.")
  start = number(init_value, f"{name}: init_value")
  if start is not None and not start > 0.0:
    raise ValueError(f"{name}: init_value must be positive (every weight starts kept), got "
                     f"{init_value!r}.")  # fmt: skip
  check_bool("normalize", normalize, name)
  check_bool("packed_masks", packed_masks, name)
  if schedule is None:
    schedule = schedules_lib.periodic(0, None, 1)
  if not isinstance(schedule, schedules_lib.Schedule):
    raise TypeError(f"{name}: schedule must be a jaxprune.schedules.Schedule, got {schedule!r}.")
  optimizer = optax.sgd(1e-2) if mask_optimizer is None else mask_optimizer

  def gradient(values, x):
    leaves, treedef = jax.tree.flatten(values)
    out = []
    for m, gw, is_pruned in zip(leaves, learned.masked_gradient(x), learned.pruned_leaves(x)):
      if not is_pruned:
        out.append(jnp.zeros_like(m))
        continue
      g = _per_feature(gw) if normalize else gw
      out.append(g + jnp.asarray(regularization, jnp.float32))
    return jax.tree.unflatten(treedef, out)

  score = learned.learned_score(
    name, init_value=init_value, gradient=gradient, margin=lambda m, _: m, optimizer=optimizer
  )
  method = engine.Method(
    name,
    score,
    None,
    plan_lib.make_selection(name, sparsity=0.0, prune=prune),
    schedule,
    rule=rules.threshold,
    application="ephemeral",
    needs_inner="the mask variables are trained from the raw gradients.",
    packed_masks=packed_masks,
    train_pruned=False,
  )
  return engine.transformation(method, inner)
