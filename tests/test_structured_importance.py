"""Channel importance, the selection of kept channels, and training with channel-group masks.

Every importance against its formula on a tiny hand-built example; `select`'s exact counts, rounding,
floor and scopes; the engine's channel-group units; `structured_pruning` on a tiny MLP and a tiny
conv net (exact zeros in every member, exact counts, jit == no-jit, gradual and cyclic schedules);
the network-slimming penalty's exact effect on the gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune.structured import importance
from jaxprune.structured.channel_group import ChannelGroup, Member
from jaxprune.structured_pruning import (
  keeps_from_state,
  network_slimming_penalty,
  structured_pruning,
)

jit_modes = pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])


# ----------------------------------------------------------------------------------------- helpers


def normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def column(n):
  return np.arange(n)[:, None]


def mlp_params(seed=0):
  """l0: 4 -> 6, l1: 6 -> 3."""
  return {
    "l0": {"kernel": normal(seed, (4, 6)), "bias": normal(seed + 1, (6,))},
    "l1": {"kernel": normal(seed + 2, (6, 3)), "bias": normal(seed + 3, (3,))},
  }


HIDDEN = ChannelGroup(
  "l0/kernel:1",
  6,
  (
    Member("l0/kernel", 1, column(6)),
    Member("l0/bias", 0, column(6)),
    Member("l1/kernel", 0, column(6)),
  ),
)

C, H, W = 4, 2, 2  # conv channels, spatial size before the flatten


def conv_params(seed=0):
  """conv (3x3, 2 -> C) + bn + flatten (H, W, C) + dense (H * W * C -> 5)."""
  return {
    "conv": {"kernel": normal(seed, (3, 3, 2, C)), "bias": normal(seed + 1, (C,))},
    "bn": {"scale": normal(seed + 2, (C,)), "bias": normal(seed + 3, (C,))},
    "dense": {"kernel": normal(seed + 4, (H * W * C, 5)), "bias": normal(seed + 5, (5,))},
  }


# Row h * W * C + w * C + c of the dense kernel reads channel c: rows c, C + c, 2C + c, 3C + c.
FLAT_ROWS = np.arange(C)[:, None] + C * np.arange(H * W)[None, :]
CONV = ChannelGroup(
  "conv/kernel:3",
  C,
  (
    Member("conv/kernel", 3, column(C)),
    Member("conv/bias", 0, column(C)),
    Member("bn/scale", 0, column(C)),
    Member("bn/bias", 0, column(C)),
    Member("dense/kernel", 0, FLAT_ROWS),
  ),
)
OUT = ChannelGroup(
  "dense/kernel:1", 5, (Member("dense/kernel", 1, column(5)), Member("dense/bias", 0, column(5)))
)


def leaf(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return np.asarray(tree, np.float32)


def np_channels(tree, member, size):
  """The member's leaf at each channel's positions, shape (size, -1)."""
  x = leaf(tree, member.path)
  taken = np.take(x, member.index, axis=member.axis)
  return np.moveaxis(taken, (member.axis, member.axis + 1), (0, 1)).reshape(size, -1)


def removed_positions(member, keep):
  return member.index[~np.asarray(keep)].ravel()


def assert_channels_zero(params, group, keep):
  """Every position of a removed channel is exactly zero in every member; kept ones are not all
  zero."""
  keep = np.asarray(keep)
  for m in group.members:
    per = np_channels(params, m, group.size)
    assert np.all(per[~keep] == 0), (group.name, m.path)
    assert np.all(np.any(per[keep] != 0, axis=1)), (group.name, m.path)


def top(scores, k):
  """Keep the k highest (ties: lower index first), as the library's selection does."""
  order = np.lexsort((np.arange(len(scores)), -np.asarray(scores)))
  keep = np.zeros(len(scores), bool)
  keep[order[:k]] = True
  return keep


def maybe_jit(fn, use_jit):
  return jax.jit(fn) if use_jit else fn


def run(tx, params, steps, use_jit, grads_fn=None, **extra):
  state = tx.init(params)
  update = maybe_jit(tx.update, use_jit)
  history = []
  for t in range(steps):
    grads = (
      grads_fn(params, t)
      if grads_fn
      else jax.tree.map(lambda x: 0.1 * normal(100 + t, x.shape), params)
    )
    updates, state = update(grads, state, params, **extra)
    params = optax.apply_updates(params, updates)
    history.append((params, state))
  return history


# -------------------------------------------------------------------------------------- importance


