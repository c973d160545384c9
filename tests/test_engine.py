"""The engine's features: groups, DST selection options, `jaxprune.prune`, stateful and extra-argument
scores, ephemeral masks, tree and argument errors, declarations, and a new method on the one loop."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune import engine

jit_modes = pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])


# ----------------------------------------------------------------------------------------- helpers


def normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def mlp_params(seed=0):
  """Three kernels (and biases): a (8, 12), b (12, 4), c (8, 8)."""
  return {
    "a": {"kernel": normal(seed, (8, 12)), "bias": normal(seed + 1, (12,))},
    "b": {"kernel": normal(seed + 2, (12, 4)), "bias": normal(seed + 3, (4,))},
    "c": {"kernel": normal(seed + 4, (8, 8)), "bias": normal(seed + 5, (8,))},
  }


def grads_at(params, step):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1000 + step), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def run(tx, params, steps, use_jit, grads_fn=grads_at, **extra):
  """[(params before, grads, params after, state after)] for each update."""
  state = tx.init(params)
  update = jax.jit(tx.update) if use_jit else tx.update
  out = []
  for step in range(steps):
    grads = grads_fn(params, step)
    updates, state = update(grads, state, params, **extra)
    new = optax.apply_updates(params, updates)
    out.append((params, grads, new, state))
    params = new
  return out


def top_k(scores, k):
  """Mask keeping the k highest of ``scores`` (ties: lower flat index first)."""
  flat = np.asarray(scores, np.float32).ravel()
  order = np.lexsort((np.arange(flat.size), -flat))
  mask = np.zeros(flat.size, bool)
  mask[order[:k]] = True
  return mask.reshape(np.shape(scores))


def np_tree(tree):
  return jax.tree.map(np.asarray, tree)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def blocks_of(x, block=(2, 2)):
  r, c = x.shape
  return np.asarray(x).reshape(r // block[0], block[0], c // block[1], block[1])


def block_mask(mask):
  """The per-block mask of a 2x2-block mask; asserts each block is all kept or all pruned."""
  b = blocks_of(mask)
  assert np.all(b.all(axis=(1, 3)) == b.any(axis=(1, 3))), "a 2x2 block is partly kept"
  return b.all(axis=(1, 3))


def block_mean(x):
  return np.abs(blocks_of(np.asarray(x, np.float32))).mean(axis=(1, 3))


# ------------------------------------------------------------------------------------------ groups


def conv_params(seed=0):
  return {
    "conv1": {"kernel": normal(seed, (3, 3, 4, 8)), "bias": normal(seed + 1, (8,))},
    "bn1": {"scale": normal(seed + 2, (8,)), "bias": normal(seed + 3, (8,))},
    "conv2": {"kernel": normal(seed + 4, (3, 3, 8, 6)), "bias": normal(seed + 5, (6,))},
  }


G1 = (
  ("conv1/kernel", -1),
  ("conv1/bias", 0),
  ("bn1/scale", 0),
  ("bn1/bias", 0),
  ("conv2/kernel", -2),
)
G2 = (("conv2/kernel", -1), ("conv2/bias", 0))


def leaf(tree, name):
  for key in name.split("/"):
    tree = tree[key]
  return tree


def group_score(params, members):
  """Sum over members of the mean |w| of each slice along the member's axis."""
  total = 0
  for name, axis in members:
    x = np.abs(np.asarray(leaf(params, name), np.float32))
    axis = axis % x.ndim
    total = total + x.mean(axis=tuple(a for a in range(x.ndim) if a != axis))
  return total


def slice_along(x, axis, index):
  return np.take(np.asarray(x), index, axis=axis)


def first_step(tx, params, use_jit):
  [(_, _, new, state)] = run(tx, params, 1, use_jit)
  return new, np_tree(jaxprune.get_masks(state))


@jit_modes
@pytest.mark.parametrize(
  "prune",
  [lambda name, x: False, "conv2/bias", []],
  ids=["predicate", "other-leaf-regex", "empty-list"],
)
def test_group_prunes_whole_units(use_jit, prune):
  params = conv_params()
  g = jaxprune.groups.group(*G1)
  tx = jaxprune.magnitude_pruning(0.5, groups=[g], prune=prune, inner=optax.sgd(0.1))
  new, masks = first_step(tx, params, use_jit)
  expected_kept = top_k(group_score(params, G1), 8 - round(0.5 * 8))
  assert expected_kept.sum() == 4
  for name, axis in G1:
    m, p = leaf(masks, name), np.asarray(leaf(new, name))
    for c in range(8):
      ms, ps = slice_along(m, axis, c), slice_along(p, axis, c)
      if expected_kept[c]:
        assert ms.all() and np.all(ps != 0), (name, c)
      else:
        assert not ms.any() and np.all(ps == 0), (name, c)
  if prune == "conv2/bias":  # a leaf pruned by the pattern: half of conv2/bias, unstructured
    assert leaf(masks, "conv2/bias").sum() == 3
  else:
    assert leaf(masks, "conv2/bias") is None


