"""Channel groups read off the jaxpr, and slimming that equals the masked model.

For every architecture: the groups `dependency_groups` finds are the ones expected, and removing
random channels with `slim` gives smaller arrays whose function equals the original function on the
params with those channels zeroed in every member, with and without jit.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune
from jaxprune import structured
from jaxprune.checks import JaxpruneWarning


@pytest.fixture(autouse=True)
def _numpy_broadcasting():
  # The functions here add biases as users write them (numpy broadcasting); conftest.py raises on
  # implicit rank promotion for the library's own code.
  with jax.numpy_rank_promotion("allow"):
    yield


def _random_like(tree, seed=3):
  """Random values of ``tree``'s shapes, drawn with NumPy (nothing to compile): nonzero biases and
  norm statistics, positive variances, so that nothing is zero by accident."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    shape = np.shape(leaf)
    if jaxprune.leaves.path_str(path).endswith("var"):
      return jnp.asarray(1 + 0.1 * np.abs(rng.standard_normal(shape)), jnp.float32)
    return jnp.asarray(0.5 * rng.standard_normal(shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, tree)


def _random_keeps(groups, seed):
  rng = np.random.default_rng(seed)
  keeps = []
  for g in groups:
    keep = rng.random(g.size) < 0.6
    keep[rng.integers(g.size)] = True
    keeps.append(keep)
  return keeps


def _assert_slim_equals_masked(fn, params, groups, keeps, args, use_jit):
  masked = jaxprune.apply_masks(params, structured.keep_masks(params, groups, keeps))
  small, small_fn = structured.slim(fn, params, groups, keeps)
  run = jax.jit(small_fn) if use_jit else small_fn
  expected = jax.jit(fn)(masked, *args)
  got = run(small, *args)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5), expected, got)
  # The arrays are physically smaller: every member lost exactly the removed channels' positions.
  named = dict(jaxprune.leaves.named_leaves(jaxprune.leaves.unwrap_variables(small)))
  full = dict(jaxprune.leaves.named_leaves(jaxprune.leaves.unwrap_variables(params)))
  for group, keep in zip(groups, keeps):
    for m in group.members:
      removed = m.index.shape[1] * int((~keep).sum())
      assert named[m.path].shape[m.axis] <= full[m.path].shape[m.axis] - removed
  return small, small_fn


def _summary(groups):
  return [(g.name, g.size, [(m.path, m.axis, m.index.shape[1]) for m in g.members]) for g in groups]


# --- architectures --------------------------------------------------------------------------------


def mlp():
  keys = jax.random.split(jax.random.key(0), 3)
  params = {
    "l0": {"kernel": jax.random.normal(keys[0], (4, 8)), "bias": jnp.ones(8)},
    "l1": {"kernel": jax.random.normal(keys[1], (8, 6)), "bias": jnp.ones(6)},
    "l2": {"kernel": jax.random.normal(keys[2], (6, 2))},
  }

  def fn(p, x):
    h = jax.nn.relu(x @ p["l0"]["kernel"] + p["l0"]["bias"])
    h = jnp.tanh(h @ p["l1"]["kernel"] + p["l1"]["bias"])
    return h @ p["l2"]["kernel"]

  expected = [
    ("l0/kernel:1", 8, [("l0/bias", 0, 1), ("l0/kernel", 1, 1), ("l1/kernel", 0, 1)]),
    ("l1/kernel:1", 6, [("l1/bias", 0, 1), ("l1/kernel", 1, 1), ("l2/kernel", 0, 1)]),
  ]
  return fn, params, (jax.random.normal(jax.random.key(9), (3, 4)),), expected


