"""Wanda (jaxprune.wanda): scores by hand, exact per-output counts, N:M, sequential inputs and
models (MLP, CNN, attention, a scanned stack, nnx, bf16, jit)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune
from jaxprune import calibration


def _normal(seed, shape):
  # numpy's generator: no program to compile per shape.
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _init(model, x, seed=0):
  """Random params of ``model`` for input ``x`` (shapes from ``jax.eval_shape``: nothing compiled)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  leaves, treedef = jax.tree.flatten(shapes)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(
    treedef, [jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype) for s in leaves]
  )


def _wanda_numpy(w, xs, sparsity=None, n_m=None):
  """Wanda on a [fan_in, fan_out] matrix, by hand: |W| * ||X_j||, per-output top-k by sorting."""
  w = np.asarray(w, np.float64)
  x = np.concatenate([np.asarray(a, np.float64).reshape(-1, w.shape[0]) for a in xs])
  score = np.abs(w) * np.sqrt((x**2).sum(0))[:, None]
  keep = np.zeros(w.shape, bool)
  if n_m is None:
    k = w.shape[0] - round(sparsity * w.shape[0])
    for o in range(w.shape[1]):
      keep[np.argsort(-score[:, o], kind="stable")[:k], o] = True
  else:
    n, m = n_m
    for o in range(w.shape[1]):
      for g in range(0, w.shape[0], m):
        keep[g + np.argsort(-score[g : g + m, o], kind="stable")[:n], o] = True
  return keep


