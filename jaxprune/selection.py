"""Exact top-k selection by counting: a radix select, without sorting.

The k-th largest score is found digit by digit on an order-preserving ``uint32`` key of each score.
Each pass is one reduction: a histogram of one 16-bit digit over the entries still in play (a
scatter-add into 65,536 bins). Two passes give the exact threshold, so the cost is O(size) per leaf,
nothing is sorted, and no array larger than a leaf is built. Because every pass is a reduction, the
same code runs when the scores are sharded across devices (each device counts its shard and XLA adds
the histograms), and a global selection over many leaves adds up per-leaf histograms: the scores of
different leaves are never concatenated.

Ties at the threshold are broken by position (lower flat index first; in a global selection, earlier
leaves first) with the same radix select run on the positions of the tied entries, so the number of
kept entries is exact whatever the ties, all-equal scores included. That second select runs only when
the ties straddle the threshold (``lax.cond``), which for continuous scores is almost never.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = ["ordered_key", "top_k_mask", "top_k_masks", "cond"]

_DIGIT_BITS = 16
_NUM_BINS = 1 << _DIGIT_BITS
_DIGIT_MASK = _NUM_BINS - 1


def cond(pred, true_fn, false_fn):
  """``lax.cond``, but a plain Python branch when ``pred`` is concrete (outside ``jit``).

  Outside ``jit``, ``lax.cond`` would trace and compile both branches at every call; the result is
  the same either way.
  """
  if isinstance(pred, jax.core.Tracer):
    return jax.lax.cond(pred, true_fn, false_fn)
  return true_fn() if bool(pred) else false_fn()


def ordered_key(scores: jax.Array) -> jax.Array:
  """Maps scores to ``uint32`` keys whose unsigned order is the order of the scores.

  Scores are compared as float32 (bf16 and f16 widen exactly).

  Args:
    scores: a floating-point array.

  Returns:
    A ``uint32`` array of the same shape with ``key(a) < key(b)`` iff ``a < b``; ``-0.0`` and ``+0.0``
    get the same key, NaN sorts above ``+inf``.
  """
  scores = scores.astype(jnp.float32)
  scores = jnp.where(scores == 0, jnp.zeros((), jnp.float32), scores)  # one key for -0.0 and +0.0
  bits = jax.lax.bitcast_convert_type(scores, jnp.uint32)
  sign = jnp.uint32(1 << 31)
  return jnp.where(bits & sign, ~bits, bits | sign)


def _histogram(digits: jax.Array, weights: jax.Array | None) -> jax.Array:
  """Counts of each 16-bit digit value (weighted by a boolean ``weights`` if given)."""
  ones = jnp.ones((), jnp.int32) if weights is None else weights.astype(jnp.int32)
  ones = jnp.broadcast_to(ones, digits.shape)
  return jnp.zeros(_NUM_BINS, jnp.int32).at[digits.astype(jnp.int32)].add(
      ones, mode="promise_in_bounds")


def _select_digit(hist: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Largest digit ``d`` with ``#(digit >= d) >= k``, and ``#(digit > d)``."""
  at_or_above = jnp.cumsum(hist[::-1])[::-1]  # at_or_above[d] = #(digit >= d)
  digit = jnp.sum(at_or_above >= k, dtype=jnp.int32) - 1
  digit = jnp.maximum(digit, 0)  # k <= 0: any digit; the caller keeps nothing then.
  above = at_or_above[digit] - hist[digit]
  return digit, above


def _kth_largest(keys: Sequence[jax.Array], active: Sequence[jax.Array] | None, k: jax.Array):
  """The k-th largest ``uint32`` key among the active entries, ``#(key > it)`` and ``#(key == it)``."""
  high = [key >> _DIGIT_BITS for key in keys]
  hist = sum(_histogram(h, None if active is None else a)
             for h, a in zip(high, active or [None] * len(keys)))
  high_digit, above_high = _select_digit(hist, k)
  in_bucket = [h == high_digit for h in high]
  if active is not None:
    in_bucket = [b & a for b, a in zip(in_bucket, active)]
  hist = sum(_histogram(key & _DIGIT_MASK, b) for key, b in zip(keys, in_bucket))
  low_digit, above_low = _select_digit(hist, k - above_high)
  threshold = (high_digit.astype(jnp.uint32) << _DIGIT_BITS) | low_digit.astype(jnp.uint32)
  return threshold, above_high + above_low, hist[low_digit]


def _positions(shape: tuple[int, ...], offset: int) -> jax.Array:
  """Flat index of every entry plus ``offset``, from per-axis iotas (no reshape: sharding is kept)."""
  pos = jnp.full(shape, offset, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    pos = pos + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  return pos


def top_k_masks(scores: Sequence[jax.Array], k: jax.Array | int) -> list[jax.Array]:
  """Boolean masks keeping exactly the ``k`` highest scores over all arrays together.

  Args:
    scores: floating-point arrays of any shapes, the leaves taking part in one selection.
    k: how many entries to keep over all arrays, an int or an integer scalar array (may be traced).
      Values below 0 keep nothing and values above the total size keep everything.

  Returns:
    One boolean mask per input, of the input's shape, with ``clip(k, 0, total)`` ``True`` entries in
    total: every score above the k-th largest, and the ties at the k-th largest in position order.

  Raises:
    ValueError: if the arrays hold ``2**31`` or more entries together.
  """
  if not scores:
    return []
  sizes = [int(s.size) for s in scores]
  total = sum(sizes)
  if total >= 2**31:
    raise ValueError(f"top_k_masks supports fewer than 2**31 entries in one selection, got {total}.")
  keys = [ordered_key(s) for s in scores]
  k = jnp.clip(jnp.asarray(k, jnp.int32), 0, total)
  threshold, num_greater, num_ties = _kth_largest(keys, None, k)
  needed = k - num_greater  # ties to keep: 0 <= needed <= num_ties.
  ties = [key == threshold for key in keys]
  offsets = [sum(sizes[:i]) for i in range(len(sizes))]

  def tie_cut() -> jax.Array:
    # Keep the `needed` tied entries of smallest position: the largest keys of ~position.
    flipped = [~_positions(key.shape, off) for key, off in zip(keys, offsets)]
    cut, _, _ = _kth_largest(flipped, ties, needed)
    return ~cut  # the largest position kept

  last_kept = cond(needed < num_ties, tie_cut, lambda: jnp.uint32(total))
  keep_any_tie = needed > 0
  return [
      (key > threshold) | (tie & keep_any_tie & (_positions(key.shape, off) <= last_kept))
      for key, tie, off in zip(keys, ties, offsets)
  ]


def top_k_mask(scores: jax.Array, k: jax.Array | int) -> jax.Array:
  """Boolean mask of ``scores``' shape keeping exactly its ``k`` highest entries (see `top_k_masks`)."""
  return top_k_masks([scores], k)[0]