class _CNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.BatchNorm(use_running_average=True)(x)
    x = nn.relu(nn.Conv(6, (3, 3), feature_group_count=2)(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(3, name="head")(nn.relu(nn.Dense(5, name="hidden")(x)))


def _linen(module, x):
  variables = _random_like(jax.eval_shape(module.init, jax.random.key(0), x))
  return (lambda v, x: module.apply(v, x)), variables, (x,)


def cnn():
  fn, v, args = _linen(_CNN(), jax.random.normal(jax.random.key(1), (2, 5, 5, 3)))
  bn = [
    ("batch_stats/BatchNorm_0/mean", 0),
    ("batch_stats/BatchNorm_0/var", 0),
    ("params/BatchNorm_0/bias", 0),
    ("params/BatchNorm_0/scale", 0),
    ("params/Conv_0/bias", 0),
    ("params/Conv_0/kernel", 3),
  ]
  expected = [
    # The second convolution's 2 feature groups: 4 of the first one's channels each ...
    (
      "params/Conv_0/kernel:3@0,1,2,3",
      2,
      [(p, a, 4) for p, a in bn]
      + [
        ("params/Conv_1/bias", 0, 3),
        ("params/Conv_1/kernel", 3, 3),
        ("params/hidden/kernel", 0, 75),
      ],
    ),  # fmt: skip
    # ... and the channels within a feature group, the same in both groups.
    (
      "params/Conv_0/kernel:3@0,4",
      4,
      [(p, a, 2) for p, a in bn] + [("params/Conv_1/kernel", 2, 1)],
    ),
    # The output channels within each feature group, flattened into 5 x 5 x 2 rows of the dense.
    (
      "params/Conv_1/kernel:3",
      3,
      [
        ("params/Conv_1/bias", 0, 2),
        ("params/Conv_1/kernel", 3, 2),
        ("params/hidden/kernel", 0, 50),
      ],
    ),  # fmt: skip
    (
      "params/hidden/kernel:1",
      5,
      [("params/head/kernel", 0, 1), ("params/hidden/bias", 0, 1), ("params/hidden/kernel", 1, 1)],
    ),  # fmt: skip
  ]
  return fn, v, args, expected


class _Block(nn.Module):
  c: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.c, (3, 3), strides=self.stride)(x)
    y = nn.relu(nn.BatchNorm(use_running_average=True)(y))
    y = nn.BatchNorm(use_running_average=True)(nn.Conv(self.c, (3, 3))(y))
    if x.shape[-1] != self.c or self.stride != 1:
      x = nn.Conv(self.c, (1, 1), strides=self.stride, name="shortcut")(x)
    return nn.relu(x + y)


class _ResNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), name="stem")(x))
    x = _Block(8)(x)
    x = _Block(12, 2)(x)
    return nn.Dense(3)(x.mean((1, 2)))


def resnet():
  fn, v, args = _linen(_ResNet(), jax.random.normal(jax.random.key(1), (2, 8, 8, 3)))
  expected_names = {
    ("params/_Block_0/Conv_0/kernel:3", 8),  # inside the identity block
    ("params/_Block_0/Conv_1/kernel:3", 8),  # the residual stream: stem, block 0, block 1's inputs
    ("params/_Block_1/Conv_0/kernel:3", 12),
    ("params/_Block_1/Conv_1/kernel:3", 12),  # projection shortcut and block 1's output
  }
  return fn, v, args, expected_names


class _Concat(nn.Module):
  @nn.compact
  def __call__(self, x):
    a = nn.relu(nn.Conv(4, (1, 1), name="a")(x))
    b = nn.relu(nn.Conv(6, (3, 3), name="b")(x))
    y = nn.Conv(5, (3, 3), name="mix")(jnp.concatenate([a, b], -1))
    d = nn.Conv(5, (3, 3), feature_group_count=5, name="depthwise")(nn.relu(y))
    h1, h2 = jnp.split(d, [2], axis=-1)
    return nn.Dense(2)(jnp.concatenate([h1 * 2, h2], -1).mean((1, 2)))


def concat():
  fn, v, args = _linen(_Concat(), jax.random.normal(jax.random.key(1), (2, 6, 6, 3)))
  # mix's 5 channels are the depthwise convolution's 5 feature groups: one group with its output.
  expected_names = {
    ("params/a/kernel:3", 4),
    ("params/b/kernel:3", 6),
    ("params/depthwise/kernel:3", 5),
  }
  return fn, v, args, expected_names


class _Attention(nn.Module):
  @nn.compact
  def __call__(self, x):
    y = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=16, name="attn")(x)
    x = nn.LayerNorm()(x + y)
    return nn.Dense(8, name="down")(nn.gelu(nn.Dense(32, name="up")(x)))