def test_scores_by_hand_one_layer():
  w = _normal(0, (10, 3))
  xs = [_normal(1, (5, 10)), _normal(2, (5, 10)) * 3.0]
  fn = lambda p, x: x @ p["w"]
  masks = jaxprune.wanda(fn, {"w": w}, xs, 0.6)
  np.testing.assert_array_equal(masks["w"], _wanda_numpy(w, xs, 0.6))
  assert np.all(np.asarray(masks["w"]).sum(0) == 4)  # round(0.6 * 10) pruned per output
  # The input norms matter: the same weights with other inputs give another mask.
  other = [xs[0] * jnp.arange(1, 11, dtype=jnp.float32)[None, :]]
  assert not np.array_equal(jaxprune.wanda(fn, {"w": w}, other, 0.6)["w"], masks["w"])


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_n_m_keeps_n_per_group_of_inputs(n, m):
  w = _normal(3, (16, 5))
  xs = [_normal(4, (7, 16))]
  masks = jaxprune.wanda(lambda p, x: x @ p["w"], {"w": w}, xs, pattern=jaxprune.patterns.n_m(n, m))
  got = np.asarray(masks["w"])
  np.testing.assert_array_equal(got, _wanda_numpy(w, xs, n_m=(n, m)))
  assert np.all(got.reshape(16 // m, m, 5).sum(1) == n)


def test_exact_counts_under_ties():
  # Every score equal: each output still prunes exactly round(s * fan_in), lower inputs kept.
  masks = jaxprune.wanda(lambda p, x: x @ p["w"], {"w": jnp.ones((7, 4))}, [jnp.ones((3, 7))], 0.5)
  got = np.asarray(masks["w"])
  assert np.all(got.sum(0) == 7 - round(0.5 * 7))
  np.testing.assert_array_equal(got[:, 0], [True] * 3 + [False] * 4)


def _mlp_fn(p, x):
  h = jax.nn.relu(x @ p["l1"]["kernel"] + p["l1"]["bias"][None, :])
  return h @ p["l2"]["kernel"]


def test_second_layer_reads_the_pruned_first_layer():
  p = {
    "l1": {"kernel": _normal(2, (6, 8)), "bias": _normal(102, (8,)) * 0.5},
    "l2": {"kernel": _normal(202, (8, 3))},
  }
  xs = [_normal(8, (20, 6)), _normal(9, (20, 6))]
  masks = jaxprune.wanda(_mlp_fn, p, xs, 0.5)
  keep1 = _wanda_numpy(p["l1"]["kernel"], xs, 0.5)
  w1 = np.where(keep1, np.asarray(p["l1"]["kernel"]), 0.0)
  hs = [np.maximum(np.asarray(x) @ w1 + np.asarray(p["l1"]["bias"]), 0) for x in xs]
  keep2 = _wanda_numpy(p["l2"]["kernel"], hs, 0.5)
  np.testing.assert_array_equal(masks["l1"]["kernel"], keep1)
  np.testing.assert_array_equal(masks["l2"]["kernel"], keep2)
  assert masks["l1"]["bias"] is None
  # The dense first layer's outputs would give another second mask: the test tells them apart.
  w1_dense, b1 = np.asarray(p["l1"]["kernel"]), np.asarray(p["l1"]["bias"])
  dense_hs = [np.maximum(np.asarray(x) @ w1_dense + b1, 0) for x in xs]
  assert not np.array_equal(_wanda_numpy(p["l2"]["kernel"], dense_hs, 0.5), keep2)


class _CNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2, padding="SAME")(x))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def _patches_numpy(x, kh, kw, stride, pad):
  """Rows of (kh, kw, cin) patches of an NHWC input, by loops."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), pad[0], pad[1], (0, 0)))
  n, h, w, c = x.shape
  rows = []
  for b in range(n):
    for i in range(0, h - kh + 1, stride):
      for j in range(0, w - kw + 1, stride):
        rows.append(x[b, i : i + kh, j : j + kw, :].reshape(-1))
  return np.stack(rows)


def test_cnn_conv_statistic_from_patches():
  model = _CNN()
  x = _normal(10, (2, 7, 7, 2))
  params = _init(model, x)
  fn = lambda p, x: model.apply({"params": p}, x)
  masks = jaxprune.wanda(fn, params, [x], 0.5)
  kernel = params["Conv_0"]["kernel"]  # HWIO (3, 3, 2, 4); SAME, stride 2 on 7: pad (1, 1)
  patches = _patches_numpy(x, 3, 3, 2, ((1, 1), (1, 1)))
  keep = _wanda_numpy(np.asarray(kernel).reshape(18, 4), [patches], 0.5)
  np.testing.assert_array_equal(masks["Conv_0"]["kernel"], keep.reshape(3, 3, 2, 4))
  assert np.all(np.asarray(masks["Dense_0"]["kernel"]).sum(0) == 64 - 32)
  # jax.jit(model.apply): the jit equation is entered, the same layers and masks come out.
  jitted = jax.jit(model.apply)
  again = jaxprune.wanda(lambda p, x: jitted({"params": p}, x), params, [x], 0.5)
  for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)


def test_attention_kernels_prune_per_output_unit():
  model = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)
  x = _normal(11, (3, 5, 8))
  params = _init(model, x)
  fn = lambda p, x: model.apply({"params": p}, x)
  masks = jaxprune.wanda(fn, params, [x], 0.25)
  q = np.asarray(masks["query"]["kernel"])  # [in 8, heads 2, dim 4]: 6 of 8 inputs per output
  assert q.shape == (8, 2, 4) and np.all(q.sum(0) == 6)
  out = np.asarray(masks["out"]["kernel"])  # [heads 2, dim 4, out 8]: inputs are (heads, dim)
  assert out.shape == (2, 4, 8) and np.all(out.sum((0, 1)) == 6)
  # The query's inputs are x itself: the mask is Wanda's on the kernel as an [8, 8] matrix.
  keep = _wanda_numpy(np.asarray(params["query"]["kernel"]).reshape(8, 8), [x], 0.25)
  np.testing.assert_array_equal(q.reshape(8, 8), keep)
  nm = jaxprune.wanda(fn, params, [x], pattern=jaxprune.patterns.n_m(2, 4))
  # N:M runs along each kernel's innermost input axis: the query's axis 0, the out kernel's dim.
  assert np.all(np.asarray(nm["query"]["kernel"]).reshape(2, 4, 8).sum(1) == 2)
  assert np.all(np.asarray(nm["out"]["kernel"]).sum(1) == 2)


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    return jax.nn.relu(nn.Dense(6)(x)), None


class _Stack(nn.Module):
  @nn.compact
  def __call__(self, x):
    layers = nn.scan(_Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)
    x, _ = layers()(x, None)
    return x


def test_scanned_stack_prunes_each_slice_in_order():
  model = _Stack()
  xs = [_normal(12, (10, 6))]
  params = _init(model, xs[0])
  fn = lambda p, x: model.apply({"params": p}, x)
  masks = jaxprune.wanda(fn, params, xs, 0.5)
  kernel = np.asarray(params["Scan_Block_0"]["Dense_0"]["kernel"])
  bias = np.asarray(params["Scan_Block_0"]["Dense_0"]["bias"])
  h = np.asarray(xs[0])
  for layer in range(2):
    keep = _wanda_numpy(kernel[layer], [h], 0.5)
    np.testing.assert_array_equal(masks["Scan_Block_0"]["Dense_0"]["kernel"][layer], keep)
    h = np.maximum(h @ np.where(keep, kernel[layer], 0) + bias[layer], 0)


class _NNX(nnx.Module):
  def __init__(self, rngs):
    self.a = nnx.Linear(6, 8, rngs=rngs)
    self.b = nnx.Linear(8, 4, rngs=rngs)

  def __call__(self, x):
    return self.b(jax.nn.relu(self.a(x)))


def test_nnx_model_through_its_param_state():
  model = _NNX(nnx.Rngs(0))
  graphdef, state = nnx.split(model, nnx.Param)
  fn = lambda s, x: nnx.merge(graphdef, s)(x)
  xs = [_normal(13, (12, 6))]
  masks = jaxprune.wanda(fn, state, xs, 0.5)
  value = lambda layer, name: np.asarray(state[layer][name].get_value())
  keep_a = _wanda_numpy(value("a", "kernel"), xs, 0.5)
  h = np.maximum(
    np.asarray(xs[0]) @ np.where(keep_a, value("a", "kernel"), 0) + value("a", "bias"), 0
  )
  np.testing.assert_array_equal(masks["a"]["kernel"], keep_a)
  np.testing.assert_array_equal(masks["b"]["kernel"], _wanda_numpy(value("b", "kernel"), [h], 0.5))
  assert masks["a"]["bias"] is None
  pruned = jaxprune.apply_masks(jaxprune.leaves.unwrap_variables(state), masks)
  assert np.sum(np.asarray(pruned["a"]["kernel"]) == 0) == 24


def test_bf16_params_and_jitted_fn():
  p = {
    "l1": {"kernel": _normal(14, (6, 8)).astype(jnp.bfloat16), "bias": jnp.zeros(8, jnp.bfloat16)},
    "l2": {"kernel": _normal(15, (8, 3)).astype(jnp.bfloat16)},
  }
  xs = [_normal(16, (9, 6)).astype(jnp.bfloat16)]
  masks = jaxprune.wanda(_mlp_fn, p, xs, 0.5)
  assert masks["l1"]["kernel"].dtype == jnp.bool_
  assert np.all(np.asarray(masks["l1"]["kernel"]).sum(0) == 3)
  jitted = jaxprune.wanda(jax.jit(_mlp_fn), p, xs, 0.5)
  for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(jitted)):
    np.testing.assert_array_equal(a, b)
  # The statistics are float32 whatever the params' dtype.
  layer, x = calibration.layer_inputs(_mlp_fn, p, xs[0])[0]
  assert x.dtype == jnp.float32 and layer.path == "l1/kernel"
