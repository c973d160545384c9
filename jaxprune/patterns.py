"""Sparsity patterns: what is pruned together.

A pattern turns a leaf's scores into one score per group (an entry, a block, a channel), and a mask
over groups back into a mask over entries. Selection then counts groups: a leaf with sparsity ``s``
and ``G`` groups loses exactly ``round(s * G)`` groups. `n_m` is different: it keeps the ``n`` best of
every ``m`` consecutive entries, so it fixes the sparsity at ``1 - n / m`` by itself.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp

__all__ = [
  "Pattern",
  "Unstructured",
  "NM",
  "Block",
  "Channel",
  "unstructured",
  "n_m",
  "block",
  "channel",
]


def _axis(axis: int, ndim: int, name: str, what: str) -> int:
  if not -ndim <= axis < ndim:
    raise ValueError(
      f"leaf {name!r}: {what} axis {axis} is out of range for a leaf with {ndim} dims."
    )
  return axis % ndim


class Unstructured(NamedTuple):
  """Every entry is its own group."""

  def validate(self, name: str, shape: tuple[int, ...]) -> None:
    del name, shape

  def num_groups(self, shape: tuple[int, ...]) -> int:
    return math.prod(shape)

  def group_scores(self, scores: jax.Array) -> jax.Array:
    return scores

  def expand(self, group_mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    del shape
    return group_mask


class Block(NamedTuple):
  """Blocks of ``shape`` over the trailing axes of a leaf, scored by their mean score."""

  shape: tuple[int, ...]

  def validate(self, name: str, shape: tuple[int, ...]) -> None:
    if len(self.shape) > len(shape):
      raise ValueError(
        f"leaf {name!r}: block shape {self.shape} has more dims than the leaf shape {shape}."
      )
    trailing = shape[len(shape) - len(self.shape) :]
    if any(b > d for b, d in zip(self.shape, trailing)):
      raise ValueError(
        f"leaf {name!r}: block shape {self.shape} is larger than the leaf shape {shape}."
      )
    if any(d % b for b, d in zip(self.shape, trailing)):
      raise ValueError(
        f"leaf {name!r}: block shape {self.shape} does not divide the leaf shape {shape}."
      )

  def _split_shape(self, shape):
    lead = shape[: len(shape) - len(self.shape)]
    split = []
    for b, d in zip(self.shape, shape[len(lead) :]):
      split += [d // b, b]
    return lead, tuple(split)

  def num_groups(self, shape: tuple[int, ...]) -> int:
    return math.prod(shape) // math.prod(self.shape)

  def group_scores(self, scores: jax.Array) -> jax.Array:
    lead, split = self._split_shape(scores.shape)
    blocked = scores.astype(jnp.float32).reshape(lead + split)
    block_axes = tuple(len(lead) + 2 * i + 1 for i in range(len(self.shape)))
    return jnp.mean(blocked, axis=block_axes)

  def expand(self, group_mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    lead, split = self._split_shape(shape)
    expanded = jnp.expand_dims(
      group_mask, tuple(len(lead) + 2 * i + 1 for i in range(len(self.shape)))
    )
    return jnp.broadcast_to(expanded, lead + split).reshape(shape)


class Channel(NamedTuple):
  """Whole slices along ``axis`` (output neurons or channels for ``axis=-1`` of a Flax kernel)."""

  axis: int

  def validate(self, name: str, shape: tuple[int, ...]) -> None:
    _axis(self.axis, len(shape), name, "channel")

  def num_groups(self, shape: tuple[int, ...]) -> int:
    return shape[self.axis % len(shape)]

  def group_scores(self, scores: jax.Array) -> jax.Array:
    axis = self.axis % scores.ndim
    other = tuple(a for a in range(scores.ndim) if a != axis)
    return jnp.mean(scores.astype(jnp.float32), axis=other)

  def expand(self, group_mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    axis = self.axis % len(shape)
    other = tuple(a for a in range(len(shape)) if a != axis)
    return jnp.broadcast_to(jnp.expand_dims(group_mask, other), shape)


class NM(NamedTuple):
  """Keep the ``n`` highest scores in every group of ``m`` consecutive entries along ``axis``."""

  n: int
  m: int
  axis: int

  def validate(self, name: str, shape: tuple[int, ...]) -> None:
    axis = _axis(self.axis, len(shape), name, "N:M")
    if shape[axis] % self.m:
      raise ValueError(
        f"leaf {name!r}: M={self.m} does not divide axis {self.axis} of size "
        f"{shape[axis]} (shape {shape})."
      )

  def mask(self, scores: jax.Array) -> jax.Array:
    """The N:M mask; ties within a group are broken by position (first entries kept)."""
    axis = self.axis % scores.ndim
    moved = jnp.moveaxis(scores.astype(jnp.float32), axis, -1)
    grouped = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // self.m, self.m))
    # rank[i] = #{j : s_j > s_i or (s_j == s_i and j < i)}: O(m^2) per group, exact under ties.
    a = grouped[..., :, None]
    b = grouped[..., None, :]
    earlier = jnp.arange(self.m)[None, :] < jnp.arange(self.m)[:, None]
    earlier = earlier.reshape((1,) * (grouped.ndim - 1) + (self.m, self.m))
    beats = (b > a) | ((b == a) & earlier)
    rank = jnp.sum(beats, axis=-1)
    keep = (rank < self.n).reshape(moved.shape)
    return jnp.moveaxis(keep, -1, axis)


Pattern = Union[Unstructured, Block, Channel, NM]


def unstructured() -> Unstructured:
  """Each weight is pruned on its own (the default)."""
  return Unstructured()


def n_m(n: int, m: int, *, axis: int = -2) -> NM:
  """N:M structured sparsity: ``n`` of every ``m`` consecutive weights along ``axis`` are kept.

  The default axis ``-2`` is the input (contraction) axis of Flax ``Dense`` and ``Conv`` kernels, the
  layout that sparse tensor cores accelerate for 2:4.

  Args:
    n: weights kept per group, ``1 <= n <= m``.
    m: group size.
    axis: the axis along which groups run.

  Returns:
    An N:M pattern.

  Raises:
    ValueError: if ``n > m`` or either is below 1.

  References:
    Mishra et al., `Accelerating sparse deep neural networks <https://arxiv.org/abs/2104.08378>`_, 2021
  """
  for name, v in (("n", n), ("m", m), ("axis", axis)):
    if isinstance(v, bool) or not isinstance(v, int):
      raise TypeError(f"n_m: {name} must be an int, got {v!r}.")
  if n < 1 or m < 1:
    raise ValueError(f"n_m: n and m must be >= 1, got n={n}, m={m}.")
  if n > m:
    raise ValueError(f"n_m: n ({n}) must not exceed m ({m}).")
  return NM(n, m, axis)


def block(shape: tuple[int, ...]) -> Block:
  """Blocks of ``shape`` over a leaf's trailing axes, pruned whole by their mean score.

  Args:
    shape: the block shape, e.g. ``(4, 4)``; every entry must divide the matching leaf dimension.

  Returns:
    A block pattern.

  Raises:
    ValueError: if ``shape`` is empty or has entries below 1.
  """
  shape = tuple(shape)
  if not shape or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in shape):
    raise ValueError(f"block: shape must be a non-empty tuple of ints >= 1, got {shape!r}.")
  return Block(shape)


def channel(axis: int = -1) -> Channel:
  """Whole channels (neurons) along ``axis``, pruned by their mean score.

  Args:
    axis: the channel axis; ``-1`` is the output axis of Flax ``Dense`` and ``Conv`` kernels.

  Returns:
    A channel pattern.
  """
  if isinstance(axis, bool) or not isinstance(axis, int):
    raise TypeError(f"channel: axis must be an int, got {axis!r}.")
  return Channel(axis)