def attention():
  fn, v, args = _linen(_Attention(), jax.random.normal(jax.random.key(1), (2, 5, 8)))
  expected_names = {
    ("params/up/kernel:1", 32),  # the MLP's hidden units
    ("params/attn/key/bias:0", 4),  # heads: query, key, value and the output projection
    ("params/attn/key/kernel:2", 4),  # query/key dimensions, the same in every head
    ("params/attn/value/kernel:2", 4),  # value dimensions
  }
  return fn, v, args, expected_names


class _Scanned(nn.Module):
  @nn.compact
  def __call__(self, x):
    class Layer(nn.Module):
      @nn.compact
      def __call__(self, h, _):
        return h + nn.Dense(8)(nn.relu(nn.Dense(16)(h))), None

    layers = nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
    h, _ = layers(name="layers")(x, None)
    return h


def scanned():
  fn, v, args = _linen(_Scanned(), jax.random.normal(jax.random.key(1), (2, 8)))
  expected = [
    # The hidden units of the stacked layers: the same units removed in every layer.
    # (flax names the Dense(8) Dense_0: it is constructed first.)
    (
      "params/layers/Dense_1/kernel:2",
      16,
      [
        ("params/layers/Dense_0/kernel", 1, 1),
        ("params/layers/Dense_1/bias", 1, 1),
        ("params/layers/Dense_1/kernel", 2, 1),
      ],
    ),  # fmt: skip
  ]
  return fn, v, args, expected


class _Pooled(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.max_pool(nn.relu(nn.Conv(6, (3, 3), name="c0")(x)), (2, 2), (2, 2))
    x = nn.avg_pool(nn.relu(nn.Conv(8, (3, 3), name="c1")(x)), (2, 2), (2, 2), padding="SAME")
    return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))


def pooled():
  fn, v, args = _linen(_Pooled(), jax.random.normal(jax.random.key(1), (2, 8, 8, 1)))
  expected = [
    ("params/c0/kernel:3", 6, [("params/c0/bias", 0, 1), ("params/c0/kernel", 3, 1),
                               ("params/c1/kernel", 2, 1)]),
    ("params/c1/kernel:3", 8, [("params/c1/bias", 0, 1), ("params/c1/kernel", 3, 1),
                               ("params/head/kernel", 0, 4)]),
  ]  # fmt: skip
  return fn, v, args, expected


class _NNX(nnx.Module):
  def __init__(self, rngs):
    self.a = nnx.Linear(4, 16, rngs=rngs)
    self.bn = nnx.BatchNorm(16, use_running_average=True, rngs=rngs)
    self.b = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.b(nnx.relu(self.bn(self.a(x))))


def nnx_model():
  graphdef, state = nnx.split(_NNX(nnx.Rngs(0)))
  state = _random_like(state)
  expected = [
    ("a/kernel:1", 16, [(p, 0, 1) for p in ("a/bias",)] + [("a/kernel", 1, 1), ("b/kernel", 0, 1)]
     + [(f"bn/{n}", 0, 1) for n in ("bias", "mean", "scale", "var")]),
  ]  # fmt: skip
  fn = lambda s, x: nnx.merge(graphdef, s)(x)
  return fn, state, (jax.random.normal(jax.random.key(1), (3, 4)),), expected


# Built once per test process (initialising a linen model compiles it).
ARCHITECTURES = {
  name: functools.cache(build)
  for name, build in {
    "mlp": mlp,
    "cnn_bn_flatten_grouped": cnn,
    "resnet": resnet,
    "concat_split_depthwise": concat,
    "attention_heads": attention,
    "scan_over_layers": scanned,
    "max_and_avg_pooling": pooled,
    "nnx": nnx_model,
  }.items()
}
# Evaluating a slimmed function without jit dispatches (and compiles) every equation on its own:
# the two smallest architectures cover that path, all of them run under jit.
EAGER = {"mlp", "cnn_bn_flatten_grouped"}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_groups_are_the_expected_ones(arch):
  fn, params, args, expected = ARCHITECTURES[arch]()
  groups = structured.dependency_groups(fn, params, *args)
  if isinstance(expected, set):
    assert {(g.name, g.size) for g in groups} == expected, _summary(groups)
  else:
    got = [(n, s, sorted(m)) for n, s, m in _summary(groups)]
    assert got == [(n, s, sorted(m)) for n, s, m in expected]


