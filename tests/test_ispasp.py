"""i-SpaSP (`jaxprune.structured.ispasp`): the loop against a NumPy reference, on channel groups."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import structured


def _reference(h, grad_of_residual, keep, iterations):
  """The authors' loop in NumPy: ``grad_of_residual(S or None) -> dR/dH`` at the dense ``H``."""
  agg = h.reshape(-1, h.shape[-1]).sum(0)
  s = set()
  for _ in range(iterations):
    g = grad_of_residual(None if not s else np.isin(np.arange(h.shape[-1]), sorted(s)))
    g = g.reshape(-1, h.shape[-1]).sum(0)
    omega = set(np.argsort(-g, kind="stable")[: 2 * keep].tolist())
    candidates = np.array(sorted(omega | s))
    s = set(candidates[np.argsort(-agg[candidates], kind="stable")[:keep]].tolist())
  return np.isin(np.arange(h.shape[-1]), sorted(s))


RNG = np.random.default_rng(0)
H = np.maximum(RNG.normal(size=(40, 24)), 0.0).astype(np.float32)
W = RNG.normal(size=(24, 5)).astype(np.float32)


@pytest.mark.parametrize("keep,iterations", [(3, 1), (6, 5), (10, 20)])
def test_linear_f2_matches_the_reference(keep, iterations):
  def grad(s):  # R = 1/2 ||(H - H_S) W||^2, or 1/2 ||H W||^2 with S empty
    d = H if s is None else H * ~s
    return (d @ W) @ W.T

  got = np.asarray(
    structured.ispasp_hidden(jnp.asarray(H), lambda h: h @ W, keep, iterations=iterations)
  )
  np.testing.assert_array_equal(got, _reference(H, grad, keep, iterations))
  assert got.sum() == keep


def test_nonlinear_f2_and_spatial_axes_match_the_reference():
  h = H.reshape(10, 2, 2, 24)  # [samples, height, width, channels]

  def grad(s):
    out = np.tanh(h @ W)
    target = 0.0 if s is None else np.tanh((h * s) @ W)
    return ((out - target) * (1 - out**2)) @ W.T

  got = structured.ispasp_hidden(jnp.asarray(h), lambda x: jnp.tanh(x @ W), 7, iterations=4)
  np.testing.assert_array_equal(np.asarray(got), _reference(h, grad, 7, 4))


def _mlp():
  k = jax.random.split(jax.random.key(0), 4)
  params = {
    "l0": {"kernel": jax.random.normal(k[0], (12, 20)), "bias": jax.random.normal(k[3], (20,))},
    "l1": {"kernel": jax.random.normal(k[1], (20, 16)) / 4, "bias": jnp.zeros(16)},
    "l2": {"kernel": jax.random.normal(k[2], (16, 4)) / 4, "bias": jnp.zeros(4)},
  }

  def fn(p, x):
    h = jax.nn.relu(x @ p["l0"]["kernel"] + p["l0"]["bias"][None, :])
    h = jax.nn.relu(h @ p["l1"]["kernel"] + p["l1"]["bias"][None, :])
    return h @ p["l2"]["kernel"] + p["l2"]["bias"][None, :]

  x = jax.random.normal(jax.random.key(9), (64, 12))
  return params, fn, x


def test_groups_are_pruned_in_turn_on_their_next_layer():
  params, fn, x = _mlp()
  groups = structured.dependency_groups(fn, params, x)
  assert [g.size for g in groups] == [20, 16]
  keeps = structured.ispasp(fn, params, groups, [0.5, 0.25], x, iterations=3)
  assert [int(k.sum()) for k in keeps] == [10, 12]
  p = jax.tree.map(np.asarray, params)
  h1 = np.maximum(np.asarray(x) @ p["l0"]["kernel"] + p["l0"]["bias"], 0)
  w1 = p["l1"]["kernel"]
  expected = structured.ispasp_hidden(jnp.asarray(h1), lambda h: h @ w1, 10, iterations=3)
  np.testing.assert_array_equal(keeps[0], expected)
  # The second group reads the hidden units computed through the first group, already pruned.
  h2 = np.maximum((h1 * keeps[0]) @ w1 + p["l1"]["bias"], 0)
  expected = structured.ispasp_hidden(
    jnp.asarray(h2), lambda h: h @ p["l2"]["kernel"], 12, iterations=3
  )
  np.testing.assert_array_equal(keeps[1], expected)
  small, small_fn = structured.slim(fn, params, groups, keeps)
  assert small["l1"]["kernel"].shape == (10, 12)
  masked = jax.tree.map(
    lambda w, m: w if m is None else w * m,
    params,
    structured.keep_masks(params, groups, keeps),
    is_leaf=lambda v: v is None,
  )
  np.testing.assert_allclose(small_fn(small, x), fn(masked, x), rtol=1e-5, atol=1e-5)