@jit_modes
def test_leaf_in_two_groups_has_the_and_of_both_masks(use_jit):
  params = conv_params()
  g1, g2 = jaxprune.groups.group(*G1), jaxprune.groups.group(*G2)
  assert g2.name == "conv2/kernel:-1"
  tx = jaxprune.magnitude_pruning(0.5, groups=[g1, g2], prune=[], inner=optax.sgd(0.1))
  new, masks = first_step(tx, params, use_jit)
  k1 = top_k(group_score(params, G1), 4)
  k2 = top_k(group_score(params, G2), 3)
  expected = k1[None, None, :, None] & k2[None, None, None, :]
  m = leaf(masks, "conv2/kernel")
  np.testing.assert_array_equal(m, np.broadcast_to(expected, (3, 3, 8, 6)))
  np.testing.assert_array_equal(leaf(masks, "conv2/bias"), k2)
  np.testing.assert_array_equal(leaf(masks, "conv1/bias"), k1)
  p = np.asarray(leaf(new, "conv2/kernel"))
  assert np.all(p[~m] == 0) and np.all(p[m] != 0)


@jit_modes
def test_global_distribution_over_two_groups(use_jit):
  params = conv_params(3)
  g1, g2 = jaxprune.groups.group(*G1), jaxprune.groups.group(*G2)
  tx = jaxprune.magnitude_pruning(
    0.5, groups=[g1, g2], prune=[], distribution="global", inner=optax.sgd(0.1)
  )
  _, masks = first_step(tx, params, use_jit)
  joint = np.concatenate([group_score(params, G1), group_score(params, G2)])
  kept = top_k(joint, 14 - round(0.5 * 14))
  np.testing.assert_array_equal(leaf(masks, "conv1/bias"), kept[:8])
  np.testing.assert_array_equal(leaf(masks, "conv2/bias"), kept[8:])
  assert kept.sum() == 7


@jit_modes
@pytest.mark.parametrize("distribution", ["uniform", "global"])
def test_group_overrides_by_name(use_jit, distribution):
  params = conv_params(5)
  g1 = jaxprune.groups.group(*G1, name="c1")
  g2 = jaxprune.groups.group(*G2)
  overrides = {"c1": 0.25}
  if distribution == "uniform":
    overrides["conv2/kernel:-1"] = 1 / 3
  tx = jaxprune.magnitude_pruning(
    0.5,
    groups=[g1, g2],
    prune=[],
    distribution=distribution,
    overrides=overrides,
    inner=optax.sgd(0.1),
  )
  _, masks = first_step(tx, params, use_jit)
  np.testing.assert_array_equal(leaf(masks, "conv1/bias"), top_k(group_score(params, G1), 8 - 2))
  pruned2 = 2 if distribution == "uniform" else 3  # round(6 / 3), or round(0.5 * 6) alone in global
  np.testing.assert_array_equal(
    leaf(masks, "conv2/bias"), top_k(group_score(params, G2), 6 - pruned2)
  )


@pytest.mark.parametrize(
  "members,match",
  [
    ((("conv1/kernel", -1), ("nope", 0)), r"group 'bad'.*'nope'"),
    ((("conv1/kernel", -1), ("conv2/kernel", -1)), r"group 'bad'.*'conv2/kernel'.*6.*8"),
    ((("conv1/bias", 1),), r"group 'bad'.*axis 1.*'conv1/bias'"),
  ],
  ids=["unknown-leaf", "size-mismatch", "axis-out-of-range"],
)
def test_group_errors(members, match):
  params = conv_params()
  tx = jaxprune.magnitude_pruning(
    0.5, groups=[jaxprune.groups.group(*members, name="bad")], prune=[], inner=optax.sgd(0.1)
  )
  with pytest.raises(ValueError, match=r"magnitude_pruning: " + match):
    tx.init(params)
  with pytest.raises(ValueError, match=r"prune: " + match):
    jaxprune.prune(params, 0.5, groups=[jaxprune.groups.group(*members, name="bad")], prune=[])


def test_group_same_leaf_axis_twice():
  params = conv_params()
  g1 = jaxprune.groups.group(*G1, name="g1")
  dup = jaxprune.groups.group(("conv2/kernel", 2), name="dup")  # axis 2 is -2 of G1
  tx = jaxprune.magnitude_pruning(0.5, groups=[g1, dup], prune=[], inner=optax.sgd(0.1))
  with pytest.raises(ValueError, match=r"'conv2/kernel' axis 2 is in two groups, 'g1' and 'dup'"):
    tx.init(params)