@jit_modes
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_magnitude_is_the_lp_norm_aggregated_over_members(use_jit, p, reduce):
  params = conv_params()
  fn = maybe_jit(lambda q: importance.magnitude(q, [CONV, OUT], p=p, reduce=reduce), use_jit)
  got = fn(params)
  for group, scores in zip([CONV, OUT], got):
    per = [
      np.sum(np.abs(np_channels(params, m, group.size)) ** p, axis=1) ** (1 / p)
      for m in group.members
    ]
    expected = {"sum": np.sum, "mean": np.mean, "max": np.max}[reduce](np.stack(per), axis=0)
    assert scores.dtype == jnp.float32 and scores.shape == (group.size,)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_magnitude_by_hand():
  # Channel c of HIDDEN: column c of l0's kernel, l0's bias[c], row c of l1's kernel.
  params = {
    "l0": {"kernel": jnp.array([[1.0, -2.0], [3.0, 0.0]]), "bias": jnp.array([0.5, -1.0])},
    "l1": {"kernel": jnp.array([[2.0, 2.0], [0.0, -4.0]])},
  }
  c = column(2)
  g = ChannelGroup(
    "h", 2, (Member("l0/kernel", 1, c), Member("l0/bias", 0, c), Member("l1/kernel", 0, c))
  )
  [l1] = importance.magnitude(params, [g])
  np.testing.assert_allclose(l1, [4 + 0.5 + 4, 2 + 1 + 4])
  [l2] = importance.magnitude(params, [g], p=2, reduce="max")
  np.testing.assert_allclose(l2, [max(np.sqrt(10), 0.5, np.sqrt(8)), max(2, 1, 4)], rtol=1e-6)
  [inf] = importance.magnitude(params, [g], p=float("inf"), reduce="mean")
  np.testing.assert_allclose(inf, [(3 + 0.5 + 2) / 3, (2 + 1 + 4) / 3], rtol=1e-6)


@pytest.mark.parametrize("how", importance.NORMALIZATIONS)
def test_normalized(how):
  s = np.array([1.0, -2.0, 3.0, 6.0], np.float32)
  a = np.abs(s)
  expected = {
    None: s,
    "sum": s / a.sum(),
    "mean": s / a.mean(),
    "max": s / a.max(),
    "l2": s / np.sqrt((s**2).sum()),
    "minmax": (s + 2) / 8,
  }[how]
  np.testing.assert_allclose(importance.normalized(s, how), expected, rtol=1e-6)
  [got] = importance.magnitude({"w": jnp.asarray(s)[None, :]}, [one_axis("w", 1, 4)], normalize=how)
  np.testing.assert_allclose(got, importance.normalized(np.abs(s), how), rtol=1e-6)


def test_normalized_over_live_channels_and_zero_scores():
  s = jnp.array([1.0, 3.0, 100.0])
  got = importance.normalized(s, "mean", live=jnp.array([True, True, False]))
  np.testing.assert_allclose(got, [0.5, 1.5, 100.0])
  np.testing.assert_array_equal(importance.normalized(jnp.zeros(3), "max"), np.zeros(3))
  with pytest.raises(ValueError, match="normalize must be one of"):
    importance.normalized(s, "median")


def one_axis(path, axis, size):
  return ChannelGroup(f"{path}:{axis}", size, (Member(path, axis, column(size)),))


@jit_modes
def test_norm_scale_is_abs_gamma(use_jit):
  params = conv_params()
  [got] = maybe_jit(lambda q: importance.norm_scale(q, [CONV]), use_jit)(params)
  np.testing.assert_array_equal(got, np.abs(leaf(params, "bn/scale")))
  with pytest.raises(ValueError, match=r"group 'dense/kernel:1' \(first member 'dense/kernel'\)"):
    importance.norm_scale(params, [OUT])


@jit_modes
def test_taylor_is_abs_of_the_sum_of_w_times_g(use_jit):
  params, grads = conv_params(0), conv_params(7)
  got = maybe_jit(lambda q, g: importance.taylor(q, g, [CONV, OUT]), use_jit)(params, grads)
  for group, scores in zip([CONV, OUT], got):
    total = sum(
      np.sum(np_channels(params, m, group.size) * np_channels(grads, m, group.size), axis=1)
      for m in group.members
    )
    np.testing.assert_allclose(scores, np.abs(total), rtol=1e-5, atol=1e-6)


