"""SparseGPT (jaxprune.sparsegpt): the reconstruction against least squares, lazy batch updates,
exact counts per block, N:M, sequential layers, stacked leaves, dtypes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune
from jaxprune.sparsegpt import reconstruct


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


def _hessian(x):
  x = np.asarray(x, np.float64)
  return 2.0 * x.T @ x


def _dampened(h, dampening=0.01):
  h = np.array(h, np.float64)
  dead = np.diag(h) == 0
  h[dead, dead] = 1.0
  return h + dampening * np.mean(np.diag(h)) * np.eye(len(h)), dead


def _sequential_least_squares(w, h, keep, dampening=0.01):
  """Inputs in order; at each pruned input ``i`` of an output, the not-yet-processed weights
  ``R = {i+1, ...}`` solve ``min (d^T H d)`` with ``d_i = -w_i`` over ``{i} + R`` (dampened H):
  ``d_R = -H_RR^-1 H_Ri d_i``, a direct solve (no inverse Cholesky factor)."""
  h, dead = _dampened(h, dampening)
  w = np.array(w, np.float64)
  w[dead] = 0.0
  n = len(h)
  for o in range(w.shape[1]):
    for i in range(n):
      if keep[i, o]:
        continue
      rest = np.arange(i + 1, n)
      d_i = -w[i, o]
      w[i, o] = 0.0
      if len(rest):
        w[rest, o] += -np.linalg.solve(h[np.ix_(rest, rest)], h[rest, i]) * d_i
  return w


@pytest.fixture(scope="module")
def layer():
  x = np.asarray(_normal(0, (40, 12))) + 0.3 * np.asarray(_normal(1, (40, 1)))  # correlated
  w = _normal(2, (12, 5))
  return w, _hessian(x), x


@pytest.mark.parametrize("block_size", [12, 5])
def test_fixed_mask_reconstruction_is_sequential_least_squares(layer, block_size):
  w, h, _ = layer
  keep = np.asarray(jax.random.bernoulli(jax.random.key(3), 0.5, w.shape))
  new, mask = reconstruct(w, h, mask=keep, block_size=block_size)
  np.testing.assert_array_equal(mask, keep)
  expected = _sequential_least_squares(w, h, keep)
  np.testing.assert_allclose(new, expected, rtol=2e-4, atol=2e-4)
  assert np.all(np.asarray(new)[~keep] == 0)


def test_lazy_batch_updates_equal_one_block():
  x = _normal(4, (64, 16))
  w = _normal(5, (16, 6))
  h = _hessian(x)
  pattern = jaxprune.patterns.n_m(2, 4)
  full, full_mask = reconstruct(w, h, pattern=pattern, block_size=16)
  new, mask = reconstruct(w, h, pattern=pattern, block_size=4)  # 4 blocks, 3 lazy updates
  np.testing.assert_array_equal(mask, full_mask)
  np.testing.assert_allclose(new, full, rtol=1e-4, atol=1e-5)
  # The adaptive N:M mask is the one of the fixed-mask reconstruction with it.
  fixed, _ = reconstruct(w, h, mask=full_mask, block_size=4)
  np.testing.assert_allclose(fixed, full, rtol=1e-4, atol=1e-5)


def test_reconstruction_beats_masking_alone_and_dead_inputs_get_zero_weights(layer):
  w, h, x = layer
  new, mask = reconstruct(w, h, 0.5)
  x, w = np.asarray(x), np.asarray(w)
  err = lambda v: float(np.sum((x @ np.asarray(v) - x @ w) ** 2))
  assert err(new) < err(np.where(mask, w, 0.0))
  dead = x.copy()
  dead[:, 2] = 0.0  # an input that is always zero: H_22 = 0
  new, mask = reconstruct(w, _hessian(dead), 0.0)
  assert np.all(np.asarray(mask))
  assert np.all(np.asarray(new)[2] == 0) and np.all(np.asarray(new)[3:] == np.asarray(w)[3:])


def test_exact_count_per_block_and_first_block_mask():
  x = _normal(6, (50, 20))
  w = _normal(7, (20, 3))
  h = _hessian(x)
  new, mask = reconstruct(w, h, 0.3, block_size=8)
  kept = np.asarray(mask)
  # Blocks of 8, 8 and 4 inputs over 3 outputs: round(0.3 * 24) = 7 and round(0.3 * 12) = 4.
  assert [int((~kept[a:b]).sum()) for a, b in ((0, 8), (8, 16), (16, 20))] == [7, 7, 4]
  assert np.all(np.asarray(new)[~kept] == 0)
  # The first block's mask: the 7 lowest w^2 / [U]_ii^2 (U the upper Cholesky factor of H^-1).
  hd, _ = _dampened(h)
  u = np.linalg.cholesky(np.linalg.inv(hd)).T
  score = np.asarray(w[:8], np.float64) ** 2 / np.diag(u)[:8, None] ** 2
  expected = np.ones((8, 3), bool)
  expected.reshape(-1)[np.argsort(score.reshape(-1), kind="stable")[:7]] = False
  np.testing.assert_array_equal(kept[:8], expected)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_n_m_keeps_n_per_group(n, m):
  x = _normal(8, (30, 16))
  new, mask = reconstruct(_normal(9, (16, 6)), _hessian(x), pattern=jaxprune.patterns.n_m(n, m))
  assert np.all(np.asarray(mask).reshape(16 // m, m, 6).sum(1) == n)
  assert np.all(np.asarray(new)[~np.asarray(mask)] == 0)


def _mlp_fn(p, x):
  h = jax.nn.relu(x @ p["l1"]["kernel"] + p["l1"]["bias"][None, :])
  return h @ p["l2"]["kernel"]


def test_layers_are_pruned_on_the_reconstructed_earlier_layers():
  p = {
    "l1": {"kernel": _normal(12, (8, 12)), "bias": _normal(13, (12,)) * 0.3},
    "l2": {"kernel": _normal(14, (12, 4))},
  }
  xs = [_normal(15, (20, 8)), _normal(16, (20, 8))]
  masks, new = jaxprune.sparsegpt(_mlp_fn, p, xs, 0.5, block_size=4)
  gram = lambda a: sum(np.asarray(b, np.float64).T @ np.asarray(b, np.float64) for b in a)
  w1, k1 = reconstruct(p["l1"]["kernel"], 2.0 * gram(xs) / 40, 0.5, block_size=4)
  b1 = np.asarray(p["l1"]["bias"])
  hs = [np.maximum(np.asarray(x) @ np.asarray(w1) + b1, 0) for x in xs]
  w2, k2 = reconstruct(p["l2"]["kernel"], 2.0 * gram(hs) / 40, 0.5, block_size=4)
  np.testing.assert_array_equal(masks["l1"]["kernel"], k1)
  np.testing.assert_array_equal(masks["l2"]["kernel"], k2)
  np.testing.assert_allclose(new["l1"]["kernel"], w1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(new["l2"]["kernel"], w2, rtol=1e-4, atol=1e-4)
  assert new["l1"]["bias"] is p["l1"]["bias"] and masks["l1"]["bias"] is None
  # The same through jit: the pjit of a jitted fn is entered.
  masks_jit, new_jit = jaxprune.sparsegpt(jax.jit(_mlp_fn), p, xs, 0.5, block_size=4)
  np.testing.assert_array_equal(masks_jit["l2"]["kernel"], k2)
  np.testing.assert_allclose(new_jit["l2"]["kernel"], new["l2"]["kernel"], rtol=1e-6, atol=1e-6)


def test_linen_mlp_with_bf16_params_keeps_their_dtype():
  bf16 = jnp.bfloat16
  model = nn.Sequential([nn.Dense(12, param_dtype=bf16), nn.relu, nn.Dense(4, param_dtype=bf16)])
  x = _normal(19, (16, 8))
  params = _init(model, x)
  fn = lambda p, x: model.apply({"params": p}, x)
  masks, new = jaxprune.sparsegpt(fn, params, [x], 0.5, block_size=4)
  for name in ("layers_0", "layers_2"):
    assert new[name]["kernel"].dtype == bf16 and new[name]["bias"] is params[name]["bias"]
    kept = np.asarray(masks[name]["kernel"])
    assert np.all(np.asarray(new[name]["kernel"].astype(jnp.float32))[~kept] == 0)
    assert (~kept).sum() == kept.size // 2
  # Flax computes in float32 here (the kernel is converted): the layer is the float32 matrix's.
  h = np.asarray(x, np.float64)
  w, keep = reconstruct(params["layers_0"]["kernel"], _hessian(h) / 16, 0.5, block_size=4)
  np.testing.assert_array_equal(masks["layers_0"]["kernel"], keep)
  np.testing.assert_array_equal(new["layers_0"]["kernel"], w.astype(bf16))


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    return jax.nn.relu(nn.Dense(8)(x)), None


class _Stack(nn.Module):
  @nn.compact
  def __call__(self, x):
    layers = nn.scan(_Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)
    x, _ = layers()(x, None)
    return nn.Dense(3)(x)


def test_scanned_stack_one_slice_at_a_time():
  model = _Stack()
  x = _normal(20, (24, 8))
  params = _init(model, x)
  fn = lambda p, x: model.apply({"params": p}, x)
  layers = jaxprune.calibration.layers(fn, params, x)
  assert [(la.path, la.layer) for la in layers] == [
    ("Scan_Block_0/Dense_0/kernel", 0),
    ("Scan_Block_0/Dense_0/kernel", 1),
    ("Dense_0/kernel", None),
  ]
  masks, new = jaxprune.sparsegpt(fn, params, [x], 0.5)
  stack = params["Scan_Block_0"]["Dense_0"]
  h = x
  for layer in range(2):
    w, keep = reconstruct(stack["kernel"][layer], _hessian(h) / 24, 0.5)
    np.testing.assert_array_equal(masks["Scan_Block_0"]["Dense_0"]["kernel"][layer], keep)
    np.testing.assert_allclose(
      new["Scan_Block_0"]["Dense_0"]["kernel"][layer], w, rtol=1e-4, atol=1e-4
    )
    h = np.maximum(np.asarray(h) @ np.asarray(w) + np.asarray(stack["bias"][layer]), 0)
  w, keep = reconstruct(params["Dense_0"]["kernel"], _hessian(h) / 24, 0.5)
  np.testing.assert_allclose(new["Dense_0"]["kernel"], w, rtol=1e-3, atol=1e-3)


def test_option_errors():
  p = {"w": jnp.ones((4, 2))}
  fn = lambda p, x: x @ p["w"]
  xs = [jnp.ones((3, 4))]
  for bad in (0, True, 2.5):
    with pytest.raises((ValueError, TypeError), match="block_size"):
      jaxprune.sparsegpt(fn, p, xs, 0.5, block_size=bad)
  for bad in (-0.1, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="dampening"):
      jaxprune.sparsegpt(fn, p, xs, 0.5, dampening=bad)
  with pytest.raises(ValueError, match=r"leaf 'w'.*block_size=6.*M=4"):
    jaxprune.sparsegpt(
      fn,
      {"w": jnp.ones((8, 2))},
      [jnp.ones((3, 8))],
      pattern=jaxprune.patterns.n_m(2, 4),
      block_size=6,
    )
  with pytest.raises(ValueError, match="not both"):
    reconstruct(jnp.ones((4, 2)), jnp.eye(4), 0.5, mask=jnp.ones((4, 2), bool))
  # A singular Hessian without dampening: the reconstruction is not finite, and it says so.
  with pytest.raises(ValueError, match="raise dampening"):
    jaxprune.sparsegpt(fn, {"w": jnp.ones((4, 2))}, [jnp.ones((3, 4))], 0.5, dampening=0.0)
