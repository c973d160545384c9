"""Property-based tests of the selection: exact counts and the right entries, whatever the ties."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxprune
from jaxprune import selection

SETTINGS = settings(max_examples=40, deadline=None)

# Shapes come from small pools (sizes 1, odd, prime, 3-d): every new shape is a new compilation,
# and the values, k and ties are what the properties are about.
shapes = st.sampled_from([(1,), (7,), (3, 5), (8, 9), (2, 3, 4), (9, 9, 9)])
SHAPE_LISTS = [((5,),), ((3, 5), (7,)), ((1,), (2, 3, 4), (8, 9)), ((7,), (7,), (3, 5), (1,))]
MATRIX_SHAPES = [(1, 1), (3, 8), (8, 5), (2, 3, 4), (7, 1, 6)]


@st.composite
def scores_with_ties(draw, shape=None):
  shape = draw(shapes) if shape is None else shape
  # Few distinct values give many ties; occasionally all equal; signed zeros and infinities included.
  palette = draw(
    st.lists(
      st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-30, -3.0, np.inf, -np.inf, 7.25]),
      min_size=1,
      max_size=4,
    )
  )
  values = draw(hnp.arrays(np.float32, shape, elements=st.sampled_from(palette)))
  return values


def reference_top_k(arrays, k):
  """Keep the k largest in (value desc, position asc) order; positions run across arrays."""
  flat = np.concatenate([a.ravel() for a in arrays]).astype(np.float64)
  flat = np.where(flat == 0, 0.0, flat)  # -0.0 ties with +0.0
  order = sorted(range(flat.size), key=lambda i: (-flat[i], i))
  keep = np.zeros(flat.size, bool)
  keep[order[:k]] = True
  out, start = [], 0
  for a in arrays:
    out.append(keep[start : start + a.size].reshape(a.shape))
    start += a.size
  return out


@SETTINGS
@given(scores=scores_with_ties(), data=st.data())
def test_top_k_mask_matches_sorted_reference(scores, data):
  k = data.draw(st.integers(0, scores.size))
  mask = np.asarray(jax.jit(selection.top_k_mask)(jnp.asarray(scores), k))
  assert mask.sum() == k
  np.testing.assert_array_equal(mask, reference_top_k([scores], k)[0])


@SETTINGS
@given(data=st.data())
def test_global_top_k_spans_arrays_without_concatenating(data):
  arrays = [data.draw(scores_with_ties(s)) for s in data.draw(st.sampled_from(SHAPE_LISTS))]
  total = sum(a.size for a in arrays)
  k = data.draw(st.integers(0, total))
  masks = jax.jit(selection.top_k_masks)([jnp.asarray(a) for a in arrays], k)
  assert sum(int(np.asarray(m).sum()) for m in masks) == k
  for got, want in zip(masks, reference_top_k(arrays, k)):
    np.testing.assert_array_equal(np.asarray(got), want)


@SETTINGS
@given(
  values=hnp.arrays(
    np.float32,
    st.sampled_from([1, 2, 17, 300]),
    elements=st.floats(-1e6, 1e6, allow_nan=False, width=32),
  ),
  data=st.data(),
)
def test_top_k_on_continuous_values(values, data):
  k = data.draw(st.integers(0, values.size))
  mask = np.asarray(jax.jit(selection.top_k_mask)(jnp.asarray(values), k))
  np.testing.assert_array_equal(mask, reference_top_k([values], k)[0])


def test_digit_widths_keep_the_histograms_bounded():
  assert selection._digit_widths(1) == (16, 16)
  assert selection._digit_widths(16) == (16, 16)
  assert selection._digit_widths(17) == (12, 12, 8)
  assert selection._digit_widths(256) == (12, 12, 8)
  assert selection._digit_widths(257) == (8, 8, 8, 8)
  assert selection._digit_widths(5000) == (4,) * 8
  for segments in (1, 16, 17, 256, 257, 4096, 4097, 65536):
    assert sum(selection._digit_widths(segments)) == 32
    assert segments << max(selection._digit_widths(segments)) <= max(
      selection._MAX_BINS, segments * 16
    )


@pytest.mark.parametrize("max_bins", [1 << 20, 1 << 13, 1 << 10, 1 << 5])  # 16, 12, 8, 4-bit digits
def test_segmented_selection_is_exact_at_every_digit_width(max_bins, monkeypatch):
  # Three segments over five arrays, with ties, signed zeros, infinities and NaNs; the narrower
  # digits run 3, 4 or 8 passes and must keep exactly the same entries as two 16-bit passes.
  monkeypatch.setattr(selection, "_MAX_BINS", max_bins)
  rng = np.random.default_rng(0)
  palette = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, np.inf, -np.inf, 7.25], np.float32)
  arrays = [palette[rng.integers(0, palette.size, s)] for s in [(5, 7), (11,), (3, 4), (6,), (9,)]]
  arrays.append(rng.normal(size=(4, 5)).astype(np.float32))
  segments = [0, 1, 0, 2, 1, 2]
  ks = [20, 7, 13]
  masks = selection.top_k_masks([jnp.asarray(a) for a in arrays], ks, segments=segments)
  for seg, k in enumerate(ks):
    members = [i for i, s in enumerate(segments) if s == seg]
    want = reference_top_k([arrays[i] for i in members], k)
    for i, w in zip(members, want):
      np.testing.assert_array_equal(np.asarray(masks[i]), w)


# The bracketed select (a sample predicts the threshold's upper digit, one pass resolves it)
# applies to leaves of at least `_MIN_SAMPLED` entries and selections of at least
# `_ENTRIES_PER_BIN` entries per bin; both lowered here so that small arrays take it.
BRACKET_SHAPES = [(64, 8), (48, 3, 4), (16, 40), (5, 64), (300,)]


def _count_passes(monkeypatch):
  """Records the radix passes (`_histograms` calls) by the bits of the key they start at."""
  calls = []
  original = selection._histograms
  monkeypatch.setattr(
    selection, "_histograms", lambda *a, **k: calls.append(a[4]) or original(*a, **k)
  )
  return calls


@settings(max_examples=20, deadline=None)  # (each example compiles its shapes' eager ops)
@given(data=st.data())
def test_bracketed_selection_is_exact(data):
  # Global and per-leaf segments over leaves sampled in pieces, whatever the values: ties,
  # signed zeros, infinities, NaNs, and k from 0 to the size.
  shapes_ = data.draw(st.lists(st.sampled_from(BRACKET_SHAPES), min_size=1, max_size=3))
  continuous = data.draw(st.booleans())
  arrays = []
  for shape in shapes_:
    if continuous:
      seed = data.draw(st.integers(0, 2**16))
      arrays.append(np.random.default_rng(seed).normal(size=shape).astype(np.float32))
    else:
      arrays.append(data.draw(scores_with_ties(shape)))
  layerwise = data.draw(st.booleans())
  segments = list(range(len(arrays))) if layerwise else [0] * len(arrays)
  sizes = [a.size for a in arrays] if layerwise else [sum(a.size for a in arrays)]
  ks = [data.draw(st.integers(0, n)) for n in sizes]
  piece_size = data.draw(st.sampled_from([None, 40]))
  old = selection._MIN_SAMPLED, selection._ENTRIES_PER_BIN
  selection._MIN_SAMPLED, selection._ENTRIES_PER_BIN = 64, 1e-6
  try:
    masks = selection.top_k_masks(
      [jnp.asarray(a) for a in arrays], ks, segments=segments, piece_size=piece_size
    )
  finally:
    selection._MIN_SAMPLED, selection._ENTRIES_PER_BIN = old
  for seg, k in enumerate(ks):
    members = [i for i, s in enumerate(segments) if s == seg]
    for i, want in zip(members, reference_top_k([arrays[i] for i in members], k)):
      np.testing.assert_array_equal(np.asarray(masks[i]), want)


@pytest.mark.parametrize("case", ["all -inf", "-inf and NaN", "mostly -inf"])
def test_bracketed_selection_of_pruned_and_nan_scores(case, monkeypatch):
  # The pass skips the keys of -inf and counts them from the size; where the bracket starts at
  # the lowest digit (-inf and NaN), they must go back into its first bin. NaN ranks above -inf.
  monkeypatch.setattr(selection, "_MIN_SAMPLED", 64)
  monkeypatch.setattr(selection, "_ENTRIES_PER_BIN", 1e-6)
  rng = np.random.default_rng(0)
  x = np.full((64, 8), -np.inf, np.float32)
  if case == "-inf and NaN":
    x[rng.random(x.shape) < 0.2] = np.nan
  if case == "mostly -inf":
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.1] = rng.normal(size=x.shape)[rng.random(x.shape) < 0.1][0]
  ranked = np.where(np.isnan(x), -3.5e38, x.astype(np.float64))  # -inf < NaN < every float32
  for k in [0, 1, 5, 40, 60, 100, 511, 512]:
    mask = np.asarray(selection.top_k_mask(jnp.asarray(x), k))
    np.testing.assert_array_equal(mask, reference_top_k([ranked], k)[0], err_msg=f"k={k}")


def _sorted_top_k(scores, k):
  """`reference_top_k` for one array without NaNs, by NumPy's stable sort (for large arrays)."""
  flat = np.where(scores == 0, 0.0, scores).ravel()
  keep = np.zeros(flat.size, bool)
  keep[np.argsort(-flat, kind="stable")[:k]] = True
  return keep.reshape(scores.shape)