@jit_modes
def test_mean_activation(use_jit):
  acts = normal(3, (2, H, W, C))  # NHWC after the conv's nonlinearity
  expected = np.abs(np.asarray(acts)).mean(axis=(0, 1, 2))
  fn = maybe_jit(lambda a: importance.mean_activation({CONV.name: a}, [CONV]), use_jit)
  np.testing.assert_allclose(fn(acts)[0], expected, rtol=1e-6)
  # A list in the order of the groups; another channel axis.
  nchw = jnp.moveaxis(acts, -1, 1)
  [got] = importance.mean_activation([nchw], [CONV], axis=1)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_mean_activation_errors_name_the_group():
  with pytest.raises(ValueError, match=r"group 'conv/kernel:3' \(first member 'conv/kernel'\)"):
    importance.mean_activation({}, [CONV])
  with pytest.raises(ValueError, match=r"'conv/kernel:3'.*shape \(2, 3\).*4 channels"):
    importance.mean_activation({CONV.name: jnp.ones((2, 3))}, [CONV])
  with pytest.raises(ValueError, match="one per group"):
    importance.mean_activation([jnp.ones((2, 4))] * 2, [CONV])


def test_random_scores():
  a = importance.random([CONV, OUT], seed=1)
  b = importance.random([CONV, OUT], seed=1)
  c = importance.random([CONV, OUT], seed=1, step=3)
  assert [x.shape for x in a] == [(C,), (5,)]
  for x, y, z in zip(a, b, c):
    np.testing.assert_array_equal(x, y)
    assert not np.array_equal(x, z)
    assert np.all((0 <= np.asarray(x)) & (np.asarray(x) < 1))
  with pytest.raises(TypeError, match="seed"):
    importance.random([CONV], seed=0.5)


def test_importance_errors_name_the_group_and_its_first_member():
  params = conv_params()
  bad = ChannelGroup(
    "g", C, (Member("conv/kernel", 3, column(C)), Member("nope/kernel", 0, column(C)))
  )
  with pytest.raises(ValueError, match=r"group 'g' \(first member 'conv/kernel'\).*'nope/kernel'"):
    importance.magnitude(params, [bad])
  wrong = ChannelGroup("w", 3, (Member("conv/kernel", 3, column(C)),))
  with pytest.raises(ValueError, match=r"group 'w' .*shape \(3, k\)"):
    importance.magnitude(params, [wrong])
  outside = ChannelGroup("o", C, (Member("conv/bias", 0, column(C) + 1),))
  with pytest.raises(ValueError, match=r"group 'o' .*outside \[0, 4\)"):
    importance.magnitude(params, [outside])
  with pytest.raises(TypeError, match="ChannelGroup"):
    importance.magnitude(params, CONV)
  with pytest.raises(TypeError, match="ChannelGroup"):
    importance.magnitude(params, [jaxprune.groups.group(("conv/bias", 0))])
  with pytest.raises(ValueError, match="p must be a positive number"):
    importance.magnitude(params, [CONV], p=0)
  with pytest.raises(ValueError, match="reduce must be one of"):
    importance.magnitude(params, [CONV], reduce="median")


# ------------------------------------------------------------------------------------------ select


@pytest.mark.parametrize(
  "size,ratio,round_to,min_keep,kept",
  [
    (64, 0.3, 1, 1, 45),
    (64, 0.3, 8, 1, 48),  # 45 -> 48, the nearest multiple of 8
    (64, 0.36, 8, 1, 40),  # 41 -> 40
    (64, 0.3125, 8, 1, 48),  # 44: a tie between 40 and 48 keeps more
    (12, 0.1, 8, 1, 12),  # 11: the candidates are 8 and the full 12
    (12, 0.3, 8, 1, 8),
    (4, 0.5, 8, 1, 2),  # no multiple of 8 fits: the exact count
    (16, 0.99, 8, 1, 8),  # 0 -> the smallest multiple
    (10, 0.95, 1, 1, 1),  # the floor
    (10, 0.95, 1, 3, 3),
    (10, 0.5, 1, 20, 10),  # a floor above the size keeps everything
    (16, 0.9, 8, 3, 8),  # the floor, rounded up to a multiple
    (10, 0.0, 4, 1, 10),
  ],
)
def test_kept_count(size, ratio, round_to, min_keep, kept):
  got = importance.kept_count(size, ratio, round_to=round_to, min_keep=min_keep)
  assert int(got) == kept
  traced = jax.jit(lambda r: importance.kept_count(size, r, round_to=round_to, min_keep=min_keep))
  assert int(traced(jnp.float32(ratio))) == kept


def groups_of(*sizes):
  return [one_axis(f"g{j}", 0, n) for j, n in enumerate(sizes)]


@jit_modes
def test_select_per_group_exact_counts(use_jit):
  groups = groups_of(10, 7, 3)
  scores = [normal(j, (g.size,)) for j, g in enumerate(groups)]
  fn = maybe_jit(lambda s, r: importance.select(groups, s, r), use_jit)
  keeps = fn(scores, 0.5)
  for g, s, keep in zip(groups, scores, keeps):
    assert keep.dtype == jnp.bool_ and keep.shape == (g.size,)
    np.testing.assert_array_equal(keep, top(s, g.size - round(0.5 * g.size)))
  # One ratio per group.
  keeps = importance.select(groups, scores, [0.1, 0.5, 0.9])
  assert [int(k.sum()) for k in keeps] == [9, 3, 1]  # 3 - round(2.7) = 0, raised to the floor