def test_group_constructor_errors():
  with pytest.raises(ValueError, match="at least one"):
    jaxprune.groups.group()
  with pytest.raises(ValueError, match="'x' is named twice"):
    jaxprune.groups.group(("x", 0), ("x", 1))
  with pytest.raises(TypeError, match="pair"):
    jaxprune.groups.group("x")


# ------------------------------------------------------------------- DST: block pattern, overrides

# ERK of 0.5 over a (8, 12) and b (12, 4) (c has an override): densities eps * (n_in + n_out) /
# (n_in n_out) with eps solving 0.5 (96 + 48) = eps (20 + 16): eps = 2, densities 5/12 and 2/3.
# Blocks: a 24, b 12, c 16; kept = G - round(s G).
DST_KEPT = {
  "a": 24 - round((1 - 5 / 12) * 24),
  "b": 12 - round((1 - 2 / 3) * 12),
  "c": 16 - round(0.25 * 16),
}
DST_UPDATES = (2, 4, 6)
DST_FRACTION = 0.5


def dst_tx(kind):
  common = dict(
    frequency=2,
    end_step=6,
    drop_fraction=DST_FRACTION,
    seed=3,
    pattern=jaxprune.patterns.block((2, 2)),
    overrides={"c/kernel": 0.25},
    inner=optax.sgd(0.1),
  )
  if kind == "set":
    return jaxprune.set_sparse(0.5, begin_step=2, **common)
  return jaxprune.rigl(0.5, drop_schedule="constant", **common)


@pytest.mark.parametrize("kind", ["set", "rigl"])
@jit_modes
def test_dst_block_pattern_and_overrides(kind, use_jit):
  assert DST_KEPT == {"a": 10, "b": 8, "c": 12}
  # The allocation itself agrees with the hand computation.
  shares = jaxprune.allocation.erk(0.5, [(8, 12), (12, 4)])
  np.testing.assert_allclose(shares, [7 / 12, 1 / 3], rtol=1e-12)
  history = run(dst_tx(kind), mlp_params(), 8, use_jit)
  previous = None
  for step, (before, grads, after, state) in enumerate(history):
    masks = np_tree(jaxprune.get_masks(state))
    changed = False
    for layer in ("a", "b", "c"):
      m = masks[layer]["kernel"]
      assert masks[layer]["bias"] is None
      bm = block_mask(m)
      assert bm.sum() == DST_KEPT[layer], (step, layer, bm.sum())
      p = np.asarray(after[layer]["kernel"])
      assert np.all(p[~m] == 0), (step, layer)
      if previous is None:
        continue
      old = previous[layer]["kernel"]
      if step not in DST_UPDATES:
        np.testing.assert_array_equal(m, old)
        assert np.all(p[m] != 0), (step, layer)  # every active weight trains between updates
        continue
      changed |= not np.array_equal(m, old)
      # Survivors trained (nonzero); grown blocks are exactly zero on their growth step.
      survivors = bm & np.all(blocks_of(p != 0), axis=(1, 3))
      grown = bm & ~survivors
      assert np.all(blocks_of(p)[grown[:, None, :, None] & np.ones((1, 2, 1, 2), bool)] == 0)
      k = min(round(DST_FRACTION * DST_KEPT[layer]), bm.size - DST_KEPT[layer])
      assert grown.sum() == k, (step, layer, grown.sum(), k)
      # Blocks newly active (pruned before) are among the grown ones, hence exactly zero.
      assert not np.any(bm & ~block_mask(old) & survivors)
      # Survivors: the A - k old blocks of largest mean |w|.
      old_b = block_mask(old)
      score = np.where(old_b, block_mean(before[layer]["kernel"]), -np.inf)
      np.testing.assert_array_equal(survivors, top_k(score, DST_KEPT[layer] - k))
      if kind == "rigl":  # grown: the k non-survivor blocks of largest mean |g|
        gscore = np.where(survivors, -np.inf, block_mean(grads[layer]["kernel"]))
        np.testing.assert_array_equal(grown, top_k(gscore, k))
    if previous is not None and step in DST_UPDATES:
      assert changed, f"no mask changed at update step {step}"
    previous = masks


@pytest.mark.parametrize("kind", ["set", "rigl"])
def test_dst_block_jit_equals_nojit(kind):
  a = run(dst_tx(kind), mlp_params(), 7, False)
  b = run(dst_tx(kind), mlp_params(), 7, True)
  for (_, _, pa, sa), (_, _, pb, sb) in zip(a, b):
    assert_trees_equal(np_tree(jaxprune.get_masks(sa)), np_tree(jaxprune.get_masks(sb)))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), pa, pb)


# ------------------------------------------------------------------------------- jaxprune.prune