@pytest.mark.parametrize("jit", [False, True], ids=["nojit", "jit"])
def test_bracketed_selection_paths(jit, monkeypatch):
  # Each way the bracketed pass ends, on one leaf of 2**20 entries, checked against a sort: the
  # threshold inside the sample's bracket (no second pass), a mask update keeping exactly the
  # live entries (all others -inf: the threshold's digit is kept whole, no second pass), and a
  # sample that misses (rows 0, 16, 32, ... hold the large values: one more radix pass).
  monkeypatch.setattr(selection, "_ENTRIES_PER_BIN", 1)
  calls = _count_passes(monkeypatch)
  rng = np.random.default_rng(0)
  normal = rng.normal(size=(8192, 128)).astype(np.float32)
  k = normal.size // 10
  live = _sorted_top_k(np.abs(normal), k)
  pruned = np.where(live, np.abs(normal) + 1e-3 * rng.normal(size=normal.shape), -np.inf)
  misleading = np.abs(normal) * 1e-3
  misleading[::16] += 1.0
  top_k = jax.jit(selection.top_k_mask, static_argnums=1) if jit else selection.top_k_mask
  for scores, passes in [
    (np.abs(normal), 0),
    (pruned.astype(np.float32), 0),
    (misleading, 1),
  ]:
    calls.clear()
    mask = np.asarray(top_k(jnp.asarray(scores), k))
    np.testing.assert_array_equal(mask, _sorted_top_k(scores, k))
    if not jit:  # (under jit both branches of the lax.cond are traced)
      assert calls == [16] * passes  # the second radix pass starts at bit 16


