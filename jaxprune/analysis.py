"""Comparing masks: how much two pruned networks (cycles of IMP, seeds, methods) share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from jaxprune import masks as masks_lib
from jaxprune.typing import Masks

__all__ = ["LeafOverlap", "MaskOverlap", "mask_overlap", "overlap_matrix"]


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