PATTERNS = {
  "unstructured": None,
  "block": jaxprune.patterns.block((2, 2)),
  "channel": jaxprune.patterns.channel(-1),
}
PRUNE_CASES = [(d, p) for d in ("uniform", "global", "erk") for p in PATTERNS] + [
  ("uniform", "n_m")
]


@pytest.mark.parametrize(
  "distribution,pattern", PRUNE_CASES, ids=[f"{d}-{p}" for d, p in PRUNE_CASES]
)
def test_prune_equals_first_update_masks(distribution, pattern):
  params = mlp_params(7)
  if pattern == "n_m":
    kwargs = dict(sparsity=None, pattern=jaxprune.patterns.n_m(2, 4))
  else:
    kwargs = dict(sparsity=0.5, pattern=PATTERNS[pattern], distribution=distribution)
  sparsity = kwargs.pop("sparsity")
  tx = jaxprune.magnitude_pruning(sparsity, inner=optax.sgd(0.1), **kwargs)
  [(_, _, _, state)] = run(tx, params, 1, False)
  from_pruner = np_tree(jaxprune.get_masks(state))
  functional = np_tree(jaxprune.prune(params, sparsity, **kwargs))
  assert_trees_equal(from_pruner, functional)
  kept = sum(int(m.sum()) for m in jax.tree.leaves(functional))
  assert kept < sum(
    x.size for x in (params["a"]["kernel"], params["b"]["kernel"], params["c"]["kernel"])
  )


def test_prune_uniform_exact_values():
  params = mlp_params(7)
  masks = jaxprune.prune(params, 0.25)
  for layer in ("a", "b", "c"):
    w = np.abs(np.asarray(params[layer]["kernel"]))
    np.testing.assert_array_equal(masks[layer]["kernel"], top_k(w, w.size - round(0.25 * w.size)))
    assert masks[layer]["bias"] is None


def test_prune_keep_leaves_pruned_entries_pruned():
  params = mlp_params(7)
  keep = jaxprune.prune(params, 0.5, score=jaxprune.scores.random(4))
  masks = np_tree(jaxprune.prune(params, 0.75, keep=keep))
  for layer in ("a", "b", "c"):
    k, m = np.asarray(keep[layer]["kernel"]), masks[layer]["kernel"]
    w = np.abs(np.asarray(params[layer]["kernel"]))
    assert not np.any(m & ~k)
    assert m.sum() == w.size - round(0.75 * w.size)
    np.testing.assert_array_equal(m, top_k(np.where(k, w, -np.inf), w.size - round(0.75 * w.size)))
  # Without keep, the magnitude prune differs (it would revive entries of keep).
  free = np_tree(jaxprune.prune(params, 0.75))
  assert any(np.any(free[k]["kernel"] & ~np.asarray(keep[k]["kernel"])) for k in ("a", "b", "c"))


def test_prune_explicit_scores():
  params = mlp_params(7)
  scores = jax.tree.map(lambda x: -jnp.abs(x), params)  # keep the smallest
  masks = jaxprune.prune(params, 0.5, scores=scores)
  for layer in ("a", "b", "c"):
    s = -np.abs(np.asarray(params[layer]["kernel"]))
    np.testing.assert_array_equal(masks[layer]["kernel"], top_k(s, s.size // 2))
  with pytest.raises(ValueError, match="not both"):
    jaxprune.prune(params, 0.5, scores=scores, score=jaxprune.scores.saliency)


def test_prune_grad_score_without_grads_raises():
  params = mlp_params(7)
  with pytest.raises(ValueError, match=r"'saliency' reads gradients; pass grads="):
    jaxprune.prune(params, 0.5, score=jaxprune.scores.saliency)
  grads = grads_at(params, 0)
  masks = jaxprune.prune(params, 0.5, score=jaxprune.scores.saliency, grads=grads)
  s = np.abs(np.asarray(params["a"]["kernel"]) * np.asarray(grads["a"]["kernel"]))
  np.testing.assert_array_equal(masks["a"]["kernel"], top_k(s, 48))


def test_prune_nm_keep_leaves_pruned_entries_pruned():
  # keep= prunes 3 of the 4 entries of one N:M group (rows 0-3 of column 0): they stay pruned.
  params = {"w": normal(0, (8, 12)), "b": normal(1, (12,))}
  keep = np.ones((8, 12), bool)
  keep[0:3, 0] = False
  masks = np.asarray(
    jaxprune.prune(
      params, None, pattern=jaxprune.patterns.n_m(2, 4), keep={"w": jnp.asarray(keep), "b": None}
    )["w"]
  )
  assert not np.any(masks & ~keep), "keep= pruned entries were revived by the N:M selection"
  groups = masks.reshape(2, 4, 12).sum(axis=1)
  assert groups[0, 0] <= 1 and np.all(np.delete(groups.ravel(), 0) == 2)


def test_prune_extra_argument_score_missing_raises():
  params = {"w": normal(0, (8, 12)), "b": normal(1, (12,))}
  with pytest.raises(ValueError, match=r"prune: the score 'act' reads.*activations"):
    jaxprune.prune(params, 0.5, score=ACT)


# ------------------------------------------------------------------------------ stateful score


def movement_run(use_jit):
  tx = jaxprune.pruning(
    jaxprune.scores.movement(), 0.5, schedule=jaxprune.schedules.one_shot(3), inner=optax.sgd(0.1)
  )
  return run(tx, mlp_params(11), 5, use_jit)


@jit_modes
def test_movement_score_state_and_masks(use_jit):
  history = movement_run(use_jit)
  total = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), history[0][0])
  for step, (before, grads, after, state) in enumerate(history):
    total = jax.tree.map(
      lambda s, w, g: s - np.asarray(w, np.float32) * np.asarray(g, np.float32),
      total,
      before,
      grads,
    )
    got = np_tree(state.score_state)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), got, total)
    masks = np_tree(jaxprune.get_masks(state))
    if step < 3:
      assert all(m.all() for m in jax.tree.leaves(masks))
    if step == 3:
      expected = np_tree(jaxprune.prune(before, 0.5, scores=state.score_state))
      assert_trees_equal(masks, expected)
      for layer in ("a", "b", "c"):
        s = got[layer]["kernel"]
        np.testing.assert_array_equal(
          masks[layer]["kernel"], top_k(s, s.size - round(0.5 * s.size))
        )
        p = np.asarray(after[layer]["kernel"])
        assert np.all(p[~masks[layer]["kernel"]] == 0)
      at_three = masks
    if step == 4:  # one-shot: fixed afterwards, though the score keeps accumulating
      assert_trees_equal(masks, at_three)
  assert int(history[-1][3].count) == 5