@pytest.mark.parametrize(
  "arch,use_jit",
  [(a, True) for a in ARCHITECTURES] + [(a, False) for a in sorted(EAGER)],
  ids=[f"{a}-jit" for a in ARCHITECTURES] + [f"{a}-nojit" for a in sorted(EAGER)],
)
def test_slim_equals_masked_model(arch, use_jit):
  fn, params, args, _ = ARCHITECTURES[arch]()
  groups = structured.dependency_groups(fn, params, *args)
  assert groups
  for seed in range(2):
    _assert_slim_equals_masked(fn, params, groups, _random_keeps(groups, seed), args, use_jit)


def test_layer_norm_over_channels_is_not_a_group():
  # (x - mean)^2 is summed over the channels: a removed channel is not zero there, so slimming
  # would change the statistics. The walk must not return those channels.
  params = {"l0": {"kernel": jnp.ones((4, 8))}, "l1": {"kernel": jnp.ones((8, 2))}}

  def fn(p, x):
    h = x @ p["l0"]["kernel"]
    h = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + 1e-5)
    return h @ p["l1"]["kernel"]

  assert structured.dependency_groups(fn, params, jnp.ones((3, 4))) == []


def test_max_over_channels_and_unused_leaves_are_not_groups():
  params = {"a": {"kernel": jnp.ones((4, 8))}, "unused": {"kernel": jnp.ones((8, 8))}}
  fn = lambda p, x: jnp.max(jax.nn.relu(x @ p["a"]["kernel"]), axis=-1)
  assert structured.dependency_groups(fn, params, jnp.ones((3, 4))) == []


def test_unknown_primitive_warns_and_makes_its_leaves_unprunable():
  params = {"a": {"kernel": jnp.ones((4, 8))}, "b": {"kernel": jnp.ones((8, 2))}}

  def fn(p, x):
    h = jax.nn.relu(x @ p["a"]["kernel"])
    h = jnp.sort(h, axis=-1)  # positions permuted by value: not modelled
    return h @ p["b"]["kernel"]

  with pytest.warns(JaxpruneWarning, match=r"'sort'.*a/kernel, b/kernel"):
    assert structured.dependency_groups(fn, params, jnp.ones((3, 4))) == []


def test_slim_exports_and_runs_at_other_batch_sizes():
  fn, params, args, _ = mlp()
  groups = structured.dependency_groups(fn, params, *args)
  keeps = _random_keeps(groups, 0)
  small, small_fn = structured.slim(fn, params, groups, keeps)
  masked = jaxprune.apply_masks(params, structured.keep_masks(params, groups, keeps))
  exported = jax.export.export(jax.jit(small_fn))(small, jax.ShapeDtypeStruct((5, 4), jnp.float32))
  x = jax.random.normal(jax.random.key(4), (5, 4))
  np.testing.assert_allclose(exported.call(small, x), fn(masked, x), rtol=1e-5, atol=1e-6)
  roundtrip = jax.export.deserialize(exported.serialize())
  np.testing.assert_allclose(roundtrip.call(small, x), fn(masked, x), rtol=1e-5, atol=1e-6)


def test_slimmed_params_save_and_restore_with_orbax(tmp_path):
  import orbax.checkpoint as ocp

  fn, params, args, _ = cnn()
  groups = structured.dependency_groups(fn, params, *args)
  keeps = _random_keeps(groups, 1)
  small, small_fn = structured.slim(fn, params, groups, keeps)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "slim", small)
  with ocp.StandardCheckpointer() as ckpt:
    restored = ckpt.restore(tmp_path / "slim", jax.tree.map(ocp.utils.to_shape_dtype_struct, small))
  jax.tree.map(np.testing.assert_array_equal, restored, small)
  np.testing.assert_array_equal(small_fn(restored, *args), small_fn(small, *args))


# --- bad input ----------------------------------------------------------------------------------


def test_bad_keeps_name_the_group_and_its_first_member():
  fn, params, args, _ = mlp()
  groups = structured.dependency_groups(fn, params, *args)
  ok = [np.ones(g.size, bool) for g in groups]
  with pytest.raises(ValueError, match=r"l0/kernel:1 \(first member l0/bias\).*shape \(8,\)"):
    structured.slim(fn, params, groups, [np.ones(7, bool), ok[1]])
  with pytest.raises(ValueError, match=r"l1/kernel:1.*removes all 6 channels"):
    structured.slim(fn, params, groups, [ok[0], np.zeros(6, bool)])
  with pytest.raises(TypeError, match=r"l0/kernel:1.*boolean, got dtype int64"):
    structured.slim(fn, params, groups, [np.ones(8, np.int64), ok[1]])
  with pytest.raises(ValueError, match=r"1 keeps for 2 groups"):
    structured.slim(fn, params, groups, ok[:1])


