"""Looking at pruned networks: how much masks share, how sparse the weights are (PQ index), how
far training moved them, and how many ReLU units are dead.

- `mask_overlap`, `overlap_matrix`: kept weights shared by two masks (IMP cycles, seeds, methods).
- `pq_index`: the PQ index of sparsity of Diao et al. (2023), per leaf and over all leaves.
- `learning_distance`: the l2 distance between two sets of weights, per leaf and in total (the
  learning distance of He et al. 2022: from a cycle's start to its end).
- `dead_neuron_rate`: the fraction of ReLU outputs that are zero over a batch (the dynamic dead
  neuron rate of Liu et al. 2023), per layer and in total.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import masks as masks_lib
from jaxprune import sap
from jaxprune.typing import ArrayTree, Masks

__all__ = [
  "DeadNeuronRate",
  "LeafOverlap",
  "LearningDistance",
  "MaskOverlap",
  "PQIndex",
  "dead_neuron_rate",
  "learning_distance",
  "mask_overlap",
  "overlap_matrix",
  "pq_index",
]


class LeafOverlap(NamedTuple):
  """Overlap of the kept weights of one leaf in masks ``a`` and ``b``.

  Attributes:
    kept_a, kept_b: kept entries in each mask.
    both: entries kept in both.
    iou: ``both / (kept_a + kept_b - both)`` (1.0 when neither keeps anything).
    fraction_of_a: ``both / kept_a``, the share of ``a``'s kept weights that ``b`` also keeps
      (for IMP cycles with ``a`` the later mask: 1.0 when pruning is nested).
  """

  kept_a: int
  kept_b: int
  both: int
  iou: float
  fraction_of_a: float


class MaskOverlap(NamedTuple):
  """Per-leaf overlaps (keyed by leaf path) and the same counts over all leaves."""

  leaves: dict[str, LeafOverlap]
  total: LeafOverlap


def _overlap(kept_a: int, kept_b: int, both: int) -> LeafOverlap:
  union = kept_a + kept_b - both
  return LeafOverlap(
    kept_a, kept_b, both, both / union if union else 1.0, both / kept_a if kept_a else 1.0
  )


def _named_masks(masks: Masks) -> dict[str, jax.Array]:
  out = masks_lib.device_arrays(masks)
  for name, array in out.items():
    if array.dtype != bool:
      raise TypeError(
        f"mask_overlap: leaf {name!r} has dtype {array.dtype}, "
        "expected boolean masks (for example from jaxprune.get_masks)."
      )
  return out


def mask_overlap(a: Masks, b: Masks) -> MaskOverlap:
  """Intersection over union and shared fractions of the kept weights of two mask trees.

  Args:
    a: a masks tree (``True`` = kept), e.g. ``jaxprune.get_masks(state)``; ``None`` leaves (not
      pruned) are skipped.
    b: a masks tree with the same pruned leaves and shapes.

  Returns:
    A `MaskOverlap` with one `LeafOverlap` per pruned leaf and the total.

  Raises:
    ValueError: if the trees prune different leaves or a leaf's shapes differ (naming the leaf).
    TypeError: for a non-boolean leaf.

  The counts are reduced on the devices holding the masks (see `jaxprune.masks.count_true`), so
  masks sharded over several processes are compared where they are.

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> a = {'w': jnp.array([True, True, False, False])}
    >>> b = {'w': jnp.array([True, False, True, False])}
    >>> jaxprune.analysis.mask_overlap(a, b).leaves['w'].iou
    0.3333333333333333
  """
  named_a, named_b = _named_masks(a), _named_masks(b)
  if named_a.keys() != named_b.keys():
    raise ValueError(
      f"mask_overlap: the masks prune different leaves: {sorted(named_a)} vs {sorted(named_b)}."
    )
  leaves = {}
  for name, ma in named_a.items():
    mb = named_b[name]
    if ma.shape != mb.shape:
      raise ValueError(
        f"mask_overlap: leaf {name!r} has shape {ma.shape} in a and {mb.shape} in b."
      )
    count = masks_lib.count_true
    leaves[name] = _overlap(count(ma), count(mb), count(ma & mb))
  total = _overlap(
    sum(v.kept_a for v in leaves.values()),
    sum(v.kept_b for v in leaves.values()),
    sum(v.both for v in leaves.values()),
  )
  return MaskOverlap(leaves, total)


def overlap_matrix(masks: Sequence[Masks]) -> np.ndarray:
  """Total IoU between every pair of mask trees (cycles, seeds): a symmetric matrix, ones on the
  diagonal."""
  n = len(masks)
  out = np.ones((n, n))
  for i in range(n):
    for j in range(i + 1, n):
      out[i, j] = out[j, i] = mask_overlap(masks[i], masks[j]).total.iou
  return out


# ============================================================================ PQ index


class PQIndex(NamedTuple):
  """PQ indices (floats in ``[0, 1)``, NaN for an all-zero leaf): per leaf, keyed by path, and
  ``total``, the index of all the leaves' entries together."""

  leaves: dict[str, float]
  total: float