def test_movement_jit_equals_nojit():
  a, b = movement_run(False), movement_run(True)
  for (_, _, pa, sa), (_, _, pb, sb) in zip(a, b):
    assert_trees_equal(np_tree(jaxprune.get_masks(sa)), np_tree(jaxprune.get_masks(sb)))
    jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
      sa.score_state,
      sb.score_state,
    )


# ------------------------------------------------------------------------- extra-argument score

ACT = jaxprune.scores.Score(
  name="act",
  fn=lambda x: {
    "w": jnp.abs(x.params["w"]) * x.extra["activations"]["w"][:, None],
    "b": jnp.abs(x.params["b"]),
  },
  extra_args=("activations",),
)


@jit_modes
def test_extra_argument_score(use_jit):
  params = {"w": normal(0, (8, 12)), "b": normal(1, (12,))}
  hot_top = jnp.asarray([1e4] * 4 + [1e-4] * 4, jnp.float32)
  tx = jaxprune.pruning(ACT, 0.5, inner=optax.sgd(0.1))
  for vec, rows in ((hot_top, slice(0, 4)), (hot_top[::-1], slice(4, 8))):
    [(_, _, after, state)] = run(tx, params, 1, use_jit, activations={"w": vec})
    m = np.asarray(jaxprune.get_masks(state)["w"])
    expected = np.zeros((8, 12), bool)
    expected[rows] = True
    np.testing.assert_array_equal(m, expected)
    assert np.all(np.asarray(after["w"])[~m] == 0)
    np.testing.assert_array_equal(
      jaxprune.prune(params, 0.5, score=ACT, activations={"w": vec})["w"], expected
    )
  # A general activation vector: top half of |w| * a[row].
  vec = jnp.abs(normal(9, (8,)))
  [(_, _, _, state)] = run(tx, params, 1, use_jit, activations={"w": vec})
  s = np.abs(np.asarray(params["w"])) * np.asarray(vec)[:, None]
  np.testing.assert_array_equal(jaxprune.get_masks(state)["w"], top_k(s, 48))


@jit_modes
def test_extra_argument_score_missing_raises(use_jit):
  params = {"w": normal(0, (8, 12)), "b": normal(1, (12,))}
  tx = jaxprune.pruning(ACT, 0.5, inner=optax.sgd(0.1))
  update = jax.jit(tx.update) if use_jit else tx.update
  with pytest.raises(ValueError, match=r"pruning: the score 'act' reads.*activations"):
    update(grads_at(params, 0), tx.init(params), params)
  with pytest.raises(ValueError, match="activations"):
    update(grads_at(params, 0), tx.init(params), params, other=1.0)


# -------------------------------------------------------------------------------- ephemeral masks


def nm_groups(mask):
  """Kept count per group of 4 along axis -2 of an (8, 12) mask."""
  return np.asarray(mask).reshape(2, 4, 12).sum(axis=1)


