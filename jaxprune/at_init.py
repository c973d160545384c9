"""Pruning at initialisation: SNIP, GraSP and SynFlow masks, and the per-leaf shuffle ablation.

Each function scores the weights of an initialised model and returns masks (a tree shaped like the
params, a boolean array per pruned leaf and ``None`` elsewhere) with exactly the requested sparsity,
ready for `jaxprune.static_sparse`::

    masks = jaxprune.snip(params, loss_fn, batch, sparsity=0.95)
    tx = jaxprune.static_sparse(masks=masks, inner=optax.sgd(0.1, momentum=0.9))

Selection is global by default (one threshold over all pruned leaves, as in the papers); layer-wise
(``"uniform"``), ER and ERK are available. Each warns when the masks it returns cut every path from
the input to the output or empty a whole leaf (see `jaxprune.collapse`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxprune import collapse as collapse_lib
from jaxprune import leaves as leaves_lib
from jaxprune import oneshot
from jaxprune import progress as progress_lib
from jaxprune import static as static_lib
from jaxprune.checks import JaxpruneWarning, check_sparsity
from jaxprune.typing import Distribution, Masks, Params, PathSelector, Scores, Shape, Sparsity

__all__ = ["grasp", "masks_from_scores", "prune_at_init", "shuffle_masks", "snip", "synflow"]


def _pruned_leaves(params: Params, prune: PathSelector, owner: str) -> list[int]:
  flags = leaves_lib.prunable_paths(params, prune, owner=owner)
  return [i for i, f in enumerate(flags) if f]


def masks_from_scores(
  params: Params,
  scores: Scores,
  sparsity: Sparsity,
  *,
  distribution: Distribution = "global",
  prune: PathSelector = None,
  keep: Masks | None = None,
  owner: str = "masks_from_scores",
) -> Masks:
  """Masks keeping the highest ``scores``, with exactly ``sparsity`` of the pruned leaves removed.

  `jaxprune.prune` with given scores and a global default. NaN scores (a float32 overflow in
  SynFlow) rank below every number but above ``-inf`` (see `jaxprune.selection`): such weights are
  pruned first, and never revive weights that ``keep`` prunes.

  Args:
    params: the params (for the tree structure and which leaves are pruned).
    scores: a tree shaped like the params (only the pruned leaves are read).
    sparsity: fraction of the pruned leaves' weights to remove, in ``[0, 1)``.
    distribution: ``"global"`` (default), ``"uniform"``, ``"erk"``, ``"er"`` or a function.
    prune: which leaves are pruned, as in `jaxprune.pruning` (kernels by default).
    keep: optional current masks; weights they prune stay pruned (iterative methods).
    owner: name used in error messages.

  Returns:
    The masks: a tree shaped like the params, ``None`` for leaves that are not pruned.

  Raises:
    ValueError: for a sparsity outside ``[0, 1)`` or NaN, or an unknown distribution.
  """
  return oneshot.prune(
    params, sparsity, scores=scores, distribution=distribution, prune=prune, keep=keep, name=owner
  )


def _finish(masks: Masks, owner: str, check: bool) -> Masks:
  if check:
    report = collapse_lib.layer_collapse(masks)
    if report.collapsed:
      warnings.warn(
        f"{owner}: the masks collapse the network: {report.describe()}",
        JaxpruneWarning,
        stacklevel=3,
      )
  return masks


def snip(
  params: Params,
  loss_fn: Callable[[Params, Any], jax.Array],
  batch: Any,
  sparsity: Sparsity,
  *,
  distribution: Distribution = "global",
  prune: PathSelector = None,
  check_collapse: bool = True,
) -> Masks:
  """SNIP: keep the weights of largest connection sensitivity ``|w * dL/dw|`` on one batch.

  Args:
    params: the initialised params.
    loss_fn: ``(params, batch) -> scalar loss`` (the model's apply function and the loss).
    batch: the batch the gradient is taken on.
    sparsity: fraction of the pruned leaves' weights to remove.
    distribution: ``"global"`` (the paper), ``"uniform"``, ``"erk"``, ``"er"`` or a function.
    prune: which leaves are pruned (kernels by default).
    check_collapse: warn if the masks cut the network (see `jaxprune.collapse.layer_collapse`).

  Returns:
    Masks shaped like the params, for `jaxprune.static_sparse`.

  Raises:
    ValueError: for a sparsity outside ``[0, 1)``.

  Example:
    >>> import jax, jax.numpy as jnp, jaxprune
    >>> params = {'w': jnp.array([[1.0, -2.0], [3.0, 0.5]])}
    >>> loss = lambda p, x: jnp.sum(x @ p['w'])
    >>> jaxprune.snip(params, loss, jnp.array([[1.0, 0.1]]), 0.5)['w']  # |w * x_i|
    Array([[ True,  True],
           [False, False]], dtype=bool)

  References:
    Lee, Ajanthan & Torr, `SNIP: single-shot network pruning based on connection sensitivity
    <https://arxiv.org/abs/1810.02340>`_, ICLR 2019
  """
  grads = jax.grad(loss_fn)(params, batch)
  scores = jax.tree.map(lambda w, g: jnp.abs(w * g), params, grads)
  masks = masks_from_scores(
    params, scores, sparsity, distribution=distribution, prune=prune, owner="snip"
  )
  return _finish(masks, "snip", check_collapse)


def grasp(
  params: Params,
  loss_fn: Callable[[Params, Any], jax.Array],
  batch: Any,
  sparsity: Sparsity,
  *,
  distribution: Distribution = "global",
  prune: PathSelector = None,
  check_collapse: bool = True,
) -> Masks:
  """GraSP: remove the weights whose removal least reduces the gradient flow.

  The score is ``-w * (H g)``, ``g`` the gradient of the loss on ``batch`` and ``H g`` its
  Hessian-vector product (forward-over-reverse differentiation); the highest scores are pruned.
  The authors' code divides the logits by a temperature of 200 inside the loss; pass such a
  ``loss_fn`` to do the same (on LeNet-300-100 / MNIST, temperature 1 left some seeds untrainable,
  see the README's pruning-at-initialisation results).

  Args:
    params, loss_fn, batch, sparsity, distribution, prune, check_collapse: as in `snip`.

  Returns:
    Masks shaped like the params.

  Raises:
    ValueError: for a sparsity outside ``[0, 1)``.

  References:
    Wang, Zhang & Grosse, `Picking winning tickets before training by preserving gradient flow
    <https://arxiv.org/abs/2002.07376>`_, ICLR 2020
  """
  grad_fn = jax.grad(loss_fn)
  grads = grad_fn(params, batch)
  _, hg = jax.jvp(lambda p: grad_fn(p, batch), (params,), (grads,))
  # Pruning the highest -w * Hg is keeping the highest w * Hg.
  scores = jax.tree.map(lambda w, h: w * h, params, hg)
  masks = masks_from_scores(
    params, scores, sparsity, distribution=distribution, prune=prune, owner="grasp"
  )
  return _finish(masks, "grasp", check_collapse)


def synflow(
  params: Params,
  apply_fn: Callable[[Params, jax.Array], Any],
  input_shape: Shape,
  sparsity: Sparsity,
  *,
  rounds: int = 100,
  distribution: Distribution = "global",
  prune: PathSelector = None,
  check_collapse: bool = True,
  progress: bool | None = None,
) -> Masks:
  """SynFlow: iterative synaptic-flow pruning, without data.

  Each round computes ``R = sum(apply_fn(|params * mask|, ones))``, the synaptic flow of an all-ones
  input through the network with absolute weights, scores ``|w * dR/dw|`` and prunes to the round's
  sparsity ``1 - (1 - sparsity) ** (r / rounds)`` (the exponential schedule), the masks applied
  between rounds. The score does not depend on any data. ``R`` is computed in float64 when x64 is
  enabled, else in float32, where deep networks can overflow: the scores are then NaN and those
  weights are never kept first (enable ``jax_enable_x64`` for such models).

  Batch norm: pass ``apply_fn`` in inference mode (``use_running_average=True`` / ``eval``) with
  the initial statistics, as the paper does, so that it is the identity followed by ``|scale|`` and
  ``|bias|``.

  Args:
    params: the initialised params.
    apply_fn: ``(params, inputs) -> outputs`` (e.g. ``lambda p, x: model.apply({'params': p}, x)``).
    input_shape: the shape of one input batch, e.g. ``(1, 28, 28, 1)``.
    sparsity: fraction of the pruned leaves' weights to remove.
    rounds: number of pruning rounds (100 in the paper).
    distribution, prune, check_collapse: as in `snip`.
    progress: a progress bar over the rounds on stderr (`jaxprune.progress`): ``None`` (default)
      shows one for 10 rounds or more when tqdm is installed (else INFO log lines to the
      ``"jaxprune"`` logger) and none under `jax.jit`, ``True`` always (a log line when traced),
      ``False`` never.

  Returns:
    Masks shaped like the params.

  Raises:
    ValueError: for a sparsity outside ``[0, 1)`` or ``rounds < 1``.
    TypeError: for a ``progress`` other than ``None``, ``True`` or ``False``.

  References:
    Tanaka, Kunin, Yamins & Ganguli, `Pruning neural networks without any data by iteratively
    conserving synaptic flow <https://arxiv.org/abs/2006.05467>`_, NeurIPS 2020
  """
  check_sparsity(sparsity, "synflow: sparsity")
  if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
    raise ValueError(f"synflow: rounds must be an int >= 1, got {rounds!r}.")
  progress_lib.check_enabled(progress, "synflow")
  dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float32 unless x64 is enabled
  leaves, treedef = jax.tree.flatten(leaves_lib.unwrap_variables(params))
  index = set(_pruned_leaves(params, prune, "synflow"))
  abs_params = jax.tree.unflatten(
    treedef,
    [
      jnp.abs(x).astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x
      for x in leaves
    ],
  )
  ones = jnp.ones(input_shape, dtype)

  @jax.jit
  def scores_of(masks):
    def flow(p):
      masked = jax.tree.unflatten(
        treedef,
        [
          jnp.where(m, x, 0) if m is not None else x
          for x, m in zip(
            leaves_lib.flatten_up_to(treedef, p), leaves_lib.flatten_up_to(treedef, masks)
          )
        ],
      )
      return jnp.sum(apply_fn(masked, ones))

    grads = jax.grad(flow)(abs_params)
    return jax.tree.map(lambda w, g: jnp.abs(w * g), abs_params, grads)

  masks = jax.tree.unflatten(
    treedef, [jnp.ones(jnp.shape(x), bool) if i in index else None for i, x in enumerate(leaves)]
  )
  steps = progress_lib.progress(
    range(1, rounds + 1), desc="synflow", unit="round", enabled=progress, arrays=(params, ones)
  )
  for r in steps:
    target = 1.0 - (1.0 - sparsity) ** (r / rounds)
    if r == rounds:
      target = sparsity  # exactly the requested count at the end
    masks = masks_from_scores(
      params,
      scores_of(masks),
      target,
      distribution=distribution,
      prune=prune,
      keep=masks,
      owner="synflow",
    )
  return _finish(masks, "synflow", check_collapse)


def shuffle_masks(masks: Masks, seed: int = 0) -> Masks:
  """The per-leaf shuffle ablation of Frankle et al. 2021: each leaf keeps its count of weights,
  at uniformly random positions.

  Args:
    masks: a tree of boolean masks (``None`` leaves are kept as they are).
    seed: the seed; leaf ``i`` uses ``fold_in(key(seed), i)``.

  Returns:
    Masks of the same shapes and per-leaf counts.

  References:
    Frankle, Dziugaite, Roy & Carbin, `Pruning neural networks at initialization: why are we
    missing the mark? <https://arxiv.org/abs/2009.08576>`_, ICLR 2021
  """
  leaves, treedef = jax.tree.flatten(masks)
  key = jax.random.key(seed)
  out = []
  for i, m in enumerate(leaves):
    m = jnp.asarray(m)
    flat = jax.random.permutation(jax.random.fold_in(key, i), m.reshape(-1))
    out.append(flat.reshape(m.shape))
  return jax.tree.unflatten(treedef, out)


def prune_at_init(
  params: Params,
  sparsity: Sparsity,
  *,
  method: str = "snip",
  loss_fn: Callable[[Params, Any], jax.Array] | None = None,
  batch: Any = None,
  apply_fn: Callable[[Params, jax.Array], Any] | None = None,
  input_shape: Shape | None = None,
  rounds: int = 100,
  distribution: Distribution = "global",
  prune: PathSelector = None,
  packed_masks: bool = False,
  check_collapse: bool = True,
  progress: bool | None = None,
  inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """From an initialised model to a pruned optimizer in one call: masks by ``method``, trained with
  `jaxprune.static_sparse`.

  Args:
    params: the initialised params.
    sparsity: fraction of the pruned leaves' weights to remove.
    method: ``"snip"``, ``"grasp"`` (both need ``loss_fn`` and ``batch``) or ``"synflow"`` (needs
      ``apply_fn`` and ``input_shape``).
    loss_fn, batch: as in `snip`.
    apply_fn, input_shape, rounds: as in `synflow`.
    distribution, prune, check_collapse: as in `snip`.
    packed_masks: store the masks as bits.
    progress: as in `synflow` (SNIP and GraSP take one gradient and show none).
    inner: the optimizer to train with.

  Returns:
    ``static_sparse(masks=..., inner=inner)``; ``jaxprune.get_masks(tx.init(params))`` gives the
    masks.

  Raises:
    ValueError: for an unknown method or missing inputs, and as `snip` / `synflow`.
    TypeError: for a ``progress`` other than ``None``, ``True`` or ``False``.

  Example:
    >>> import jax.numpy as jnp, optax, jaxprune
    >>> params = {'w': jnp.array([[1.0, -2.0], [3.0, 0.5]])}
    >>> tx = jaxprune.prune_at_init(params, 0.5, loss_fn=lambda p, x: jnp.sum(x @ p['w']),
    ...                             batch=jnp.array([[1.0, 0.1]]), inner=optax.sgd(0.1))
    >>> jaxprune.get_masks(tx.init(params))['w']
    Array([[ True,  True],
           [False, False]], dtype=bool)
  """
  progress_lib.check_enabled(progress, "prune_at_init")
  if method in ("snip", "grasp"):
    if loss_fn is None or batch is None:
      raise ValueError(f"prune_at_init: method {method!r} needs loss_fn and batch.")
    masks = (snip if method == "snip" else grasp)(
      params,
      loss_fn,
      batch,
      sparsity,
      distribution=distribution,
      prune=prune,
      check_collapse=check_collapse,
    )
  elif method == "synflow":
    if apply_fn is None or input_shape is None:
      raise ValueError("prune_at_init: method 'synflow' needs apply_fn and input_shape.")
    masks = synflow(
      params,
      apply_fn,
      input_shape,
      sparsity,
      rounds=rounds,
      distribution=distribution,
      prune=prune,
      check_collapse=check_collapse,
      progress=progress,
    )
  else:
    raise ValueError(f"prune_at_init: method must be 'snip', 'grasp' or 'synflow', got {method!r}.")
  return static_lib.static_sparse(masks=masks, packed_masks=packed_masks, inner=inner)
