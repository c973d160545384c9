"""Stacking the states of several runs along a leading axis, for one vmapped program.

Runs that share a model, an optimizer and a step count (the seeds of a method, and its
sparsities when the sparsity is a hyperparameter in the optimizer state) can be trained as
one ``jax.vmap``-ped program over their stacked states. Every leaf is stacked along a new
axis 0, except the integer scalars (the step counters of optax and jaxprune states), which
are equal in every run and stay shared (vmap axis ``None``). Keeping the counters unbatched
keeps the ``lax.cond`` in a jaxprune pruner a real branch (a batched predicate would turn it
into a select that recomputes the masks at every step).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _is_shared(leaf: Any) -> bool:
  return np.ndim(leaf) == 0 and jnp.issubdtype(jnp.result_type(leaf), jnp.integer)


def run_axes(tree: Any) -> Any:
  """The vmap axes of a stacked tree: ``None`` for integer scalars, ``0`` for the rest.

  Args:
      tree: the state of one run (arrays or ``jax.ShapeDtypeStruct``s).

  Returns:
      A tree of the same structure with ``None`` or ``0`` at each leaf, usable as
      ``in_axes`` / ``out_axes`` of ``jax.vmap``.
  """
  return jax.tree.map(lambda x: None if _is_shared(x) else 0, tree)


def _axes_leaves(axes: Any, tree: Any) -> list[Optional[int]]:
  """The axes of ``axes`` in the order of ``tree``'s leaves."""
  return jax.tree.structure(tree).flatten_up_to(axes)


def stack(trees: Sequence[Any], axes: Any) -> Any:
  """Stacks per-run trees into one tree with the runs along axis 0.

  Args:
      trees: one tree per run, all of the same structure.
      axes: `run_axes` of one of them.

  Returns:
      The stacked tree; a leaf with axis ``None`` is taken from the first run.

  Raises:
      ValueError: if the trees differ in structure, or a shared leaf differs between runs.
  """
  if not trees:
    raise ValueError("stack: no trees given")
  treedef = jax.tree.structure(trees[0])
  for t in trees[1:]:
    if jax.tree.structure(t) != treedef:
      raise ValueError("stack: the runs' states have different structures")
  columns = zip(*(treedef.flatten_up_to(t) for t in trees))
  out = []
  for axis, column in zip(_axes_leaves(axes, trees[0]), columns):
    if axis is None:
      first = np.asarray(column[0])
      if any(not np.array_equal(first, np.asarray(c)) for c in column[1:]):
        raise ValueError(
          "stack: a shared counter differs between runs (they are not at the same "
          f"step): {[int(np.asarray(c)) for c in column]}"
        )
      out.append(column[0])
    else:
      out.append(jnp.stack([jnp.asarray(c) for c in column]))
  return jax.tree.unflatten(treedef, out)


def take(tree: Any, axes: Any, index: int) -> Any:
  """The tree of run ``index`` of a stacked tree (``unstack(...)[index]`` for one run).

  Args:
      tree: a stacked tree.
      axes: the axes used to stack it.
      index: the run.

  Returns:
      That run's tree.
  """
  leaves, treedef = jax.tree.flatten(tree)
  axes_leaves = treedef.flatten_up_to(axes)
  return jax.tree.unflatten(
    treedef, [x if a is None else x[index] for x, a in zip(leaves, axes_leaves)]
  )


def unstack(tree: Any, axes: Any, count: int) -> list[Any]:
  """Splits a stacked tree back into ``count`` per-run trees.

  Args:
      tree: a tree stacked by `stack` (or output by a program vmapped with ``axes``).
      axes: the axes used to stack it.
      count: the number of runs.

  Returns:
      One tree per run.
  """
  return [take(tree, axes, i) for i in range(count)]