def ephemeral_tx():
  return jaxprune.magnitude_pruning(
    pattern=jaxprune.patterns.n_m(2, 4),
    schedule=jaxprune.schedules.polynomial(begin_step=0, end_step=100, frequency=1),
    application="ephemeral",
    inner=optax.sgd(0.1),
  )


def ephemeral_run(use_jit):
  params = {"w": normal(0, (8, 12)), "b": normal(1, (12,))}
  mask0 = np.asarray(jaxprune.prune(params, None, pattern=jaxprune.patterns.n_m(2, 4))["w"])

  def grads_fn(p, step):
    g = grads_at(p, step)
    if step == 0:  # pushes the pruned weights far from zero: they are kept at the next update
      g["w"] = jnp.where(mask0, 0.0, -jnp.sign(p["w"]) * 100.0)
    return g

  return mask0, run(ephemeral_tx(), params, 3, use_jit, grads_fn=grads_fn)


@jit_modes
def test_ephemeral_masks(use_jit):
  mask0, history = ephemeral_run(use_jit)
  masks = [np.asarray(jaxprune.get_masks(s)["w"]) for _, _, _, s in history]
  # The masks follow the dense weights: step 0 pushed every weight that mask0 prunes far from zero,
  # and the state's masks are those of the weights after the step, so they are all kept now.
  np.testing.assert_array_equal(masks[0], ~mask0)
  nm = jaxprune.patterns.n_m(2, 4)
  for (before, grads, after, state), m in zip(history, masks):
    assert np.all(nm_groups(m) == 2)
    # Exactly the N:M magnitude masks of the weights the next forward pass sees.
    np.testing.assert_array_equal(m, jaxprune.prune(after, None, pattern=nm)["w"])
    w = np.asarray(after["w"])
    # Dense: weights train where masked too (plain SGD on the unmasked gradient).
    assert np.all(w != 0)
    np.testing.assert_allclose(
      w, np.asarray(before["w"]) - 0.1 * np.asarray(grads["w"]), rtol=1e-6, atol=1e-6
    )
    masked = np.asarray(jaxprune.ephemeral.masked_params(after, state)["w"])
    np.testing.assert_array_equal(masked, np.where(m, w, 0))
    assert np.all(nm_groups(masked != 0) == 2)
    np.testing.assert_array_equal(jaxprune.ephemeral.masked_params(after, state)["b"], after["b"])


def test_ephemeral_jit_equals_nojit():
  (_, a), (_, b) = ephemeral_run(False), ephemeral_run(True)
  for (_, _, pa, sa), (_, _, pb, sb) in zip(a, b):
    assert_trees_equal(np_tree(jaxprune.get_masks(sa)), np_tree(jaxprune.get_masks(sb)))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), pa, pb)


def test_ephemeral_straight_through_gradient():
  _, history = ephemeral_run(False)
  _, _, params, state = history[0]
  m = np.asarray(jaxprune.get_masks(state)["w"])
  c = normal(5, (8, 12))

  def loss(p, straight_through):
    v = jaxprune.ephemeral.masked_params(p, state, straight_through=straight_through)
    return jnp.sum(jnp.sin(v["w"]) * c) + jnp.sum(v["b"] ** 2)

  v = np.asarray(jaxprune.ephemeral.masked_params(params, state)["w"])
  wrt_value = np.cos(v) * np.asarray(c)  # the gradient w.r.t. the masked value
  st = jax.grad(loss)(params, True)
  np.testing.assert_allclose(st["w"], wrt_value, rtol=1e-6, atol=1e-6)
  assert np.all(np.asarray(st["w"])[~m] != 0)
  np.testing.assert_allclose(st["b"], 2 * np.asarray(params["b"]), rtol=1e-6)
  plain = jax.grad(loss)(params, False)
  np.testing.assert_allclose(plain["w"], np.where(m, wrt_value, 0), rtol=1e-6, atol=1e-6)
  assert np.all(np.asarray(plain["w"])[~m] == 0)


# ----------------------------------------------------------------------------------- tree errors


def error_txs():
  return {
    "magnitude_pruning": jaxprune.magnitude_pruning(0.5, inner=optax.sgd(0.1)),
    "rigl": jaxprune.rigl(0.5, end_step=4, frequency=2, inner=optax.sgd(0.1)),
  }


