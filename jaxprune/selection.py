"""Exact top-k selection by counting: a radix select, without sorting.

The k-th largest score is found digit by digit on an order-preserving ``uint32`` key of each score.
Each pass is one reduction: a histogram of one digit over the entries still in play (a scatter-add).
Two passes of 16-bit digits (65,536 bins) give the exact threshold, so the cost is O(size) per leaf,
nothing is sorted, and no array larger than a leaf is built. With many independent selections in
one call (segments: one per leaf for layer-wise pruning) the digits narrow (12, 8, then 4 bits, so
three, four or eight passes), keeping the histograms of all segments within ``2**20`` bins.
Because every pass is a reduction, the same code runs when the scores are sharded across devices (each device counts its shard and XLA adds
the histograms), and a global selection over many leaves adds up per-leaf histograms: the scores of
different leaves are never concatenated.

Ties at the threshold are broken by position (lower flat index first; in a global selection, earlier
leaves first) with the same radix select run on the positions of the tied entries, so the number of
kept entries is exact whatever the ties, all-equal scores included. That second select runs only when
the ties straddle the threshold (``lax.cond``), which for continuous scores is almost never.

NaN scores. Every NaN, whatever its sign bit or payload, ranks above ``-inf`` and below every other
score (``-inf < NaN < -3.4e38 < ... < +inf``); all NaNs tie with each other. The pruners mark the
weights that must stay pruned with a score of ``-inf``, so this is the one placement under which a
NaN score (a custom score that overflowed: ``0 * inf``, ``inf - inf``, ``0 / 0``) can neither keep its
weight ahead of a weight with a real score, nor push out a real score, nor revive a weight marked
``-inf`` while the count is exact: NaN-scored weights are the first to go among the live ones. (A NaN
above ``+inf`` would keep garbage ahead of every real score; a NaN below ``-inf`` would prune it after
the already-pruned weights, reviving those.) On common CPUs a NaN produced by an invalid operation
has its sign bit set, so the rule is applied to both signs alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
import jax.numpy as jnp

from jaxprune.typing import ArrayLike

__all__ = ["ordered_key", "top_k_mask", "top_k_masks", "cond"]

_MAX_BINS = 1 << 20  # histogram bins of all segments together, per pass

T = TypeVar("T")


def cond(pred: ArrayLike, true_fn: Callable[[], T], false_fn: Callable[[], T]) -> T:
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
    A ``uint32`` array of the same shape with ``key(a) < key(b)`` iff ``a < b`` for non-NaN scores;
    ``-0.0`` and ``+0.0`` get the same key, and subnormals keep their order (the keys come from bit
    tests, which XLA's flush-to-zero compares on CPU would not give). Every NaN (either sign, any payload) gets one key, above
    the key of ``-inf`` and below that of every other score: ``key(-inf) = 0``, ``key(NaN) = 1``,
    ``key(-3.4028235e38) = 0x00800000`` (see the module docstring for why).
  """
  # Bit tests, not float compares: XLA on CPU treats subnormals as zero in compares, and the keys
  # must follow IEEE order exactly (-1e-45 < 0).
  bits = jax.lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.uint32)
  sign = jnp.uint32(1 << 31)
  magnitude = bits & jnp.uint32(0x7FFFFFFF)
  bits = jnp.where(magnitude == jnp.uint32(0), jnp.uint32(0), bits)  # one key for -0.0 and +0.0
  key = jnp.where((bits & sign) != jnp.uint32(0), ~bits, bits | sign)
  # Finite scores and +inf have keys >= 0x00800000; the keys below are those of -inf (0x007fffff) and
  # of NaNs with the sign bit set, so -inf -> 0 and every NaN -> 1 keep the order of everything else.
  key = jnp.where(bits == jnp.uint32(0xFF800000), jnp.uint32(0), key)
  return jnp.where(magnitude > jnp.uint32(0x7F800000), jnp.uint32(1), key)


