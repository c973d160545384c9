"""Counting zeros: per-leaf and total sparsity of a tree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from jaxprune import masks as masks_lib
from jaxprune.typing import ArrayTree

__all__ = ["LeafSparsity", "SparsitySummary", "sparsity_summary", "sparsity_table"]


class LeafSparsity(NamedTuple):
  """Counts for one leaf: ``zeros`` of ``size`` entries, ``sparsity = zeros / size``."""

  size: int
  zeros: int
  sparsity: float


class SparsitySummary(NamedTuple):
  """Per-leaf counts (``leaves``, keyed by path) and totals over all leaves."""

  leaves: dict[str, LeafSparsity]
  size: int
  zeros: int
  sparsity: float

  def __str__(self) -> str:
    width = max([len(n) for n in self.leaves] + [5])
    lines = [f"{'leaf':<{width}}  {'size':>10}  {'zeros':>10}  {'sparsity':>8}"]
    for name, leaf in self.leaves.items():
      lines.append(f"{name:<{width}}  {leaf.size:>10}  {leaf.zeros:>10}  {leaf.sparsity:>8.4f}")
    lines.append(f"{'total':<{width}}  {self.size:>10}  {self.zeros:>10}  {self.sparsity:>8.4f}")
    return "\n".join(lines)


def sparsity_summary(tree: ArrayTree) -> SparsitySummary:
  """Counts the zeros of every leaf of ``tree`` and in total.

  For boolean leaves (masks, e.g. from `jaxprune.get_masks`) the pruned entries (``False``) are
  counted; for numeric leaves (params) the entries equal to zero. ``None`` leaves are skipped. The
  counting runs on the devices that hold the arrays (only scalars reach the host), so sharded and
  multi-process arrays are summarised where they are.

  Args:
    tree: a pytree of arrays: params, masks, an ``nnx.State``.

  Returns:
    A `SparsitySummary`; ``str()`` of it is a table.

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> s = jaxprune.sparsity_summary({'w': jnp.array([0.0, 1.0, 0.0, 2.0])})
    >>> s.sparsity, s.leaves['w'].zeros
    (0.5, 2)
  """
  leaves = {}
  for name, array in masks_lib.device_arrays(tree).items():
    zeros = array.size - masks_lib.count_true(array)
    leaves[name] = LeafSparsity(array.size, zeros, zeros / array.size if array.size else 0.0)
  size = sum(leaf.size for leaf in leaves.values())
  zeros = sum(leaf.zeros for leaf in leaves.values())
  return SparsitySummary(leaves, size, zeros, zeros / size if size else 0.0)


def sparsity_table(trees: Sequence[ArrayTree], *, labels: Sequence[str] | None = None) -> str:
  """A markdown table of per-leaf and total sparsity across several masks or params, one row each.

  Typical use: the masks at the end of every IMP cycle (rows) against the pruned leaves (columns).

  Args:
    trees: the trees to count (as in `sparsity_summary`); all must have the same leaves.
    labels: one row label per tree; by default ``0, 1, 2, ...`` (cycle indices).

  Returns:
    The table as markdown text, sparsities in percent.

  Raises:
    ValueError: if ``labels`` does not match ``trees`` or the trees have different leaves.

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> print(jaxprune.sparsity_table([{'w': jnp.ones(4, bool)}, {'w': jnp.array([1, 0, 0, 0], bool)}]))
    | cycle | w | total |
    |---|---|---|
    | 0 | 0.00% | 0.00% |
    | 1 | 75.00% | 75.00% |
  """
  labels = [str(i) for i in range(len(trees))] if labels is None else [str(x) for x in labels]
  if len(labels) != len(trees):
    raise ValueError(f"sparsity_table: {len(labels)} labels for {len(trees)} trees.")
  summaries = [sparsity_summary(tree) for tree in trees]
  names = list(summaries[0].leaves) if summaries else []
  for label, summary in zip(labels, summaries):
    if list(summary.leaves) != names:
      raise ValueError(
        f"sparsity_table: row {label!r} has leaves {list(summary.leaves)}, the first row {names}."
      )
  lines = ["| cycle | " + " | ".join(names + ["total"]) + " |", "|" + "---|" * (len(names) + 2)]
  for label, summary in zip(labels, summaries):
    cells = [f"{100 * summary.leaves[n].sparsity:.2f}%" for n in names]
    lines.append(f"| {label} | " + " | ".join(cells + [f"{100 * summary.sparsity:.2f}%"]) + " |")
  return "\n".join(lines)