def test_bracketed_selection_is_not_used_for_small_leaves_or_many_segments(monkeypatch):
  # Below `_MIN_SAMPLED` entries, or with too many segments for a bracket of two upper digits
  # each, or fewer than `_ENTRIES_PER_BIN` entries per bin of the bracketed histograms, the
  # selection runs the plain radix passes (two 16-bit digits here, from bits 0 and 16).
  calls = _count_passes(monkeypatch)
  selection.top_k_mask(jnp.arange(1000.0), 10)
  assert calls == [0, 16]
  calls.clear()
  big = jnp.asarray(np.random.default_rng(0).normal(size=(512, 128)).astype(np.float32))
  selection.top_k_masks([big] * 8, [5] * 8, segments=range(8))
  assert calls == [0, 16]
  calls.clear()
  selection.top_k_masks([big] * 2, [5] * 2, segments=range(2))  # 2**17 entries: too few
  assert calls == [0, 16]
  calls.clear()
  monkeypatch.setattr(selection, "_ENTRIES_PER_BIN", 1e-6)
  selection.top_k_masks([big] * 2, [5] * 2, segments=range(2))
  assert calls == []


@pytest.mark.parametrize("jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("ties, keep", [(3, 1), (3, 2), (9, 4), (9, 5), (9, 8)])
def test_ties_at_the_threshold_are_cut_by_position(jit, ties, keep, monkeypatch):
  # Keeping up to four of the tied keys, min-reductions find their positions (no radix pass on
  # the positions); more, the radix select on the positions. Both keep the first ones.
  calls = _count_passes(monkeypatch)
  rng = np.random.default_rng(1)
  scores = rng.permutation(np.arange(2000, dtype=np.float32)) + 10.0
  tied = rng.choice(2000, ties, replace=False)
  scores[tied] = 5.0
  k = 2000 - ties + keep  # every score above 5.0, and `keep` of the tied ones
  top_k = jax.jit(selection.top_k_mask, static_argnums=1) if jit else selection.top_k_mask
  mask = np.asarray(top_k(jnp.asarray(scores), k))
  np.testing.assert_array_equal(mask, reference_top_k([scores], k)[0])
  np.testing.assert_array_equal(np.flatnonzero(mask & (scores == 5.0)), np.sort(tied)[:keep])
  if not jit:
    assert calls == ([0, 16] if keep <= selection._TIE_ROUNDS else [0, 16, 0, 16])


def test_out_of_range_k_is_clipped_to_the_size():
  x = jnp.arange(5.0)
  assert int(selection.top_k_mask(x, -3).sum()) == 0
  assert int(selection.top_k_mask(x, 9).sum()) == 5


def test_ordered_key_preserves_order():
  x = jnp.array([-np.inf, -2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0, np.inf], jnp.float32)
  keys = np.asarray(selection.ordered_key(x)).astype(np.int64)
  assert np.all(np.diff(keys) >= 0)
  assert keys[3] == keys[4]  # -0.0 and +0.0 share a key
  assert np.all(np.diff(np.delete(keys, 3)) > 0)


@SETTINGS
@given(
  shape=st.sampled_from(MATRIX_SHAPES),
  sparsity=st.floats(0.0, 0.999),
  seed=st.integers(0, 2**16),
  ties=st.booleans(),
)
def test_layerwise_pruning_prunes_exactly_round_s_times_size(shape, sparsity, seed, ties):
  w = jax.random.normal(jax.random.key(seed), shape)
  if ties:
    w = jnp.round(w)  # many equal magnitudes, zeros included
  params = {"w": w}
  tx = jaxprune.magnitude_pruning(sparsity)
  state = tx.init(params)
  updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  mask = np.asarray(jaxprune.get_masks(state)["w"])
  assert (~mask).sum() == round(sparsity * math.prod(shape))
  # Kept magnitudes dominate pruned ones.
  a = np.abs(np.asarray(w))
  if mask.any() and (~mask).any():
    assert a[mask].min() >= a[~mask].max()


@SETTINGS
@given(
  shapes_=st.sampled_from([((1, 1),), ((3, 8), (8, 5)), ((2, 2), (1, 7), (8, 8))]),
  sparsity=st.floats(0.0, 0.999),
  seed=st.integers(0, 2**16),
)
def test_global_pruning_prunes_exactly_over_all_leaves(shapes_, sparsity, seed):
  keys = jax.random.split(jax.random.key(seed), len(shapes_))
  params = {
    f"w{i}": jnp.round(2 * jax.random.normal(k, s)) for i, (k, s) in enumerate(zip(keys, shapes_))
  }
  tx = jaxprune.magnitude_pruning(sparsity, distribution="global")
  state = tx.init(params)
  _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  masks = jaxprune.get_masks(state)
  total = sum(math.prod(s) for s in shapes_)
  assert sum(int((~np.asarray(m)).sum()) for m in masks.values()) == round(sparsity * total)
  kept = np.concatenate([np.abs(np.asarray(params[k]))[np.asarray(m)] for k, m in masks.items()])
  pruned = np.concatenate([np.abs(np.asarray(params[k]))[~np.asarray(m)] for k, m in masks.items()])
  if kept.size and pruned.size:
    assert kept.min() >= pruned.max()


@SETTINGS
@given(
  rows=st.sampled_from([1, 3, 6]),
  groups=st.sampled_from([1, 4]),
  nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 8), (4, 4)]),
  axis=st.sampled_from([0, 1]),
  ties=st.booleans(),
  seed=st.integers(0, 2**16),
)
def test_n_m_keeps_exactly_n_per_group(rows, groups, nm, axis, ties, seed):
  n, m = nm
  shape = (groups * m, rows) if axis == 0 else (rows, groups * m)
  w = jax.random.normal(jax.random.key(seed), shape)
  if ties:
    w = jnp.round(w)
  mask = np.asarray(jaxprune.patterns.n_m(n, m, axis=axis).mask(jnp.abs(w)))
  moved = np.moveaxis(mask, axis, -1).reshape(-1, m)
  assert np.all(moved.sum(-1) == n)
  a = np.moveaxis(np.abs(np.asarray(w)), axis, -1).reshape(-1, m)
  for keep, vals in zip(moved, a):
    if keep.all():
      continue
    assert vals[keep].min() >= vals[~keep].max()


