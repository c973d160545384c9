"""Reliability of the building blocks: NaN scores, 0-d packed masks, allocation edge cases and
checks, and leaf selection (malformed patterns, the default selection, the ready-made selectors)."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune import allocation, leaves, masks, selection

SETTINGS = settings(max_examples=40, deadline=None)

POS_NAN = np.array(0x7FC00000, np.uint32).view(np.float32)
NEG_NAN = np.array(0xFFC00000, np.uint32).view(np.float32)
with np.errstate(invalid="ignore"):
  OVERFLOW_NAN = np.float32(0) * np.float32(np.inf)  # an invalid operation's NaN (negative here)
NEG_NAN_PAYLOAD = np.array(0xFF800001, np.uint32).view(np.float32)  # smallest negative-NaN bits
POS_NAN_PAYLOAD = np.array(0x7FFFFFFF, np.uint32).view(np.float32)
NANS = [POS_NAN, NEG_NAN, OVERFLOW_NAN, NEG_NAN_PAYLOAD, POS_NAN_PAYLOAD]
FMAX = np.finfo(np.float32).max


# ----------------------------------------------------------------------------------- NaN ranking


def test_nan_bit_patterns_have_both_signs():
  signs = {bool(np.array(x, np.float32).view(np.uint32) >> 31) for x in NANS}
  assert signs == {True, False} and all(np.isnan(x) for x in NANS)


def test_ordered_key_ranks_every_nan_between_minus_inf_and_finite():
  finite = np.array(
    [-FMAX, -1.0, -1e-30, -1e-45, -0.0, 0.0, 1e-45, 1e-30, 1.0, FMAX, np.inf], np.float32
  )  # +-1e-45: subnormals, which XLA's CPU compares flush to zero
  for fn in (selection.ordered_key, jax.jit(selection.ordered_key)):
    keys = np.asarray(fn(jnp.asarray(finite)))
    assert np.all(np.diff(keys.astype(np.int64)[[0, 1, 2, 3, 4, 6, 7, 8, 9, 10]]) > 0)
    assert keys[4] == keys[5]  # -0.0 and +0.0
  nan_keys = np.asarray(selection.ordered_key(jnp.asarray(np.array(NANS, np.float32))))
  minus_inf = np.asarray(selection.ordered_key(jnp.asarray(np.float32(-np.inf))))
  assert len(set(nan_keys.tolist())) == 1  # every NaN ties with every NaN
  assert minus_inf < nan_keys[0] < keys.min()
  # bf16 / f16 NaNs of both signs too.
  for dtype in (jnp.bfloat16, jnp.float16):
    x = jnp.asarray(np.array(NANS, np.float32)).astype(dtype)
    np.testing.assert_array_equal(np.asarray(selection.ordered_key(x)), nan_keys)


def _reference_rank(values: np.ndarray) -> np.ndarray:
  """float64 stand-in for the documented order: -inf < NaN < every float32 score."""
  with np.errstate(invalid="ignore"):
    flat = values.astype(np.float64)
  flat = np.where(flat == 0, 0.0, flat)
  return np.where(np.isnan(flat), -np.finfo(np.float64).max, flat)


def _reference_top_k(arrays, k):
  flat = np.concatenate([_reference_rank(a).ravel() for a in arrays])
  order = sorted(range(flat.size), key=lambda i: (-flat[i], i))
  keep = np.zeros(flat.size, bool)
  keep[order[:k]] = True
  out, start = [], 0
  for a in arrays:
    out.append(keep[start : start + a.size].reshape(a.shape))
    start += a.size
  return out


_PALETTE = [0.0, -0.0, 1.0, -1.0, 2.0, -3.0, 1e-45, -1e-45, np.inf, -np.inf, FMAX, -FMAX] + NANS


@st.composite
def _scores_with_nans(draw):
  shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7))
  palette = draw(st.lists(st.sampled_from(_PALETTE), min_size=1, max_size=5))
  idx = draw(hnp.arrays(np.int32, shape, elements=st.integers(0, len(palette) - 1)))
  return np.array(palette, np.float32)[idx]


@SETTINGS
@given(arrays=st.lists(_scores_with_nans(), min_size=1, max_size=3), data=st.data())
def test_top_k_with_nans_of_both_signs_matches_reference(arrays, data):
  total = sum(a.size for a in arrays)
  k = data.draw(st.integers(0, total))
  got = jax.jit(selection.top_k_masks)([jnp.asarray(a) for a in arrays], k)
  want = _reference_top_k(arrays, k)
  assert sum(int(np.asarray(m).sum()) for m in got) == k
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), w)


@pytest.mark.parametrize("nan", NANS, ids=["pos", "neg", "0*inf", "neg_payload", "pos_payload"])
def test_nan_scores_never_revive_pruned_weights(nan):
  # 4 weights already pruned (score -inf), 6 live ones of which 3 overflowed to NaN; keep 5.
  score = np.array(
    [-np.inf, 3.0, nan, -np.inf, 1.0, nan, 2.0, -np.inf, nan, -np.inf, 5.0], np.float32
  )
  for fn in (selection.top_k_mask, jax.jit(selection.top_k_mask)):
    mask = np.asarray(fn(jnp.asarray(score), 5))
    assert mask.sum() == 5
    assert not mask[np.isneginf(score)].any()  # no pruned weight comes back
    assert mask[np.isfinite(score)].all()  # every real score beats a NaN
    assert mask[np.isnan(score)].tolist() == [True, False, False]  # NaN ties: lowest index first
  # Only when k exceeds the live weights do -inf weights come back (exact count).
  mask = np.asarray(selection.top_k_mask(jnp.asarray(score), 8))
  assert mask.sum() == 8 and mask[~np.isneginf(score)].all()


def test_nan_ranking_with_segments():
  a = jnp.asarray(np.array([NEG_NAN, -np.inf, 0.5], np.float32))
  b = jnp.asarray(np.array([[POS_NAN, 1.0], [-np.inf, OVERFLOW_NAN]], np.float32))
  ma, mb = selection.top_k_masks([a, b], [2, 2], segments=[0, 1])
  assert np.asarray(ma).tolist() == [True, False, True]
  assert np.asarray(mb).tolist() == [[True, True], [False, False]]


# -------------------------------------------------------------------------------- packed masks

SHAPES = [(), (1,), (7,), (8,), (3, 9), (2, 3, 17)]


def _random_mask(shape, seed=0):
  return np.random.default_rng(seed).random(shape) < 0.5


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pack_unpack_round_trips_every_shape(shape):
  mask = _random_mask(shape)
  packed = masks.pack(jnp.asarray(mask))
  assert all(leaf.size > 0 for leaf in jax.tree.leaves(packed))  # orbax rejects zero-size arrays
  out = masks.unpack(packed)
  assert out.shape == shape and out.dtype == jnp.bool_
  np.testing.assert_array_equal(np.asarray(out), mask)
  # Under jit, through pytree transport, and with a jitted pack.
  out = jax.jit(lambda m: masks.unpack(masks.pack(m)))(jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(out), mask)
  leaves_, treedef = jax.tree.flatten(jax.jit(masks.pack)(jnp.asarray(mask)))
  restored = jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves_])
  assert isinstance(restored, masks.PackedMask)
  np.testing.assert_array_equal(np.asarray(jax.jit(masks.unpack)(restored)), mask)
  # The projection that pruners apply keeps the param's shape.
  p = jnp.ones(shape)
  assert jnp.where(masks.unpack(packed), p, -p).shape == shape


def test_packed_0d_mask_survives_orbax_checkpoint(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  state = {
    "scalar": masks.pack(jnp.asarray(False)),
    "vec": masks.pack(jnp.asarray(_random_mask((11,)))),
  }
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "ckpt", state)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / "ckpt", state)
  restored = {k: masks.PackedMask(*v) for k, v in restored.items()}
  assert masks.unpack(restored["scalar"]).shape == ()
  assert not bool(masks.unpack(restored["scalar"]))
  np.testing.assert_array_equal(np.asarray(masks.unpack(restored["vec"])), _random_mask((11,)))


# ---------------------------------------------------------------------------------- allocation


@pytest.mark.parametrize("fn", [allocation.erk, allocation.er], ids=["erk", "er"])
def test_erdos_renyi_with_zero_size_leaves(fn):
  shapes = [(0, 5), (16, 8), (3, 0, 2), (8, 4)]
  sizes = [math.prod(s) for s in shapes]
  out = fn(0.75, shapes)
  assert out[0] == 0.0 and out[2] == 0.0
  assert all(0.0 <= v < 1.0 and math.isfinite(v) for v in out)
  kept = sum((1 - v) * n for v, n in zip(out, sizes))
  assert kept == pytest.approx(0.25 * sum(sizes))
  # Same as without the zero-size leaves.
  without = fn(0.75, [(16, 8), (8, 4)])
  np.testing.assert_allclose([out[1], out[3]], without)
  traced = jax.jit(lambda s: jnp.stack(fn(s, shapes)))(0.75)
  assert np.all(np.isfinite(np.asarray(traced)))
  np.testing.assert_allclose(np.asarray(traced), out, rtol=1e-5, atol=1e-6)
  # Only zero-size leaves.
  assert fn(0.5, [(0, 3), (2, 0)]) == [0.0, 0.0]


SHAPES_2 = [(4, 4), (8, 2)]
NAMES_2 = ["Dense_0/kernel", "Dense_1/kernel"]


def test_allocate_passes_good_values_and_builtins():
  assert allocation.allocate("uniform", 0.5, SHAPES_2, NAMES_2, owner="t") == [0.5, 0.5]
  assert allocation.allocate("erk", 0.5, SHAPES_2, NAMES_2, owner="t") == allocation.erk(
    0.5, SHAPES_2
  )
  assert allocation.allocate("global", 0.5, SHAPES_2, NAMES_2, owner="t") == [None, None]
  assert allocation.allocate(
    lambda s, shapes: np.array([0.0, 0.9]), 0.5, SHAPES_2, NAMES_2, owner="t"
  ) == [0.0, pytest.approx(0.9)]
  assert (
    allocation.allocate(lambda s, shapes: (jnp.float32(0.1), 0), 0.5, SHAPES_2, owner="t")[1] == 0
  )


@pytest.mark.parametrize(
  "bad",
  [
    1.5,
    1.0,
    -0.1,
    float("nan"),
    np.float32("nan"),
    jnp.asarray(1.5),
    "0.5",
    True,
    None,
    jnp.ones(2) * 0.5,
    0.5 + 0.5j,
  ],
  ids=lambda v: repr(v)[:20],
)
def test_allocate_rejects_bad_values_naming_owner_leaf_and_value(bad):
  fn = lambda s, shapes: [0.5, bad]
  with pytest.raises(ValueError) as e:
    allocation.allocate(fn, 0.5, SHAPES_2, NAMES_2, owner="my_pruner")
  msg = str(e.value)
  assert "my_pruner" in msg and "'Dense_1/kernel'" in msg and "[0, 1)" in msg
  if isinstance(bad, float):
    assert repr(bad) in msg


@pytest.mark.parametrize("values", [[0.5], [0.5, 0.5, 0.5], []], ids=len)
def test_allocate_rejects_wrong_number_of_values(values):
  with pytest.raises(
    ValueError, match=rf"my_pruner: .* returned {len(values)} sparsities for 2 leaves"
  ):
    allocation.allocate(lambda s, shapes: values, 0.5, SHAPES_2, NAMES_2, owner="my_pruner")


def test_allocate_rejects_non_sequence_and_unknown_name():
  with pytest.raises(ValueError, match="my_pruner: the allocation .* must return a sequence of 2"):
    allocation.allocate(lambda s, shapes: 0.5, 0.5, SHAPES_2, NAMES_2, owner="my_pruner")
  with pytest.raises(ValueError, match="my_pruner: the allocation .* must return a sequence of 2"):
    allocation.allocate(lambda s, shapes: np.full((2, 1), 0.5), 0.5, SHAPES_2, owner="my_pruner")
  with pytest.raises(ValueError, match="my_pruner: allocate got 1 names for 2 shapes"):
    allocation.allocate("uniform", 0.5, SHAPES_2, NAMES_2[:1], owner="my_pruner")
  with pytest.raises(ValueError, match="unknown distribution 'erkk'"):
    allocation.allocate("erkk", 0.5, SHAPES_2, NAMES_2, owner="my_pruner")


def test_allocate_lets_traced_values_pass():
  def run(s):
    out = allocation.allocate(lambda s, shapes: [s * 3, s], s, SHAPES_2, NAMES_2, owner="t")
    return jnp.stack(out)

  np.testing.assert_allclose(np.asarray(jax.jit(run)(0.5)), [1.5, 0.5])  # unchecked when traced
  out = jax.jit(lambda s: jnp.stack(allocation.allocate("erk", s, SHAPES_2, owner="t")))(0.5)
  np.testing.assert_allclose(np.asarray(out), allocation.erk(0.5, SHAPES_2), rtol=1e-6)
  # A traced 1-D array is split per leaf.
  out = jax.jit(
    lambda s: jnp.stack(
      allocation.allocate(lambda s, sh: jnp.stack([s, s]), s, SHAPES_2, owner="t")
    )
  )(0.25)
  np.testing.assert_allclose(np.asarray(out), [0.25, 0.25])


# ------------------------------------------------------------------------------ leaf selection


@pytest.mark.parametrize("pattern", ["Dense_0/(kernel", "[a-", "*kernel"])
def test_malformed_prune_pattern_names_pattern_and_owner(pattern):
  params = {"Dense_0": {"kernel": jnp.ones((2, 2))}}
  with pytest.raises(ValueError) as e:
    leaves.prunable_paths(params, pattern, owner="magnitude_pruning")
  assert "magnitude_pruning" in str(e.value) and repr(pattern) in str(e.value)
  assert "regular expression" in str(e.value)
  with pytest.raises(ValueError, match="magnitude_pruning"):
    leaves.prunable_paths(params, ["Dense_0/kernel", pattern], owner="magnitude_pruning")


def _flax_like_tree():
  return {
    "params": {
      "Embed_0": {"embedding": jnp.ones((10, 8))},
      "cls_token": jnp.ones((1, 1, 8)),
      "pos_embedding": jnp.ones((1, 5, 8)),
      "Conv_0": {"kernel": jnp.ones((3, 3, 3, 8)), "bias": jnp.ones(8)},
      "LayerNorm_0": {"scale": jnp.ones(8), "bias": jnp.ones(8)},
      "MultiHeadDotProductAttention_0": {
        "query": {"kernel": jnp.ones((8, 2, 4)), "bias": jnp.ones((2, 4))},
        "out": {"kernel": jnp.ones((2, 4, 8)), "bias": jnp.ones(8)},
      },
      "Dense_10": {"kernel": jnp.ones((8, 8)), "bias": jnp.ones(8)},
      "Dense_2": {"kernel": jnp.ones((8, 4)), "bias": jnp.ones(4)},
      "step": jnp.ones((2, 2), jnp.int32),
    }
  }


def test_default_selection_takes_kernels_only():
  tree = _flax_like_tree()
  assert leaves.selected_names(tree) == [
    "params/Conv_0/kernel",
    "params/Dense_10/kernel",
    "params/Dense_2/kernel",
    "params/MultiHeadDotProductAttention_0/out/kernel",
    "params/MultiHeadDotProductAttention_0/query/kernel",
  ]
  flags = leaves.prunable_paths(tree, None, owner="t")
  assert flags == leaves.default_selection(tree)
  assert len(flags) == len(jax.tree.leaves(tree))
  # default_prunable(name, leaf) still works as a per-leaf predicate (the kernel rule).
  assert leaves.default_prunable("params/Dense_2/kernel", jnp.ones((8, 4)))
  assert not leaves.default_prunable("params/Embed_0/embedding", jnp.ones((10, 8)))
  assert not leaves.default_prunable("Dense_2/kernel", jnp.ones(4))
  assert not leaves.default_prunable("Dense_2/kernel", jnp.ones((4, 4), jnp.int32))


def test_default_selection_kernel_names_of_other_libraries():
  haiku = {
    "linear": {"w": jnp.ones((3, 4)), "b": jnp.ones(4)},
    "embed": {"embeddings": jnp.ones((9, 3))},
  }
  assert leaves.selected_names(haiku) == ["linear/w"]
  torchy = {
    "fc1": {"weight": jnp.ones((4, 3)), "bias": jnp.ones(4)},
    "norm": {"weight": jnp.ones(4)},
    "tok": {"table": jnp.ones((9, 4))},
  }
  assert leaves.selected_names(torchy) == ["fc1/weight"]


def test_default_selection_falls_back_without_kernel_names():
  tree = {
    "a": jnp.ones((2, 3)),
    "b": jnp.ones(3),
    "c": jnp.ones((2, 2, 2)),
    "i": jnp.ones((2, 2), int),
  }
  assert leaves.selected_names(tree) == ["a", "c"]
  # A kernel name on a 1-D leaf does not count as a kernel: still the fallback.
  tree = {"kernel": jnp.ones(3), "m": jnp.ones((3, 3))}
  assert leaves.selected_names(tree) == ["m"]
  assert leaves.selected_names({"b": jnp.ones(3)}) == []  # nothing to prune is not an error
  assert leaves.selected_names({}) == []


def test_default_selection_on_nnx_state():
  nnx = pytest.importorskip("flax.nnx")

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(10, 8, rngs=rngs)
      self.norm = nnx.LayerNorm(8, rngs=rngs)
      self.layers = nnx.List([nnx.Linear(8, 8, rngs=rngs) for _ in range(2)])
      self.head = nnx.Linear(8, 3, rngs=rngs)

  state = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
  assert leaves.selected_names(state) == ["head/kernel", "layers/0/kernel", "layers/1/kernel"]
  assert leaves.selected_names(state, leaves.transformer_blocks()) == [
    "layers/0/kernel",
    "layers/1/kernel",
  ]
  # 'head' is a head kernel: last, though it sorts first by name.
  assert leaves.selected_names(state, leaves.inner_kernels()) == ["layers/1/kernel"]


def _mlp(n):
  return {f"Dense_{i}": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)} for i in range(n)}


def test_kernels_except_uses_natural_order():
  tree = _mlp(12)  # tree order: Dense_0, Dense_1, Dense_10, Dense_11, Dense_2, ...
  names = leaves.selected_names(tree, leaves.kernels_except())
  assert sorted(names) == sorted(f"Dense_{i}/kernel" for i in range(1, 11))
  assert "Dense_11/kernel" not in names and "Dense_10/kernel" in names
  assert leaves.selected_names(tree, leaves.inner_kernels()) == names
  assert len(leaves.selected_names(tree, leaves.kernels_except(first=False))) == 11
  assert "Dense_0/kernel" in leaves.selected_names(tree, leaves.kernels_except(first=False))
  assert len(leaves.selected_names(tree, leaves.kernels_except(first=2, last=3))) == 7
  assert "Dense_9/kernel" not in leaves.selected_names(tree, leaves.kernels_except(first=0, last=3))
  assert len(leaves.selected_names(tree, leaves.kernels_except(False, False))) == 12
  cnn = {
    "Conv_0": {"kernel": jnp.ones((3, 3, 3, 4))},
    "Conv_1": {"kernel": jnp.ones((3, 3, 4, 4))},
    "Dense_0": {"kernel": jnp.ones((4, 4))},
    "Dense_1": {"kernel": jnp.ones((4, 2))},
  }
  assert leaves.selected_names(cnn, leaves.inner_kernels()) == ["Conv_1/kernel", "Dense_0/kernel"]


def test_kernels_except_puts_stem_first_and_head_last():
  k = lambda: {"kernel": jnp.ones((4, 4))}
  tree = {
    "classifier": k(),
    "vit": {
      "embeddings": {"patch_embeddings": {"projection": k()}},
      "encoder": {"layer": [{"mlp": k(), "fc": k()}, {"fc": k()}]},
    },
  }
  # By name alone 'classifier' sorts first; it is a head, and the patch embedding is a stem.
  assert leaves.selected_names(tree, leaves.inner_kernels()) == [  # 'fc' in a block: not a head
    "vit/encoder/layer/0/fc/kernel",
    "vit/encoder/layer/0/mlp/kernel",
    "vit/encoder/layer/1/fc/kernel",
  ]
  resnet = {
    "conv_init": k(),
    "ResNetBlock_0": {"Conv_0": k()},
    "ResNetBlock_1": {"Conv_0": k()},
    "Dense_0": k(),
  }
  assert leaves.selected_names(resnet, leaves.inner_kernels()) == [
    "ResNetBlock_0/Conv_0/kernel",
    "ResNetBlock_1/Conv_0/kernel",
  ]
  assert leaves.selected_names(resnet, leaves.kernels_except(first=True, last=False)) == [
    "Dense_0/kernel",
    "ResNetBlock_0/Conv_0/kernel",
    "ResNetBlock_1/Conv_0/kernel",
  ]


def test_kernels_except_errors():
  with pytest.raises(ValueError, match="my_pruner: selector kernels_except.*selects no leaf"):
    leaves.prunable_paths(_mlp(2), leaves.inner_kernels(), owner="my_pruner")
  with pytest.raises(ValueError, match="first must be a bool or a non-negative int, got -1"):
    leaves.kernels_except(first=-1)
  with pytest.raises(ValueError, match="last must be"):
    leaves.kernels_except(last=1.0)
  with pytest.raises(ValueError, match="selects no leaf"):
    leaves.prunable_paths({"a": jnp.ones((3, 3))}, leaves.all_kernels(), owner="t")


def test_all_kernels_has_no_fallback():
  tree = _flax_like_tree()
  assert leaves.selected_names(tree, leaves.all_kernels()) == leaves.selected_names(tree)
  assert leaves.all_kernels().select(
    {"x": {"kernel": jnp.ones((2, 2))}, "y": jnp.ones((2, 2))}
  ) == [True, False]


def test_transformer_blocks_on_synthetic_trees():
  k = lambda *s: jnp.ones(s or (4, 4))
  tree = {
    "wte": {"embedding": k()},
    "h": {
      "0": {"attn": {"kernel": k()}, "ln": {"scale": jnp.ones(4)}},
      "1": {"mlp": {"kernel": k()}},
    },
    "encoder": {"layer": [{"query": {"kernel": k()}}, {"value": {"kernel": k()}}]},
    "layers_0": {"Dense_0": {"kernel": k()}},
    "blocks_2": {"kernel": k()},
    "Transformer": {"encoderblock_3": {"MlpBlock_0": {"Dense_1": {"kernel": k()}}}},
    "LayerNorm_0": {"kernel": k()},
    "Dense_0": {"kernel": k()},
    "mlp": [{"kernel": k()}],
    "head": {"kernel": k()},
  }
  assert sorted(leaves.selected_names(tree, leaves.transformer_blocks())) == sorted(
    [
      "h/0/attn/kernel",
      "h/1/mlp/kernel",
      "encoder/layer/0/query/kernel",
      "encoder/layer/1/value/kernel",
      "layers_0/Dense_0/kernel",
      "blocks_2/kernel",
      "Transformer/encoderblock_3/MlpBlock_0/Dense_1/kernel",
    ]
  )
  with pytest.raises(
    ValueError, match="my_pruner: selector transformer_blocks\\(\\) selects no leaf"
  ):
    leaves.prunable_paths(_mlp(3), leaves.transformer_blocks(), owner="my_pruner")


def test_selectors_are_not_predicates_and_combine_with_patterns():
  sel = leaves.inner_kernels()
  assert isinstance(sel, leaves.TreeSelector) and not callable(sel)
  assert repr(sel) == "kernels_except(first=True, last=True)"
  # A predicate and a list of patterns keep working.
  tree = _mlp(3)
  assert leaves.selected_names(tree, lambda n, x: n.startswith("Dense_1")) == [
    "Dense_1/bias",
    "Dense_1/kernel",
  ]
  assert leaves.selected_names(tree, [r"Dense_[02]/kernel"]) == ["Dense_0/kernel", "Dense_2/kernel"]
  with pytest.raises(TypeError, match="t: leaf 'i' of dtype int32 is selected"):
    leaves.prunable_paths({"i": jnp.ones((2, 2), jnp.int32)}, "i", owner="t")


def test_natural_key_orders_mixed_keys():
  names = [
    "b/10/kernel",
    "b/2/kernel",
    "b/x/kernel",
    "Dense_10/kernel",
    "Dense_9/kernel",
    "a/kernel",
  ]
  assert sorted(names, key=leaves.natural_key) == [
    "Dense_9/kernel",
    "Dense_10/kernel",
    "a/kernel",
    "b/2/kernel",
    "b/10/kernel",
    "b/x/kernel",
  ]