def _inexact_leaves(tree: ArrayTree, owner: str) -> dict[str, jax.Array]:
  out = {}
  for name, leaf in masks_lib.device_arrays(tree).items():
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
      raise TypeError(f"{owner}: leaf {name!r} has dtype {leaf.dtype}, expected floating point.")
    out[name] = leaf
  return out


def pq_index(tree: ArrayTree, p: float = 1.0, q: float = 2.0, *, masks: Masks = None) -> PQIndex:
  """The PQ index ``1 - d ** (1/q - 1/p) ||w||_p / ||w||_q`` of every leaf and of all of them.

  The index is ``0`` for a leaf whose entries all have the same magnitude and rises towards ``1``
  as a few entries carry the norm (Diao et al. 2023, Definition 1); `jaxprune.pq_rate` prunes by it.

  Args:
    tree: floating-point arrays (params); ``None`` leaves are skipped.
    p: the smaller norm, ``0 < p < q``.
    q: the larger norm.
    masks: a masks tree (e.g. ``jaxprune.get_masks(state)``): only its masked leaves are measured,
      with ``d`` the number of kept entries, as the authors' code does (pruned weights are zero and
      add nothing to the norms). Without it every leaf is measured with ``d`` its size.

  Returns:
    A `PQIndex` (Python floats).

  Raises:
    ValueError: for ``p`` or ``q`` out of range, or masks whose leaves are not in ``tree`` or have
      another shape (naming the leaf).
    TypeError: for a leaf that is not floating point (naming it).

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> flat = {'w': jnp.ones(4)}
    >>> peaked = {'w': jnp.array([0.0, 0.0, 0.0, 5.0])}
    >>> jaxprune.analysis.pq_index(flat).total, jaxprune.analysis.pq_index(peaked).total
    (0.0, 0.5)

  References:
    Diao et al., `Pruning deep neural networks from a sparsity perspective
    <https://arxiv.org/abs/2302.05601>`_, ICLR 2023 (code:
    ``diaoenmao/Pruning-Deep-Neural-Networks-from-a-Sparsity-Perspective``,
    ``src/modules/sparsity_index.py``).
  """
  rate = sap.pq_rate(p, q)  # checks p and q
  arrays = _inexact_leaves(tree, "pq_index")
  kept: dict[str, Any] = {name: x.size for name, x in arrays.items()}
  if masks is not None:
    named = masks_lib.device_arrays(masks)
    for name, m in named.items():
      if name not in arrays:
        raise ValueError(f"pq_index: the masks have leaf {name!r}, which the tree does not.")
      if m.shape != arrays[name].shape:
        raise ValueError(
          f"pq_index: the mask of leaf {name!r} has shape {m.shape}, the leaf {arrays[name].shape}."
        )
    arrays = {name: jnp.where(named[name], arrays[name], 0) for name in named}
    kept = {name: jnp.sum(named[name], dtype=jnp.int32) for name in named}
  index = lambda parts, d: float(sap.pq_index_of(parts, d, rate.p, rate.q))
  leaves = {name: index([x], kept[name]) for name, x in arrays.items()}
  total = index(list(arrays.values()), sum(kept.values())) if arrays else math.nan
  return PQIndex(leaves, total)


# ============================================================================ learning distance


class LearningDistance(NamedTuple):
  """l2 distances: per leaf, keyed by path, and ``total`` (the l2 norm over all leaves)."""

  leaves: dict[str, float]
  total: float


