"""Which leaves of a parameter tree are pruned, and how they are named.

A leaf is named by its path with ``/`` between keys, e.g. ``params/Dense_0/kernel``. Flax nnx wraps
arrays in ``Variable`` objects whose array sits under the attribute ``value``; that attribute is left
out of the name, so a leaf has the same name in an ``nnx.State`` and in its pure-array form.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp

__all__ = ["Selector", "path_str", "named_leaves", "default_prunable", "prunable_paths",
           "unwrap_variables", "unwrap_variable", "is_variable"]

Selector = Union[None, str, Sequence[str], Callable[[str, Any], bool]]
"""What to prune: ``None`` (floating-point leaves with ``ndim >= 2``), a regular expression or a list
of them matched in full against leaf names, or a predicate ``(name, leaf) -> bool``."""


def path_str(path: tuple[Any, ...]) -> str:
  """The ``/``-joined name of a pytree key path (nnx's ``.value`` attribute left out)."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value":
      continue
    parts.append(jax.tree_util.keystr((key,), simple=True, separator="/"))
  return "/".join(parts)


def is_variable(x: Any) -> bool:
  """Whether ``x`` is a Flax nnx ``Variable`` (duck-typed, so flax is not imported)."""
  return callable(getattr(x, "get_value", None))


def unwrap_variable(x: Any) -> Any:
  """The array inside an nnx ``Variable``; anything else unchanged."""
  return x.get_value() if is_variable(x) else x


def unwrap_variables(tree: Any) -> Any:
  """``tree`` with every Flax nnx ``Variable`` replaced by the array it holds (other trees unchanged).

  ``nnx.Optimizer`` initialises optimizers with ``Variable``-wrapped params; state built from the
  unwrapped tree holds plain arrays, which nnx wraps itself.
  """
  return jax.tree.map(unwrap_variable, tree, is_leaf=is_variable)


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
  """``(name, leaf)`` for every array leaf of ``tree``, in ``jax.tree.leaves`` order."""
  return [(path_str(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def default_prunable(name: str, leaf: Any) -> bool:
  """The default selection: floating-point leaves with at least two dimensions (kernels, not biases)."""
  del name
  return jnp.issubdtype(jnp.result_type(leaf), jnp.floating) and jnp.ndim(leaf) >= 2


def _as_predicate(prune: Selector) -> tuple[Callable[[str, Any], bool], list[str]]:
  if prune is None:
    return default_prunable, []
  if callable(prune):
    return prune, []
  patterns = [prune] if isinstance(prune, str) else list(prune)
  for pattern in patterns:
    if not isinstance(pattern, str):
      raise TypeError(f"prune patterns must be strings (regular expressions), got {pattern!r}.")
  compiled = [re.compile(p) for p in patterns]
  return (lambda name, leaf: any(c.fullmatch(name) for c in compiled)), patterns


def prunable_paths(params: Any, prune: Selector, *, owner: str) -> list[bool]:
  """Which leaves of ``params`` are pruned, one flag per leaf in ``jax.tree.leaves`` order.

  Args:
    params: the parameter tree.
    prune: the selector (see `Selector`).
    owner: the name of the transformation, for error messages.

  Returns:
    A list of booleans, one per leaf.

  Raises:
    ValueError: if a pattern matches no leaf.
    TypeError: if a selected leaf is not floating point.
  """
  predicate, patterns = _as_predicate(prune)
  named = named_leaves(params)
  for pattern in patterns:
    if not any(re.fullmatch(pattern, name) for name, _ in named):
      raise ValueError(
          f"{owner}: prune pattern {pattern!r} matches no leaf; leaf names are "
          f"{[name for name, _ in named]}.")
  flags = []
  for name, leaf in named:
    selected = bool(predicate(name, leaf))
    if selected and not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
          f"{owner}: leaf {name!r} of dtype {jnp.result_type(leaf)} is selected for pruning, but only "
          "floating-point leaves can be pruned.")
    flags.append(selected)
  return flags