@pytest.mark.parametrize("owner", ["magnitude_pruning", "rigl"])
@jit_modes
def test_tree_errors(owner, use_jit):
  tx = error_txs()[owner]
  params = mlp_params()
  update = jax.jit(tx.update) if use_jit else tx.update
  state = tx.init(params)
  grads = grads_at(params, 0)

  missing = {k: dict(v) for k, v in grads.items()}
  del missing["b"]["bias"]
  with pytest.raises(ValueError, match=rf"^{owner}: .*missing \['b/bias'\]"):
    update(missing, state, params)

  reshaped = {k: dict(v) for k, v in grads.items()}
  reshaped["a"]["kernel"] = jnp.zeros((12, 8))
  with pytest.raises(ValueError, match=rf"^{owner}: .*'a/kernel' has shape \(12, 8\)"):
    update(reshaped, state, params)

  other = {k: dict(v) for k, v in params.items()}
  other["c"]["kernel"] = jnp.ones((4, 8))
  with pytest.raises(ValueError, match=rf"^{owner}: .*'c/kernel'.*initialised on other params"):
    update(grads, tx.init(other), params)

  # The good call works.
  _, state = update(grads, state, params)
  assert int(state.count) == 1


# ------------------------------------------------------------------------------- argument errors


def test_sparsity_string_is_type_error():
  with pytest.raises(TypeError, match="magnitude_pruning: sparsity"):
    jaxprune.magnitude_pruning("0.5")
  with pytest.raises(TypeError, match="rigl: sparsity"):
    jaxprune.rigl("0.5", end_step=4, inner=optax.sgd(0.1))


def test_override_errors():
  with pytest.raises(ValueError, match=r"magnitude_pruning: override 'w' has no sparsity"):
    jaxprune.magnitude_pruning(0.5, overrides={"w": None})
  with pytest.raises(ValueError, match=r"override pattern '\(' is not a valid regular expression"):
    jaxprune.magnitude_pruning(0.5, overrides={"(": 0.5})
  with pytest.raises(ValueError, match=r"override pattern 'zzz' matches no pruned leaf"):
    jaxprune.magnitude_pruning(0.5, overrides={"zzz": 0.5}).init(mlp_params())


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_ramp_above_target_raises_at_init(distribution):
  schedule = jaxprune.schedules.polynomial(0, 10, 1, initial_sparsity=0.8)
  tx = jaxprune.magnitude_pruning(0.5, schedule=schedule, distribution=distribution)
  with pytest.raises(
    ValueError, match=r"magnitude_pruning: the schedule starts leaf 'a/kernel'.*revived"
  ):
    tx.init(mlp_params())


@jit_modes
def test_ramp_below_target_is_monotone(use_jit):
  schedule = jaxprune.schedules.polynomial(0, 10, 1, initial_sparsity=0.3)
  tx = jaxprune.magnitude_pruning(0.5, schedule=schedule, inner=optax.sgd(0.1))
  history = run(tx, mlp_params(), 6, use_jit)
  previous = None
  decreased = False
  for step, (_, _, after, state) in enumerate(history):
    m = np.asarray(jaxprune.get_masks(state)["a"]["kernel"])
    if step == 0:
      assert m.sum() == 96 - round(0.3 * 96)
    if previous is not None:
      assert not np.any(m & ~previous), f"a weight came back at step {step}"
      assert m.sum() <= previous.sum()
      decreased |= m.sum() < previous.sum()
    assert np.all(np.asarray(after["a"]["kernel"])[~m] == 0)
    previous = m
  assert decreased


# -------------------------------------------------------------------------------- declarations


def test_declarations_by_introspection():
  assert engine.method_of(jaxprune.saliency_pruning(0.5)).score.reads_grads is True
  assert engine.method_of(jaxprune.magnitude_pruning(0.5)).score.reads_grads is False
  assert engine.method_of(
    jaxprune.rigl(0.5, end_step=4, frequency=1, inner=optax.sgd(0.1))
  ).rule.reads_grads
  assert not engine.method_of(jaxprune.set_sparse(0.5, inner=optax.sgd(0.1))).rule.reads_grads
  method = engine.method_of(jaxprune.imp(rate=0.5, cycles=2, cycle_steps=2))
  assert method.hooks.offers == ("imp_count", "imp_norm_drop", "imp_pruned_fraction")
  assert method.name == "imp"
  with pytest.raises(ValueError, match="method_of"):
    engine.method_of(optax.sgd(0.1))


def recorder(seen):
  """An inner optimizer (SGD 0.1) that stores the imp extra arguments it receives in its state."""
  names = ("imp_count", "imp_norm_drop", "imp_pruned_fraction")

  def init(params):
    del params
    return {
      "imp_count": jnp.full([], -1, jnp.int32),
      "imp_norm_drop": jnp.zeros([], jnp.float32),
      "imp_pruned_fraction": jnp.zeros([], jnp.float32),
    }

  def update(updates, state, params=None, **extra):
    del params
    seen.append(tuple(sorted(extra)))
    new = {k: jnp.asarray(extra[k]).astype(state[k].dtype) for k in names}
    return jax.tree.map(lambda g: -0.1 * g, updates), new

  return optax.GradientTransformationExtraArgs(init, update)