def learning_distance(params: ArrayTree, start: ArrayTree) -> LearningDistance:
  """``||params - start||_2`` per leaf and over all leaves: how far training moved the weights.

  He et al. (2022) plot this distance from the weights a sparse network starts training from (its
  initialisation, rewound and masked) to its trained weights, against sparsity: it tracks the sparse
  double-descent curve of the test accuracy.

  Args:
    params: the trained params.
    start: the params they started from, the same tree structure.

  Returns:
    A `LearningDistance` (Python floats, computed in float32).

  Raises:
    ValueError: for trees of different structures or a leaf whose shapes differ (naming it).
    TypeError: for a leaf that is not floating point (naming it).

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> d = jaxprune.analysis.learning_distance({'w': jnp.array([3.0, 4.0])}, {'w': jnp.zeros(2)})
    >>> d.total, d.leaves['w']
    (5.0, 5.0)

  References:
    He, Xie, Zhu & Qin, `Sparse double descent: where network pruning aggravates overfitting
    <https://arxiv.org/abs/2206.08684>`_, ICML 2022.
  """
  a, b = _inexact_leaves(params, "learning_distance"), _inexact_leaves(start, "learning_distance")
  if a.keys() != b.keys():
    raise ValueError(
      f"learning_distance: params and start have different leaves: {sorted(a)} vs {sorted(b)}."
    )
  squares = {}
  for name, x in a.items():
    if x.shape != b[name].shape:
      raise ValueError(
        f"learning_distance: leaf {name!r} has shape {x.shape} in params, {b[name].shape} in start."
      )
    diff = x.astype(jnp.float32) - b[name].astype(jnp.float32)
    squares[name] = float(jnp.sum(jnp.square(diff)))
  return LearningDistance(
    {k: math.sqrt(v) for k, v in squares.items()}, math.sqrt(sum(squares.values()))
  )


# ============================================================================ dead neurons


class DeadNeuronRate(NamedTuple):
  """Dead ReLU outputs over a batch.

  Attributes:
    leaves: per layer (keyed by path), the fraction of its outputs that are zero, over every example
      and unit (and position, for convolutions).
    total: the same fraction over all the layers' outputs together.
    dead_units: per layer, the units (along the last axis) that are zero for every example of the
      batch.
  """

  leaves: dict[str, float]
  total: float
  dead_units: dict[str, int]


def dead_neuron_rate(activations: ArrayTree) -> DeadNeuronRate:
  """The fraction of ReLU units that output zero, per layer and over all layers.

  An entry is dead when it is ``<= 0``: pass the ReLU outputs (exactly ``0`` when dead) or the
  pre-activations that feed the ReLUs (a pre-activation ``<= 0`` gives ``relu = 0``). Flax's
  ``capture_intermediates`` records the outputs of the ``Dense`` or ``Conv`` layers, which are those
  pre-activations; keep the layers followed by a ReLU (see the example). Measured during training on
  the training batches, this is the dynamic dead neuron rate (DNR) of Liu et al. (2023), who find it
  falls as a network is pruned; `jaxprune.imp`'s ``activate_while_pruning`` is their remedy.

  Args:
    activations: a tree of arrays ``[batch, ..., units]`` (``None`` leaves skipped).

  Returns:
    A `DeadNeuronRate` (Python numbers).

  Raises:
    TypeError: for a leaf that is not floating point (naming it).
    ValueError: for a leaf without a batch and a unit axis (naming it).

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxprune
    >>> class MLP(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     x = nn.relu(nn.Dense(8)(x))
    ...     return nn.Dense(2)(x)
    >>> model = MLP()
    >>> x = jax.random.normal(jax.random.key(0), (32, 4))
    >>> variables = model.init(jax.random.key(1), x)
    >>> _, state = model.apply(variables, x, capture_intermediates=True, mutable=['intermediates'])
    >>> pre = {'Dense_0': state['intermediates']['Dense_0']['__call__'][0]}  # feeds the ReLU
    >>> rate = jaxprune.analysis.dead_neuron_rate(pre)
    >>> rate.total == float(jnp.mean(nn.relu(pre['Dense_0']) == 0))
    True
    >>> jaxprune.analysis.dead_neuron_rate({'h': jnp.array([[0.0, 1.0], [0.0, -2.0]])})
    DeadNeuronRate(leaves={'h': 0.75}, total=0.75, dead_units={'h': 1})

  References:
    Liu, Ghosh, Tan & Motani, `AP: selective activation for de-sparsifying pruned neural networks
    <https://arxiv.org/abs/2212.06145>`_, TMLR 2023.
  """
  leaves, dead_units, dead, total = {}, {}, 0, 0
  for name, x in _inexact_leaves(activations, "dead_neuron_rate").items():
    if x.ndim < 2:
      raise ValueError(
        f"dead_neuron_rate: leaf {name!r} has shape {x.shape}; expected [batch, ..., units]."
      )
    is_dead = x <= 0
    count = int(jnp.sum(is_dead, dtype=jnp.int32))
    leaves[name] = count / x.size
    dead_units[name] = int(jnp.sum(jnp.all(is_dead.reshape(-1, x.shape[-1]), axis=0)))
    dead, total = dead + count, total + x.size
  return DeadNeuronRate(leaves, dead / total if total else math.nan, dead_units)