def test_select_round_to_and_min_keep():
  groups = groups_of(64, 16, 5)
  scores = [normal(j, (g.size,)) for j, g in enumerate(groups)]
  keeps = importance.select(groups, scores, 0.3, round_to=8)
  assert [int(k.sum()) for k in keeps] == [48, 8, 3]  # 45 -> 48, 11 -> 8, 5 < 8: exact
  for s, k in zip(scores, keeps):
    np.testing.assert_array_equal(k, top(s, int(k.sum())))
  keeps = importance.select(groups, scores, 0.9, min_keep=2)
  assert [int(k.sum()) for k in keeps] == [6, 2, 2]


def test_select_global_one_threshold_over_normalised_scores_with_a_floor():
  groups = groups_of(3, 4)
  small, large = jnp.array([0.01, 0.02, 0.03]), jnp.array([1.0, 2.0, 3.0, 4.0])
  # Raw scores: 4 of 7 removed (round(3.5) = 4); the small group keeps its floor, its best channel.
  a, b = importance.select(groups, [small, large], 0.5, scope="global", normalize=None)
  np.testing.assert_array_equal(a, [False, False, True])
  np.testing.assert_array_equal(b, [False, False, True, True])
  # min_keep=2: the floors (4 channels) outweigh the 3 the threshold would keep.
  a, b = importance.select(groups, [small, large], 0.5, scope="global", normalize=None, min_keep=2)
  np.testing.assert_array_equal(a, [False, True, True])
  np.testing.assert_array_equal(b, [False, False, True, True])
  # Mean-normalised: [0.5, 1, 1.5] and [0.4, 0.8, 1.2, 1.6]; the best 3 are 1.6, 1.5, 1.2.
  a, b = importance.select(groups, [small, large], 0.5, scope="global")
  np.testing.assert_array_equal(a, [False, False, True])
  np.testing.assert_array_equal(b, [False, False, True, True])
  # Per group, each keeps its own half.
  a, b = importance.select(groups, [small, large], 0.5)
  assert int(a.sum()) == 1 and int(b.sum()) == 2  # 3 - round(1.5) = 1, 4 - 2 = 2


@jit_modes
def test_select_global_exact_total(use_jit):
  groups = groups_of(13, 9, 6)
  scores = [jnp.abs(normal(10 + j, (g.size,))) * (j + 1) for j, g in enumerate(groups)]
  fn = maybe_jit(lambda s, r: importance.select(groups, s, r, scope="global"), use_jit)
  keeps = fn(scores, 0.6)
  assert sum(int(k.sum()) for k in keeps) == 28 - round(0.6 * 28)
  joint = np.concatenate([np.asarray(s) / np.abs(np.asarray(s)).mean() for s in scores])
  expected = top(joint, 28 - round(0.6 * 28))
  np.testing.assert_array_equal(np.concatenate([np.asarray(k) for k in keeps]), expected)
  # With round_to, each group's count from the threshold is rounded.
  keeps = importance.select(groups, scores, 0.6, scope="global", round_to=4)
  for k, n in zip(keeps, np.split(expected, [13, 22])):
    assert int(k.sum()) == int(importance._round_count(int(n.sum()), len(n), 4, 1))


def test_select_errors():
  groups = groups_of(4, 3)
  scores = [jnp.ones(4), jnp.ones(3)]
  with pytest.raises(ValueError, match="one score array per group"):
    importance.select(groups, scores[:1], 0.5)
  with pytest.raises(
    ValueError, match=r"group 'g1:0' \(first member 'g1'\).*shape \(4,\), expected \(3,\)"
  ):
    importance.select(groups, [jnp.ones(4), jnp.ones(4)], 0.5)
  with pytest.raises(TypeError, match=r"group 'g0:0'.*floating point"):
    importance.select(groups, [jnp.ones(4, jnp.int32), jnp.ones(3)], 0.5)
  with pytest.raises(ValueError, match=r"ratio of group 'g0:0'.*\[0, 1\)"):
    importance.select(groups, scores, 1.0)
  with pytest.raises(ValueError, match="global scope takes one ratio"):
    importance.select(groups, scores, [0.5, 0.5], scope="global")
  with pytest.raises(ValueError, match="3 ratios for 2 groups"):
    importance.select(groups, scores, [0.5] * 3)
  with pytest.raises(ValueError, match="scope must be one of"):
    importance.select(groups, scores, 0.5, scope="layer")
  with pytest.raises(ValueError, match="round_to must be >= 1"):
    importance.select(groups, scores, 0.5, round_to=0)
  with pytest.raises(ValueError, match="min_keep must be >= 1"):
    importance.select(groups, scores, 0.5, min_keep=0)
  with pytest.raises(TypeError, match="min_keep must be an int"):
    importance.select(groups, scores, 0.5, min_keep=1.5)