def _digit_widths(num_segments: int) -> tuple[int, ...]:
  """The digit widths of the radix select, most significant first, summing to 32 bits.

  16-bit digits (two passes) while the histograms of all segments fit in ``2**20`` bins (4 MiB of
  counts); narrower digits, and more passes, as segments are added, so the histograms' memory stays
  bounded instead of growing by 65,536 bins per segment (one segment per leaf for layer-wise
  pruning, one per layer of a stacked leaf).
  """
  bits = 16
  while bits > 4 and num_segments << bits > _MAX_BINS:
    bits -= 4
  widths = [bits] * (32 // bits)
  if 32 % bits:
    widths.append(32 % bits)
  return tuple(widths)


def _segment_histograms(
  digits: Sequence[jax.Array],
  weights: Sequence[jax.Array | None],
  segments: Sequence[int],
  num_segments: int,
  num_bins: int,
) -> jax.Array:
  """Counts of each digit value per segment, shape ``(num_segments, num_bins)``.

  Every array adds its (boolean-weighted) counts into its segment's row of one buffer; no array
  larger than a leaf is built.
  """
  hist = jnp.zeros(num_segments * num_bins, jnp.int32)
  for d, w, seg in zip(digits, weights, segments):
    ones = jnp.ones(d.shape, jnp.int32) if w is None else w.astype(jnp.int32)
    index = d.astype(jnp.int32) + jnp.int32(seg * num_bins)
    hist = hist.at[index].add(ones, mode="promise_in_bounds")
  return hist.reshape(num_segments, num_bins)


def _select_digit(hist: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per segment: the largest digit ``d`` with ``#(digit >= d) >= k``, ``#(digit > d)``, ``#(digit == d)``."""
  at_or_above = jnp.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # at_or_above[s, d] = #(digit >= d)
  digit = jnp.sum(at_or_above >= k[:, None], axis=1, dtype=jnp.int32) - 1
  digit = jnp.maximum(digit, 0)[:, None]  # k <= 0: any digit; the caller keeps nothing then.
  count = jnp.take_along_axis(hist, digit, axis=1)[:, 0]
  above = jnp.take_along_axis(at_or_above, digit, axis=1)[:, 0] - count
  return digit[:, 0], above, count


def _kth_largest(
  keys: Sequence[jax.Array],
  active: Sequence[jax.Array] | None,
  k: jax.Array,
  segments: Sequence[int],
  num_segments: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per segment: the k-th largest ``uint32`` key among the active entries, ``#(key > it)`` and
  ``#(key == it)``; ``k`` has one entry per segment.

  One histogram pass per digit (`_digit_widths`), each over the entries whose higher digits equal
  those of the threshold found so far.
  """
  weights: list[jax.Array | None] = [None] * len(keys) if active is None else list(active)
  prefix = jnp.zeros(num_segments, jnp.uint32)  # the threshold's digits found so far
  above = jnp.zeros(num_segments, jnp.int32)  # #(key > prefix's bucket)
  count = above  # #(key in the threshold's bucket), set by every pass
  done = 0  # bits of the threshold found
  for bits in _digit_widths(num_segments):
    shift = 32 - done - bits
    digits = [(key >> shift) & jnp.uint32((1 << bits) - 1) for key in keys]
    if done:
      in_bucket = [(key >> (32 - done)) == prefix[seg] for key, seg in zip(keys, segments)]
      w_pass: list[jax.Array | None] = [
        b if a is None else b & a for b, a in zip(in_bucket, weights)
      ]
    else:
      w_pass = list(weights)
    hist = _segment_histograms(digits, w_pass, segments, num_segments, 1 << bits)
    digit, above_digit, count = _select_digit(hist, k - above)
    above = above + above_digit
    prefix = (prefix << bits) | digit.astype(jnp.uint32)
    done += bits
  return prefix, above, count


def _positions(shape: tuple[int, ...], offset: int) -> jax.Array:
  """Flat index of every entry plus ``offset``, from per-axis iotas (no reshape: sharding is kept)."""
  pos = jnp.full(shape, offset, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    pos = pos + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  return pos


def top_k_masks(
  scores: Sequence[jax.Array],
  k: ArrayLike | Sequence[ArrayLike],
  *,
  segments: Sequence[int] | None = None,
) -> list[jax.Array]:
  """Boolean masks keeping exactly the ``k`` highest scores of each segment.

  By default all arrays form one segment: one global selection over all of them together. With
  ``segments`` (a segment index per array, ``0 .. S-1``) several independent selections run in one
  pass, e.g. one per leaf for layer-wise pruning; ``k`` then has one entry per segment. Batching
  them shares the bookkeeping, so the program has a handful of operations per array instead of a
  selection's worth.

  Args:
    scores: floating-point arrays of any shapes.
    k: how many entries to keep: an int or integer scalar array for one segment, else a sequence or
      1-D array with one entry per segment (may be traced). Values below 0 keep nothing and values
      above the segment's size keep everything.
    segments: the segment of each array; ``None`` puts all arrays in segment 0.

  Returns:
    One boolean mask per input, of the input's shape. Each segment keeps ``clip(k, 0, size)``
    entries: every score above its k-th largest, and the ties at the k-th largest in position order
    (position runs through the segment's arrays in the order given). Scores are ranked as by
    `ordered_key`: ``-inf < NaN < every finite score < +inf``, NaNs of either sign alike, so NaN
    scores never change how many entries are kept, and an entry scored ``-inf`` is kept only when
    ``k`` exceeds the number of entries of its segment scored above ``-inf`` (NaNs included).

  Raises:
    ValueError: if a segment holds ``2**31`` or more entries, or ``segments`` does not match.
  """
  if not scores:
    return []
  segments = [0] * len(scores) if segments is None else [int(s) for s in segments]
  if len(segments) != len(scores):
    raise ValueError(f"top_k_masks: {len(segments)} segment indices for {len(scores)} arrays.")
  num_segments = max(segments) + 1
  sizes = [int(s.size) for s in scores]
  totals = [0] * num_segments
  offsets = []
  for size, seg in zip(sizes, segments):
    offsets.append(totals[seg])
    totals[seg] += size
  if max(totals) >= 2**31:
    raise ValueError(
      f"top_k_masks supports fewer than 2**31 entries per segment, got {max(totals)}."
    )
  k = (
    jnp.stack([jnp.asarray(v, jnp.int32) for v in k])
    if isinstance(k, (list, tuple))
    else (jnp.asarray(k, jnp.int32))
  )
  k = jnp.broadcast_to(k.reshape(-1), (num_segments,))
  k = jnp.clip(k, 0, jnp.asarray(totals, jnp.int32))
  keys = [ordered_key(s) for s in scores]
  threshold, num_greater, num_ties = _kth_largest(keys, None, k, segments, num_segments)
  needed = k - num_greater  # ties to keep per segment: 0 <= needed <= num_ties.
  ties = [key == threshold[seg] for key, seg in zip(keys, segments)]

  def tie_cut() -> jax.Array:
    # Keep each segment's `needed` tied entries of smallest position: the largest keys of ~position.
    flipped = [~_positions(key.shape, off) for key, off in zip(keys, offsets)]
    cut, _, _ = _kth_largest(flipped, ties, needed, segments, num_segments)
    return ~cut  # per segment, the largest position kept

  last_kept = cond(jnp.any(needed < num_ties), tie_cut, lambda: jnp.asarray(totals, jnp.uint32))
  keep_any_tie = needed > 0
  return [
    (key > threshold[seg])
    | (tie & keep_any_tie[seg] & (_positions(key.shape, off) <= last_kept[seg]))
    for key, tie, off, seg in zip(keys, ties, offsets, segments)
  ]


def top_k_mask(scores: jax.Array, k: ArrayLike) -> jax.Array:
  """Boolean mask of ``scores``' shape keeping exactly its ``k`` highest entries (see `top_k_masks`)."""
  return top_k_masks([scores], k)[0]