def test_errors():
  with pytest.raises(ValueError, match="keep \\(30\\) is more than the 24 units"):
    structured.ispasp_hidden(jnp.asarray(H), lambda h: h @ W, 30)
  with pytest.raises(ValueError, match="iterations must be >= 1, got 0"):
    structured.ispasp_hidden(jnp.asarray(H), lambda h: h @ W, 3, iterations=0)
  params, fn, x = _mlp()
  groups = structured.dependency_groups(fn, params, x)
  with pytest.raises(ValueError, match="got 1 ratios for 2 groups"):
    structured.ispasp(fn, params, groups, [0.5], x)
  with pytest.raises(ValueError, match=r"ratio of group .* must be in \[0, 1\)"):
    structured.ispasp(fn, params, groups, 1.0, x)


@pytest.mark.parametrize("stride,padding", [(1, "SAME"), (2, "VALID")])
def test_a_group_read_by_a_convolution_matches_ispasp_hidden_with_the_convolution(stride, padding):
  # H is the convolution's input as the function computes it (not its patches): each activation's
  # gradient sums over every patch that reads it, strides and padding included.
  dims = ("NHWC", "HWIO", "NHWC")
  k = jax.random.split(jax.random.key(1), 3)
  conv = {
    "c0": {"kernel": jax.random.normal(k[0], (3, 3, 2, 10))},
    "c1": {"kernel": jax.random.normal(k[1], (3, 3, 10, 3))},
  }

  def second(h, w):
    return jax.lax.conv_general_dilated(h, w, (stride, stride), padding, dimension_numbers=dims)

  def cnn(p, x):
    first = jax.lax.conv_general_dilated(
      x, p["c0"]["kernel"], (1, 1), "SAME", dimension_numbers=dims
    )
    return second(jax.nn.relu(first), p["c1"]["kernel"]).mean((1, 2))

  xc = jax.random.normal(k[2], (4, 7, 7, 2))
  groups = structured.dependency_groups(cnn, conv, xc)
  assert [g.size for g in groups] == [10]
  (keep,) = structured.ispasp(cnn, conv, groups, 0.6, xc, iterations=4)
  h = jax.nn.relu(
    jax.lax.conv_general_dilated(xc, conv["c0"]["kernel"], (1, 1), "SAME", dimension_numbers=dims)
  )
  expected = structured.ispasp_hidden(h, lambda v: second(v, conv["c1"]["kernel"]), 4, iterations=4)
  np.testing.assert_array_equal(keep, expected)
  small, small_fn = structured.slim(cnn, conv, groups, [keep])
  assert small["c1"]["kernel"].shape == (3, 3, 4, 3)


def test_a_group_read_by_a_multi_axis_dense_layer_sums_over_the_other_axis():
  # l1 contracts (heads, dim) of l0's [batch, heads, dim] output: a group on the heads axis
  # gets, per head, the gradient and activation summed over its dim entries.
  k = jax.random.split(jax.random.key(2), 3)
  params = {
    "l0": {"kernel": jax.random.normal(k[0], (5, 6, 4))},
    "l1": {"kernel": jax.random.normal(k[1], (6, 4, 3))},
  }

  def fn(p, x):
    h = jax.nn.relu(jnp.einsum("bi,ihd->bhd", x, p["l0"]["kernel"]))
    return jnp.einsum("bhd,hdo->bo", h, p["l1"]["kernel"])

  x = jax.random.normal(k[2], (16, 5))
  groups = structured.dependency_groups(fn, params, x)
  heads = [g for g in groups if g.size == 6]
  assert heads, [g.size for g in groups]
  (keep,) = structured.ispasp(fn, params, heads, 0.5, x, iterations=3)
  h = np.asarray(jax.nn.relu(jnp.einsum("bi,ihd->bhd", x, params["l0"]["kernel"])))
  w = np.asarray(params["l1"]["kernel"])

  def grad(s):  # dR/dH for f2(H) = einsum(H, W), channel axis moved last
    d = h if s is None else h * s[None, :, None]
    out = np.einsum("bhd,hdo->bo", d, w)
    return np.swapaxes(np.einsum("bo,hdo->bhd", out, w), 1, 2)

  np.testing.assert_array_equal(keep, _reference(np.swapaxes(h, 1, 2), grad, 3, 3))