def test_select_keeps_feed_keep_masks():
  params = conv_params()
  keeps = importance.select([CONV], importance.magnitude(params, [CONV]), 0.5)
  masked = jaxprune.apply_masks(params, jaxprune.structured.keep_masks(params, [CONV], keeps))
  assert_channels_zero(masked, CONV, keeps[0])


# ------------------------------------------------------------------------------- engine: plan units


def mean_score(params, group):
  """The engine's default group score: sum over members of the mean |w| over a channel."""
  return sum(np.abs(np_channels(params, m, group.size)).mean(axis=1) for m in group.members)


@jit_modes
def test_channel_groups_in_magnitude_pruning(use_jit):
  params = conv_params()
  tx = jaxprune.magnitude_pruning(0.5, groups=[CONV, OUT], prune=[], inner=optax.sgd(0.1))
  [(new, state)] = run(tx, params, 1, use_jit)
  masks = jaxprune.get_masks(state)
  keeps = keeps_from_state(state, [CONV, OUT])
  np.testing.assert_array_equal(keeps[0], top(mean_score(params, CONV), 2))
  np.testing.assert_array_equal(keeps[1], top(mean_score(params, OUT), 5 - round(2.5)))
  assert_channels_zero(new, CONV, keeps[0])
  # The dense kernel is in both groups: its mask is the product of the two.
  expected = jaxprune.structured.keep_masks(params, [CONV, OUT], keeps)
  jax.tree.map(np.testing.assert_array_equal, masks, expected)
  assert masks["conv"]["kernel"].shape == (3, 3, 2, C)


def test_channel_groups_sharing_an_axis_at_disjoint_positions():
  # A concatenation: rows 0-2 of the kernel read one layer, rows 3-5 another.
  params = {"a": {"kernel": normal(0, (2, 3))}, "b": {"kernel": normal(1, (2, 3))}}
  params["c"] = {"kernel": normal(2, (6, 2))}
  ga = ChannelGroup("a", 3, (Member("a/kernel", 1, column(3)), Member("c/kernel", 0, column(3))))
  gb = ChannelGroup(
    "b", 3, (Member("b/kernel", 1, column(3)), Member("c/kernel", 0, column(3) + 3))
  )
  masks = jaxprune.prune(params, 1 / 3, groups=[ga, gb], prune=[])
  ka, kb = (top(mean_score(params, g), 2) for g in (ga, gb))
  np.testing.assert_array_equal(masks["c"]["kernel"][:, 0], np.concatenate([ka, kb]))
  np.testing.assert_array_equal(masks["a"]["kernel"][0], ka)
  # A channel-level score through jaxprune.prune: the L2 group norm.
  masks = jaxprune.prune(params, 1 / 3, score=importance.as_score("l2"), groups=[ga, gb], prune=[])
  l2 = importance.magnitude(params, [ga, gb], p=2)
  np.testing.assert_array_equal(masks["a"]["kernel"][0], top(l2[0], 2))
  np.testing.assert_array_equal(masks["b"]["kernel"][0], top(l2[1], 2))
  overlap = ChannelGroup("o", 3, (Member("c/kernel", 0, column(3) + 2),))
  with pytest.raises(
    ValueError, match=r"'c/kernel' axis 0: positions \[2\] are in two groups, 'a' and 'o'"
  ):
    jaxprune.prune(params, 0.5, groups=[ga, overlap], prune=[])
  whole = jaxprune.groups.group(("c/kernel", 0), name="whole")
  with pytest.raises(ValueError, match="'c/kernel' axis 0 is in two groups, 'a' and 'whole'"):
    jaxprune.prune(params, 0.5, groups=[ga, whole], prune=[])


@pytest.mark.parametrize(
  "member,match",
  [
    (Member("conv/bias", 0, column(C) + 1), r"positions outside \[0, 4\)"),
    (Member("conv/bias", 0, np.zeros((C, 1), int)), "names a position along axis 0 twice"),
    (Member("conv/bias", 0, np.arange(C)), r"shape \(4, k\)"),
    (Member("conv/bias", 2, column(C)), "axis 2 is out of range"),
    (Member("nope", 0, column(C)), "names leaf 'nope'"),
  ],
)
def test_channel_group_plan_errors_name_the_group_and_first_member(member, match):
  group = ChannelGroup("bad", C, (Member("conv/kernel", 3, column(C)), member))
  with pytest.raises(ValueError, match=r"group 'bad' \(first member 'conv/kernel'\).*" + match):
    jaxprune.prune(conv_params(), 0.5, groups=[group], prune=[])


