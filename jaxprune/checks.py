"""Argument checks shared by every factory: each error names the owner, the argument and the value.

Values that are traced (inside ``jit`` or ``optax.inject_hyperparams``' update) cannot be checked and
pass; every concrete value is checked where it is given.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import numpy as np

__all__ = [
  "JaxpruneWarning",
  "check_bool",
  "check_fraction",
  "check_int",
  "check_regex",
  "check_sparsity",
  "is_traced",
  "number",
]


class JaxpruneWarning(UserWarning):
  """The category of every warning jaxprune issues (the test suite turns them into errors)."""


def is_traced(value: Any) -> bool:
  """Whether ``value`` is a JAX tracer (its value is not known yet)."""
  return isinstance(value, jax.core.Tracer)


def number(value: Any, what: str) -> float | None:
  """``value`` as a Python float, ``None`` if it is traced; ``TypeError`` unless it is a real number.

  Strings are refused even when they spell a number (``"0.5"``): they would pass a ``float()`` check
  and fail later inside arithmetic.
  """
  if is_traced(value):
    return None
  if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
    raise TypeError(f"{what} must be a number, got {value!r}.")
  if isinstance(value, (int, float, np.integer, np.floating)):
    return float(value)
  dtype = getattr(value, "dtype", None)
  if (
    dtype is not None
    and np.ndim(value) == 0
    and (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating))
  ):
    return float(value)
  raise TypeError(f"{what} must be a number, got {value!r}.")


def check_sparsity(value: Any, what: str) -> None:
  """Raises unless a concrete ``value`` is a real number in ``[0, 1)`` (NaN fails).

  Args:
    value: the sparsity.
    what: how the error names it, e.g. ``"rigl: sparsity"``.

  Raises:
    TypeError: for a value that is not a real number (strings included).
    ValueError: for a number outside ``[0, 1)`` or NaN.
  """
  try:
    v = number(value, what)
  except TypeError:
    raise TypeError(f"{what} must be a number in [0, 1), got {value!r}.") from None
  if v is not None and not 0.0 <= v < 1.0:  # NaN fails every comparison.
    raise ValueError(f"{what} must be in [0, 1), got {value!r}.")


def check_fraction(value: Any, what: str) -> None:
  """Raises ``ValueError`` unless a concrete ``value`` is a number in ``[0, 1]``."""
  try:
    v = number(value, what)
  except TypeError:
    v = math.nan
  if v is not None and not 0.0 <= v <= 1.0:
    raise ValueError(f"{what} must be a number in [0, 1], got {value!r}.")


def check_int(name: str, value: Any, minimum: int, owner: str) -> int:
  """``value`` as an int, or a ``TypeError``/``ValueError`` naming ``owner`` and ``name``."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{owner}: {name} must be an int, got {value!r}.")
  if value < minimum:
    raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}.")
  return int(value)


def check_bool(name: str, value: Any, owner: str) -> bool:
  """``value`` if it is a bool, else a ``TypeError`` naming ``owner`` and ``name``."""
  if not isinstance(value, bool):
    raise TypeError(f"{owner}: {name} must be a bool, got {value!r}.")
  return value


def check_regex(key: Any, owner: str, what: str) -> None:
  """``TypeError`` unless ``key`` is a string, ``ValueError`` unless it compiles as a regex.

  ``what`` names the mapping the key belongs to (``"override"``, ``"stacked axes"``).
  """
  if not isinstance(key, str):
    raise TypeError(f"{owner}: {what} keys must be regular expressions (str), got {key!r}.")
  try:
    re.compile(key)
  except re.error as e:
    raise ValueError(
      f"{owner}: {what} pattern {key!r} is not a valid regular expression: {e}."
    ) from None