@SETTINGS
@given(
  blocks=st.tuples(st.integers(1, 4), st.integers(1, 4)),
  reps=st.sampled_from([(1, 1), (2, 3), (4, 4)]),
  sparsity=st.floats(0, 0.99),
  seed=st.integers(0, 2**16),
)
def test_block_pattern_prunes_whole_blocks_exactly(blocks, reps, sparsity, seed):
  shape = (blocks[0] * reps[0], blocks[1] * reps[1])
  params = {"w": jax.random.normal(jax.random.key(seed), shape)}
  tx = jaxprune.magnitude_pruning(sparsity, pattern=jaxprune.patterns.block(blocks))
  state = tx.init(params)
  _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  mask = np.asarray(jaxprune.get_masks(state)["w"])
  tiles = mask.reshape(reps[0], blocks[0], reps[1], blocks[1])
  per_block = tiles.all(axis=(1, 3))
  assert np.array_equal(per_block, tiles.any(axis=(1, 3)))  # every block all kept or all pruned
  assert (~per_block).sum() == round(sparsity * reps[0] * reps[1])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_channel_pattern_prunes_whole_channels(axis):
  w = jax.random.normal(jax.random.key(0), (6, 10))
  params = {"w": w}
  tx = jaxprune.magnitude_pruning(0.5, pattern=jaxprune.patterns.channel(axis))
  state = tx.init(params)
  _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  mask = np.asarray(jaxprune.get_masks(state)["w"])
  per = np.moveaxis(mask, axis, 0).reshape(mask.shape[axis], -1)
  assert np.all(per.all(1) == per.any(1))
  assert (~per.all(1)).sum() == round(0.5 * mask.shape[axis])
  means = np.moveaxis(np.abs(np.asarray(w)), axis, 0).reshape(mask.shape[axis], -1).mean(1)
  assert means[per.all(1)].min() >= means[~per.all(1)].max()