# ------------------------------------------------------------------------------ structured_pruning


@jit_modes
def test_one_shot_mlp_exact_zeros_and_counts(use_jit):
  params = mlp_params()
  tx = structured_pruning(0.5, groups=[HIDDEN], inner=optax.sgd(0.1))
  history = run(tx, params, 3, use_jit)
  expected = importance.select([HIDDEN], importance.magnitude(params, [HIDDEN]), 0.5)[0]
  for new, state in history:
    [keep] = keeps_from_state(state, [HIDDEN])
    np.testing.assert_array_equal(keep, expected)
    assert int(keep.sum()) == 3
    assert_channels_zero(new, HIDDEN, keep)
    masks = jaxprune.get_masks(state)
    assert masks["l1"]["bias"] is None
  assert int(history[-1][1].count) == 3


@pytest.mark.parametrize("name", ["l1", "l2", "taylor", "norm_scale", "random", "mean_activation"])
def test_conv_net_every_importance(name):
  params = conv_params()
  grads = conv_params(9)
  acts = {CONV.name: normal(4, (2, H, W, C)), OUT.name: normal(5, (2, 5))}
  extra = {"activations": acts} if name == "mean_activation" else {}
  groups = [CONV] if name == "norm_scale" else [CONV, OUT]
  tx = structured_pruning(0.5, groups=groups, importance=name, inner=optax.sgd(0.1))
  [(new, state)] = run(tx, params, 1, use_jit=True, grads_fn=lambda p, t: grads, **extra)
  scores = {
    "l1": lambda: importance.magnitude(params, groups),
    "l2": lambda: importance.magnitude(params, groups, p=2),
    "taylor": lambda: importance.taylor(params, grads, groups),
    "norm_scale": lambda: importance.norm_scale(params, groups),
    "random": lambda: importance.random(groups, 0, step=0),
    "mean_activation": lambda: importance.mean_activation(acts, groups),
  }[name]()
  keeps = keeps_from_state(state, groups)
  for group, s, keep in zip(groups, scores, keeps):
    kept = group.size - round(0.5 * group.size)
    np.testing.assert_array_equal(keep, top(s, kept))
    assert_channels_zero(new, group, keep)


def test_a_leaf_score_is_averaged_over_each_channels_positions():
  # A Score without channel_fn: the engine's default group score, as for magnitude_pruning.
  params = conv_params()
  tx = structured_pruning(0.5, groups=[CONV], importance=jaxprune.scores.magnitude)
  [(new, state)] = run(tx, params, 1, use_jit=False)
  [keep] = keeps_from_state(state, [CONV])
  np.testing.assert_array_equal(keep, top(mean_score(params, CONV), 2))
  assert_channels_zero(new, CONV, keep)


def test_chain_form_taylor_reads_the_chain_updates_and_needs_activations():
  params = mlp_params()
  tx = optax.chain(optax.sgd(1.0), structured_pruning(0.5, groups=[HIDDEN], importance="taylor"))
  grads = mlp_params(5)
  updates, state = tx.update(grads, tx.init(params), params)
  sgd_updates = jax.tree.map(lambda g: -g, grads)
  [keep] = keeps_from_state(state, [HIDDEN])
  np.testing.assert_array_equal(keep, top(importance.taylor(params, sgd_updates, [HIDDEN])[0], 3))
  tx = structured_pruning(0.5, groups=[HIDDEN], importance="mean_activation")
  with pytest.raises(ValueError, match="activations"):
    tx.update(grads, tx.init(params), params)


