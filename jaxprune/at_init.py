"""Pruning at initialisation: SNIP, GraSP, SynFlow and ProsPr masks, and the shuffle ablation.

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
from jaxprune.checks import JaxpruneWarning, check_bool, check_int, check_sparsity, number
from jaxprune.typing import Distribution, Masks, Params, PathSelector, Scores, Shape, Sparsity

__all__ = [
  "grasp",
  "masks_from_scores",
  "prospr",
  "prospr_scores",
  "prune_at_init",
  "shuffle_masks",
  "snip",
  "synflow",
]


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


def _inner_batches(batches: Any, steps: int, owner: str) -> tuple[list[Any], Any]:
  """The batches of the inner steps and of the meta-loss."""
  if isinstance(batches, list):
    if len(batches) != steps + 1:
      raise ValueError(
        f"{owner}: a list of batches needs steps + 1 = {steps + 1} (one per inner step, then the "
        f"one of the meta-loss), got {len(batches)}; pass a single batch (not a list) to use it "
        "for every step."
      )
    return batches[:steps], batches[steps]
  return [batches] * steps, batches


def prospr_scores(
  params: Params,
  loss_fn: Callable[[Params, Any], jax.Array],
  batches: Any,
  *,
  steps: int = 3,
  lr: float,
  momentum: float = 0.0,
  first_order: bool = False,
  prune: PathSelector = None,
) -> Scores:
  """ProsPr's scores: the magnitude of the meta-gradient ``|dL(w_M) / dc|`` at ``c = 1``.

  Every pruned leaf is multiplied by a mask ``c`` of ones, ``w_0 = c * w``; ``steps`` steps of
  SGD (with ``momentum``, PyTorch's form: ``b = momentum * b + g``, ``w -= lr * b``) train all the
  floating-point leaves on the inner batches; the score of a weight is the magnitude of the
  derivative of the loss after those steps, on the last batch, with respect to its mask entry,
  differentiated through the steps (second order). With ``steps=0`` it is SNIP's ``|w dL/dw|``;
  with ``first_order=True`` the steps' gradients are held constant, giving ``|w * g(w_M)|``
  (the authors' ``first_order`` mode).

  Args:
    params: the initialised params.
    loss_fn: ``(params, batch) -> scalar loss``.
    batches: one batch, used for every inner step and for the meta-loss (the authors' default),
      or a Python ``list`` of ``steps + 1`` batches: one per inner step, then the meta-loss's.
    steps: the number of inner SGD steps ``M`` (3 in the paper), at least 0.
    lr: the inner learning rate.
    momentum: the inner SGD momentum, in ``[0, 1)``.
    first_order: ignore the second-order terms.
    prune: which leaves are scored (kernels by default).

  Returns:
    A tree shaped like the params: float32 scores for the pruned leaves, ``None`` elsewhere.

  Raises:
    ValueError: for ``steps < 0``, a list of batches of the wrong length, a learning rate that is
      not positive or a momentum outside ``[0, 1)``.
    TypeError: for non-integer ``steps`` or a non-boolean ``first_order``.

  Example:
    One step on ``L(w) = sum(x @ w)``: ``w_1 = c w - lr x^T``, so ``dL(w_1)/dc = x^T w``:

    >>> import jax.numpy as jnp, jaxprune
    >>> params = {'w': jnp.array([[2.0], [-3.0]])}
    >>> loss = lambda p, x: jnp.sum(x @ p['w'])
    >>> jaxprune.at_init.prospr_scores(params, loss, jnp.array([[1.0, 0.5]]), steps=1, lr=0.1)['w']
    Array([[2. ],
           [1.5]], dtype=float32)

  References:
    Alizadeh, Tailor, Zintgraf, van Amersfoort, Farquhar, Lane & Gal, `Prospect pruning: finding
    trainable weights at initialization using meta-gradients <https://arxiv.org/abs/2202.08132>`_,
    ICLR 2022 (code: ``mil-ad/prospr``)
  """
  owner = "prospr"
  steps = check_int("steps", steps, 0, owner)
  check_bool("first_order", first_order, owner)
  rate = number(lr, f"{owner}: lr")
  if rate is not None and not rate > 0:
    raise ValueError(f"{owner}: lr must be a positive number, got {lr!r}.")
  beta = number(momentum, f"{owner}: momentum")
  if beta is not None and not 0.0 <= beta < 1.0:
    raise ValueError(f"{owner}: momentum must be in [0, 1), got {momentum!r}.")
  inner, outer = _inner_batches(batches, steps, owner)
  leaves, treedef = jax.tree.flatten(leaves_lib.unwrap_variables(params))
  index = _pruned_leaves(params, prune, owner)
  tree = lambda xs: jax.tree.unflatten(treedef, xs)

  @jax.jit
  def meta_gradient(leaves, inner, outer):
    def meta_loss(masks):
      w = list(leaves)
      for i, m in zip(index, masks):
        w[i] = w[i] * m
      buffers = [jnp.zeros_like(x) for x in w]
      for batch in inner:
        g = jax.tree.leaves(jax.grad(loss_fn)(tree(w), batch))
        if first_order:
          g = [jax.lax.stop_gradient(x) for x in g]
        buffers = [momentum * b + x for b, x in zip(buffers, g)]
        w = [x - lr * b for x, b in zip(w, buffers)]
      return loss_fn(tree(w), outer)

    return jax.grad(meta_loss)([jnp.ones_like(leaves[i]) for i in index])

  grads = meta_gradient(leaves, inner, outer)
  scores: list[Any] = [None] * len(leaves)
  for i, g in zip(index, grads):
    scores[i] = jnp.abs(g).astype(jnp.float32)
  return jax.tree.unflatten(treedef, scores)


def prospr(
  params: Params,
  loss_fn: Callable[[Params, Any], jax.Array],
  batches: Any,
  sparsity: Sparsity,
  *,
  steps: int = 3,
  lr: float,
  momentum: float = 0.0,
  first_order: bool = False,
  distribution: Distribution = "global",
  prune: PathSelector = None,
  check_collapse: bool = True,
) -> Masks:
  """ProsPr: keep the weights whose masks most change the loss after a few steps of training.

  Scores every pruned weight by `prospr_scores` (the meta-gradient through ``steps`` SGD steps)
  and keeps the highest, globally by default as the authors' code (one threshold over all pruned
  leaves). SNIP looks at the loss at initialisation; ProsPr at the loss the network reaches after
  a few steps, so that the mask favours weights that train well.

  Args:
    params: the initialised params.
    loss_fn: ``(params, batch) -> scalar loss``.
    batches: one batch or a list of ``steps + 1`` batches, as in `prospr_scores`.
    sparsity: fraction of the pruned leaves' weights to remove.
    steps, lr, momentum, first_order: the inner steps, as in `prospr_scores` (the authors' defaults:
      3 steps, learning rate 0.1, no momentum, full second order).
    distribution: ``"global"`` (the paper), ``"uniform"``, ``"erk"``, ``"er"`` or a function.
    prune: which leaves are pruned (kernels by default).
    check_collapse: warn if the masks cut the network (see `jaxprune.collapse.layer_collapse`).

  Returns:
    Masks shaped like the params, for `jaxprune.static_sparse`.

  Raises:
    ValueError: for a sparsity outside ``[0, 1)`` and as `prospr_scores`.
    TypeError: as `prospr_scores`.

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> params = {'w': jnp.array([[2.0], [-3.0]])}
    >>> loss = lambda p, x: jnp.sum(x @ p['w'])
    >>> jaxprune.prospr(params, loss, jnp.array([[1.0, 0.5]]), 0.5, steps=1, lr=0.1)['w']
    Array([[ True],
           [False]], dtype=bool)

  References:
    Alizadeh et al., `Prospect pruning: finding trainable weights at initialization using
    meta-gradients <https://arxiv.org/abs/2202.08132>`_, ICLR 2022
  """
  check_sparsity(sparsity, "prospr: sparsity")
  scores = prospr_scores(
    params,
    loss_fn,
    batches,
    steps=steps,
    lr=lr,
    momentum=momentum,
    first_order=first_order,
    prune=prune,
  )
  masks = masks_from_scores(
    params, scores, sparsity, distribution=distribution, prune=prune, owner="prospr"
  )
  return _finish(masks, "prospr", check_collapse)


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