@jit_modes
def test_imp_offers_extra_args(use_jit):
  seen = []
  tx = jaxprune.imp(rate=0.5, cycles=2, cycle_steps=2, inner=recorder(seen))
  params = mlp_params()
  history = run(tx, params, 6, use_jit)
  assert seen and all(s == ("imp_count", "imp_norm_drop", "imp_pruned_fraction") for s in seen)
  assert len(seen) == (1 if use_jit else 6)
  prev_masks = None
  for t, (before, _, _, state) in enumerate(history):
    got = np_tree(state.inner_state)
    assert got["imp_count"] == t
    assert got["imp_norm_drop"] == np.asarray(state.norm_drop)
    assert got["imp_pruned_fraction"] == np.asarray(state.pruned_fraction)
    masks = np_tree(jaxprune.get_masks(state))
    if t in (2, 4):  # the prunes: half of the kept weights go (global, 208 kernel weights)
      assert got["imp_pruned_fraction"] == pytest.approx(0.5, abs=1e-7)
      sq = lambda ms: sum(
        float(np.sum(np.where(ms[k]["kernel"], np.asarray(before[k]["kernel"]), 0.0) ** 2))
        for k in ("a", "b", "c")
      )
      b, a = sq(prev_masks), sq(masks)
      assert got["imp_norm_drop"] == pytest.approx(np.sqrt(abs(b - a) / b), rel=1e-5)
      assert got["imp_norm_drop"] > 0
    prev_masks = masks
  assert sum(int(m.sum()) for m in jax.tree.leaves(prev_masks)) == 208 - round(0.75 * 208)


# ---------------------------------------------------------------------- a new method on the loop


class CountingState(NamedTuple):
  count: jax.Array
  masks: Any
  score_state: Any
  inner_state: Any
  mask_updates: jax.Array


def counting_pruning(sparsity, inner):
  """Gradual magnitude pruning that counts its mask updates in its own state field."""
  selection = jaxprune.plan.make_selection("counting", sparsity=sparsity)
  hooks = engine.Hooks(
    state_class=CountingState,
    init=lambda plan, leaves, treedef: {"mask_updates": jnp.zeros([], jnp.int32)},
    update_fields=("mask_updates",),
    on_update=lambda info, old, result: {"mask_updates": info.state.mask_updates + 1},
  )
  method = engine.Method(
    "counting",
    jaxprune.scores.magnitude,
    sparsity,
    selection,
    jaxprune.schedules.polynomial(1, 5, 2),
    hooks=hooks,
  )
  return engine.transformation(method, inner)


def counting_run(use_jit):
  return run(counting_pruning(0.5, optax.sgd(0.1)), mlp_params(2), 7, use_jit)


@jit_modes
def test_new_method_on_the_engine(use_jit):
  history = counting_run(use_jit)
  # Updates at counts 1, 3, 5 to sparsities 0, 0.5 - 0.5 / 8, 0.5 (the cubic ramp from 0).
  counters = [0, 1, 1, 2, 2, 3, 3]
  fraction = [0, 0, 0, 0.4375, 0.4375, 0.5, 0.5]
  for t, (_, _, after, state) in enumerate(history):
    assert isinstance(state, CountingState)
    assert int(state.mask_updates) == counters[t], (t, int(state.mask_updates))
    masks = np_tree(jaxprune.get_masks(state))
    for layer in ("a", "b", "c"):
      m, p = masks[layer]["kernel"], np.asarray(after[layer]["kernel"])
      assert (~m).sum() == round(fraction[t] * m.size), (t, layer)
      assert np.all(p[~m] == 0) and np.all(p[m] != 0)
      assert masks[layer]["bias"] is None
  assert engine.method_of(counting_pruning(0.5, None)).hooks.update_fields == ("mask_updates",)


def test_new_method_jit_equals_nojit():
  a, b = counting_run(False), counting_run(True)
  for (_, _, pa, sa), (_, _, pb, sb) in zip(a, b):
    assert int(sa.mask_updates) == int(sb.mask_updates)
    assert_trees_equal(np_tree(jaxprune.get_masks(sa)), np_tree(jaxprune.get_masks(sb)))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), pa, pb)


def test_offer_mismatch_is_an_error():
  selection = jaxprune.plan.make_selection("liar", sparsity=0.5)
  hooks = engine.Hooks(offers=("x",), offer=lambda info, fields: {"y": info.count})
  tx = engine.transformation(
    engine.Method(
      "liar", jaxprune.scores.magnitude, 0.5, selection, jaxprune.schedules.one_shot(0), hooks=hooks
    ),
    optax.sgd(0.1),
  )
  params = mlp_params()
  with pytest.raises(ValueError, match=r"liar: offers \['y'\], declared \['x'\]"):
    tx.update(grads_at(params, 0), tx.init(params), params)