def test_round_to_min_keep_and_global_scope_in_the_pruner():
  params = {
    "a": {"kernel": normal(0, (3, 16))},
    "b": {"kernel": normal(1, (16, 5)) * 10},
  }
  ga, gb = one_axis("a/kernel", 1, 16), one_axis("b/kernel", 1, 5)
  tx = structured_pruning(0.3, groups=[ga, gb], round_to=8, min_keep=2, inner=optax.sgd(0.0))
  [(_, state)] = run(tx, params, 1, use_jit=False)
  assert [int(k.sum()) for k in keeps_from_state(state, [ga, gb])] == [8, 3]  # 11 -> 8; 5 < 8
  tx = structured_pruning(0.75, groups=[ga, gb], scope="global", min_keep=2, inner=optax.sgd(0.0))
  [(_, state)] = run(tx, params, 1, use_jit=True)
  keeps = keeps_from_state(state, [ga, gb])
  expected = importance.select(
    [ga, gb], importance.magnitude(params, [ga, gb]), 0.75, scope="global", min_keep=2
  )
  for k, e in zip(keeps, expected):
    np.testing.assert_array_equal(k, e)
  assert sum(int(k.sum()) for k in keeps) == 21 - round(0.75 * 21)
  # Overrides: group b at its own ratio.
  tx = structured_pruning(0.5, groups=[ga, gb], overrides={"b/kernel:1": 0.2}, inner=optax.sgd(0.0))
  [(_, state)] = run(tx, params, 1, use_jit=False)
  assert [int(k.sum()) for k in keeps_from_state(state, [ga, gb])] == [8, 4]


def test_jit_equals_nojit():
  params = conv_params()
  schedule = jaxprune.schedules.polynomial(begin_step=0, end_step=2, frequency=1)
  make = lambda: structured_pruning(
    0.5, groups=[CONV, OUT], importance="taylor", schedule=schedule, inner=optax.adam(0.1)
  )
  a, b = run(make(), params, 4, use_jit=False), run(make(), params, 4, use_jit=True)
  for (pa, sa), (pb, sb) in zip(a, b):
    jax.tree.map(np.testing.assert_array_equal, jaxprune.get_masks(sa), jaxprune.get_masks(sb))
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x == 0, y == 0), pa, pb)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), pa, pb)


def test_gradual_schedule_reaches_the_target():
  params = {"a": {"kernel": normal(0, (3, 20))}, "b": {"kernel": normal(1, (20, 4))}}
  g = ChannelGroup("h", 20, (Member("a/kernel", 1, column(20)), Member("b/kernel", 0, column(20))))
  schedule = jaxprune.schedules.polynomial(begin_step=1, end_step=5, frequency=2)
  tx = structured_pruning(0.8, groups=[g], schedule=schedule, inner=optax.sgd(0.1))
  history = run(tx, params, 7, use_jit=True)
  previous = np.ones(20, bool)
  for t, (new, state) in enumerate(history):
    [keep] = keeps_from_state(state, [g])
    last = max([s for s in (1, 3, 5) if s <= t], default=None)
    ratio = 0.0 if last is None else schedule.sparsity(jnp.int32(last), 0.8)
    assert int(keep.sum()) == int(importance.kept_count(20, ratio)), t
    assert not np.any(keep & ~previous)  # removed channels stay removed
    assert_channels_zero(new, g, keep)
    previous = keep
  assert int(previous.sum()) == 4  # 20 - round(0.8 * 20)


def test_cycles_with_reinitialisation():
  params = mlp_params()
  tx = structured_pruning(
    0.75, groups=[HIDDEN], cycles=2, cycle_steps=2, reinitialize=True, inner=optax.sgd(0.5)
  )
  history = run(tx, params, 6, use_jit=True)
  counts = [int(keeps_from_state(s, [HIDDEN])[0].sum()) for _, s in history]
  # Prunes at updates 2 and 4: half of the 6 channels, then 1 - 0.5 ** 2 = 0.75 of them.
  assert counts == [6, 6, 3, 3, 6 - round(0.75 * 6), 6 - round(0.75 * 6)]
  for t in (2, 4):
    new, state = history[t]
    [keep] = keeps_from_state(state, [HIDDEN])
    assert_channels_zero(new, HIDDEN, keep)
    # The kept weights are back at their initial values; every other leaf too.
    mask = jaxprune.get_masks(state)
    for path in ("l0/kernel", "l0/bias", "l1/kernel", "l1/bias"):
      m = leaf(mask, path).astype(bool) if path != "l1/bias" else np.ones(3, bool)
      np.testing.assert_allclose(leaf(new, path)[m], leaf(params, path)[m], rtol=1e-6, atol=1e-7)
  info = jaxprune.get_cycle(history[-1][1])
  assert int(info.cycle) == 2


def test_keeps_from_state_feed_slim_shapes():
  params = conv_params()
  tx = structured_pruning(0.5, groups=[CONV, OUT], packed_masks=True, inner=optax.sgd(0.0))
  [(new, state)] = run(tx, params, 1, use_jit=False)
  assert isinstance(state.masks["conv"]["kernel"], jaxprune.PackedMask)
  keeps = keeps_from_state(state, [CONV, OUT])
  assert all(k.dtype == bool for k in keeps) and [k.shape for k in keeps] == [(C,), (5,)]
  jax.tree.map(
    np.testing.assert_array_equal,
    jaxprune.get_masks(state),
    jaxprune.structured.keep_masks(params, [CONV, OUT], keeps),
  )
  with pytest.raises(ValueError, match="member 'l0/kernel' has no mask"):
    keeps_from_state(state, [HIDDEN])