def test_a_group_of_another_function_is_refused():
  fn, params, args, _ = mlp()
  groups = structured.dependency_groups(fn, params, *args)
  other = lambda p, x: jnp.tanh(x @ p["l0"]["kernel"]) @ p["l1"]["kernel"] @ p["l2"]["kernel"]
  small, small_fn = structured.slim(other, params, groups, [np.ones(g.size, bool) for g in groups])
  with pytest.raises(
    ValueError, match=r"group l0/kernel:1 \(first member l0/bias\) is not a group"
  ):
    small_fn(small, *args)
  with pytest.raises(ValueError, match=r"member l0/bias is not a leaf"):
    structured.slim(fn, {"l1": params["l1"], "l2": params["l2"]}, groups[:1], [np.ones(8, bool)])


# --- random architectures -----------------------------------------------------------------------


def _random_architecture(seed):
  """A random stack of dense/conv layers, norms, residual adds and concatenations, as a plain fn."""
  rng = np.random.default_rng(seed)
  key = iter(jax.random.split(jax.random.key(seed), 64))
  params, ops = {}, []
  conv = bool(rng.integers(2))
  width = int(rng.integers(3, 7))
  shape = (2, 5, 5, 3) if conv else (3, 5)
  cin = shape[-1]

  def new(name, *dims):
    params[name] = 0.5 * jax.random.normal(next(key), dims)

  for i in range(int(rng.integers(2, 5))):
    kind = rng.choice(["layer", "residual", "concat", "norm"])
    if kind == "layer" or i == 0:
      new(f"w{i}", *((3, 3, cin, width) if conv else (cin, width)))
      new(f"b{i}", width)
      ops.append(("layer", i, rng.choice(["relu", "tanh", "gelu"])))
      cin = width
    elif kind == "residual":
      new(f"w{i}", *((3, 3, cin, cin) if conv else (cin, cin)))
      ops.append(("residual", i, None))
    elif kind == "concat":
      extra = int(rng.integers(2, 4))
      new(f"w{i}", *((1, 1, cin, extra) if conv else (cin, extra)))
      ops.append(("concat", i, None))
      cin += extra
    else:
      new(f"s{i}", cin)
      new(f"m{i}", cin)
      ops.append(("norm", i, None))
  new("head", (25 * cin) if conv else cin, 2)

  def apply(w, x):
    if conv:
      return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
    return x @ w

  act = {"relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu}

  def fn(p, x):
    for kind, i, a in ops:
      if kind == "layer":
        x = act[a](apply(p[f"w{i}"], x) + p[f"b{i}"])
      elif kind == "residual":
        x = x + jax.nn.relu(apply(p[f"w{i}"], x))
      elif kind == "concat":
        x = jnp.concatenate([x, jnp.tanh(apply(p[f"w{i}"], x))], axis=-1)
      else:  # batch norm at inference: per-channel statistics
        x = (x - p[f"m{i}"]) * p[f"s{i}"]
    return x.reshape(x.shape[0], -1) @ p["head"]

  return fn, params, (jax.random.normal(next(key), shape),)


@pytest.mark.parametrize("seed", range(8))
def test_every_group_of_random_architectures_slims_exactly(seed):
  fn, params, args = _random_architecture(seed)
  groups = structured.dependency_groups(fn, params, *args)
  assert groups, "every random architecture has at least its first layer's channels"
  rng = np.random.default_rng(seed)
  for j in range(len(groups)):  # each group alone, then all together
    keeps = [np.ones(g.size, bool) for g in groups]
    keeps[j] = rng.random(groups[j].size) < 0.5
    keeps[j][rng.integers(groups[j].size)] = True
    _assert_slim_equals_masked(fn, params, groups, keeps, args, use_jit=True)
  _assert_slim_equals_masked(fn, params, groups, _random_keeps(groups, seed), args, use_jit=True)