def test_structured_pruning_errors():
  ok = dict(groups=[HIDDEN])
  with pytest.raises(ValueError, match="at least one channel group"):
    structured_pruning(0.5, groups=[])
  with pytest.raises(TypeError, match="ChannelGroup"):
    structured_pruning(0.5, groups=[jaxprune.groups.group(("l0/bias", 0))])
  with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
    structured_pruning(1.0, **ok)
  with pytest.raises(ValueError, match="importance must be one of"):
    structured_pruning(0.5, importance="fisher", **ok)
  with pytest.raises(
    ValueError, match=r"group 'l0/kernel:1' \(first member 'l0/kernel'\) has no norm"
  ):
    structured_pruning(0.5, importance="norm_scale", **ok)
  with pytest.raises(ValueError, match="scope must be one of"):
    structured_pruning(0.5, scope="layer", **ok)
  with pytest.raises(ValueError, match="not both"):
    structured_pruning(0.5, schedule=jaxprune.schedules.one_shot(2), cycles=2, cycle_steps=3, **ok)
  with pytest.raises(ValueError, match="cycles needs cycle_steps"):
    structured_pruning(0.5, cycles=2, **ok)
  with pytest.raises(ValueError, match="give cycles= too"):
    structured_pruning(0.5, reinitialize=True, **ok)
  with pytest.raises(ValueError, match="cycle_steps has 2 entries"):
    structured_pruning(0.5, cycles=2, cycle_steps=[1, 2], **ok)
  with pytest.raises(TypeError, match="schedule must be"):
    structured_pruning(0.5, schedule="cubic", **ok)
  tx = structured_pruning(0.5, groups=[CONV])
  with pytest.raises(ValueError, match=r"group 'conv/kernel:3' .*names leaf 'conv/kernel'"):
    tx.init(mlp_params())


def test_engine_declaration_reads_back():
  tx = structured_pruning(0.5, groups=[HIDDEN], importance="taylor", inner=optax.sgd(0.1))
  method = jaxprune.engine.method_of(tx)
  assert method.name == "structured_pruning" and method.score.reads_grads
  tx = structured_pruning(0.5, groups=[HIDDEN], cycles=1, cycle_steps=2, inner=optax.sgd(0.1))
  assert isinstance(tx.init(mlp_params()), jaxprune.IMPState)


# -------------------------------------------------------------------------------- slimming penalty


def test_penalty_adds_l1_sign_gamma_to_the_scale_gradients_exactly():
  params = conv_params()
  params["bn"]["scale"] = jnp.array([0.5, -2.0, 0.0, 3.0])
  grads = conv_params(3)
  tx = network_slimming_penalty(0.25)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  sign = np.array([1, -1, 0, 1], np.float32)
  np.testing.assert_array_equal(
    updates["bn"]["scale"], np.asarray(grads["bn"]["scale"]) + np.float32(0.25) * sign
  )
  for path in ("conv/kernel", "conv/bias", "bn/bias", "dense/kernel", "dense/bias"):
    np.testing.assert_array_equal(leaf(updates, path), leaf(grads, path))
  # From groups, or a selection; chained before the optimizer.
  for tx in (
    network_slimming_penalty(0.25, groups=[CONV]),
    network_slimming_penalty(0.25, prune="bn/scale"),
  ):
    tx = optax.chain(tx, optax.sgd(0.1))
    updates, _ = tx.update(grads, tx.init(params), params)
    expected = -0.1 * (np.asarray(grads["bn"]["scale"]) + 0.25 * np.sign(params["bn"]["scale"]))
    np.testing.assert_allclose(updates["bn"]["scale"], expected, rtol=1e-6)
    np.testing.assert_allclose(
      updates["bn"]["bias"], -0.1 * np.asarray(grads["bn"]["bias"]), rtol=1e-6
    )


def test_penalty_errors():
  with pytest.raises(ValueError, match="non-negative"):
    network_slimming_penalty(-1.0)
  with pytest.raises(TypeError, match="l1 must be a number"):
    network_slimming_penalty("1e-4")
  with pytest.raises(ValueError, match="not both"):
    network_slimming_penalty(groups=[CONV], prune="bn/scale")
  with pytest.raises(ValueError, match="none of the groups has a norm scale member"):
    network_slimming_penalty(groups=[OUT])
  tx = network_slimming_penalty()
  with pytest.raises(ValueError, match="params must be given"):
    tx.update(conv_params(), tx.init(conv_params()))
