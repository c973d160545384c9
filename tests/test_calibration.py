"""The capture of jaxprune.calibration: layers and their inputs read off any function's jaxpr
(dense, DenseGeneral, convolutions of any layout, either operand order), the driver, its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune
from jaxprune import calibration


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


CONVS = {
  # name: (dimension numbers, input shape, kernel shape, strides, padding, lhs/rhs dilation)
  "hwio": (
    ("NHWC", "HWIO", "NHWC"),
    (2, 7, 6, 3),
    (3, 2, 3, 4),
    (2, 1),
    ((1, 0), (2, 1)),
    (1, 1),
    (1, 2),
  ),
  "oihw": (
    ("NCHW", "OIHW", "NCHW"),
    (2, 3, 6, 5),
    (4, 3, 2, 3),
    (1, 2),
    ((0, 1), (1, 1)),
    (1, 1),
    (1, 1),
  ),
  "transposed": (
    ("NHWC", "HWIO", "NHWC"),
    (1, 4, 4, 2),
    (3, 3, 2, 2),
    (1, 1),
    ((2, 2), (1, 2)),
    (2, 2),
    (1, 1),
  ),
}


@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv_inputs_are_the_patches_in_kernel_input_order(name):
  dn, x_shape, k_shape, strides, padding, lhs_dil, rhs_dil = CONVS[name]
  x, kernel = _normal(0, x_shape), _normal(1, k_shape)

  def fn(p, x):
    return jax.lax.conv_general_dilated(
      x, p["k"], strides, padding, lhs_dil, rhs_dil, dimension_numbers=dn
    )

  ((layer, patches),) = calibration.layer_inputs(fn, {"k": kernel}, x)
  out_axis = dn[1].index("O")
  assert layer.kind == "conv_general_dilated" and layer.output_axes == (out_axis,)
  assert layer.fan_in == kernel.size // k_shape[out_axis]
  # The direct computation: every output position is its patch times the kernel as a matrix.
  y = fn({"k": kernel}, x)
  y = jnp.moveaxis(y, dn[2].index("C"), -1).reshape(-1, k_shape[out_axis])
  np.testing.assert_allclose(patches @ layer.to_matrix(kernel), y, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(layer.from_matrix(layer.to_matrix(kernel)), kernel)


def test_conv_patch_features_are_kh_kw_cin():
  # One image, one output position (VALID 2x2 over 2x2x3): the row is the image in (h, w, c) order.
  x = jnp.arange(12.0).reshape(1, 2, 2, 3)
  fn = lambda p, x: jax.lax.conv_general_dilated(
    x, p["k"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  ((_, patches),) = calibration.layer_inputs(fn, {"k": jnp.ones((2, 2, 3, 1))}, x)
  np.testing.assert_array_equal(patches, np.arange(12.0)[None, :])


def test_dot_general_layers_any_operand_order_and_kernel_rank():
  w = _normal(2, (5, 4))  # used as W @ x.T: the weight comes first, its axis 1 is contracted
  x = _normal(3, (6, 4))
  first = lambda p, x: (p["w"] @ x.T).T
  ((layer, inputs),) = calibration.layer_inputs(first, {"w": w}, x)
  assert (layer.input_axes, layer.output_axes, layer.fan_in, layer.fan_out) == ((1,), (0,), 4, 5)
  np.testing.assert_array_equal(inputs, x)
  # The same layer written x @ W.T-free: Wanda gives the transposed masks.
  masks = jaxprune.wanda(first, {"w": w}, [x], 0.5)
  plain = jaxprune.wanda(lambda p, x: x @ p["w"], {"w": w.T}, [x], 0.5)
  np.testing.assert_array_equal(masks["w"], plain["w"].T)
  # A [heads, dim, out] kernel contracted over two axes, written as an einsum.
  k = _normal(4, (2, 3, 5))
  fn = lambda p, x: jnp.einsum("bthd,hdo->bto", x, p["k"])
  xs = _normal(5, (2, 4, 2, 3))
  ((layer, inputs),) = calibration.layer_inputs(fn, {"k": k}, xs)
  assert (layer.input_axes, layer.fan_in, layer.fan_out) == ((0, 1), 6, 5)
  assert inputs.shape == (8, 6)
  np.testing.assert_allclose(
    inputs @ layer.to_matrix(k), fn({"k": k}, xs).reshape(8, 5), rtol=1e-5, atol=1e-5
  )


def test_batches_bare_or_tuples_and_several_arguments():
  p = {"first": _normal(6, (2, 3)), "second": _normal(7, (4, 3))}
  fn = lambda p, x, y: x @ p["second"] + y @ p["first"]
  xs = [(_normal(8, (5, 4)), _normal(9, (5, 2))), (_normal(10, (5, 4)), _normal(11, (5, 2)))]
  # In use order, not in the params' order.
  assert [la.path for la in calibration.layers(fn, p, *xs[0])] == ["second", "first"]
  masks = jaxprune.wanda(fn, p, xs, 0.5)
  one = lambda p, x: x @ p["a"]
  bare = jaxprune.wanda(one, {"a": p["second"]}, [b[0] for b in xs], 0.5)
  tupled = jaxprune.wanda(one, {"a": p["second"]}, [(b[0],) for b in xs], 0.5)
  np.testing.assert_array_equal(masks["second"], bare["a"])
  np.testing.assert_array_equal(tupled["a"], bare["a"])


def test_magnitude_through_the_driver_is_prune():
  # Each layer keeps its round(0.3 * size) largest |w| (the masks of jaxprune.prune(p, 0.7)).
  p = {"a": {"kernel": _normal(12, (8, 8))}, "b": {"kernel": _normal(13, (8, 4))}}
  fn = lambda p, x: jax.nn.relu(x @ p["a"]["kernel"]) @ p["b"]["kernel"]
  got = calibration.magnitude(fn, p, [_normal(14, (3, 8))], 0.7)
  for name in ("a", "b"):
    w = np.abs(np.asarray(p[name]["kernel"])).reshape(-1)
    expected = np.zeros(w.size, bool)
    expected[np.argsort(-w, kind="stable")[: w.size - round(0.7 * w.size)]] = True
    np.testing.assert_array_equal(np.asarray(got[name]["kernel"]).reshape(-1), expected)


@pytest.mark.parametrize("axis", [None, 0])
def test_exact_selection_with_ties_and_nans(axis):
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 3, (9, 4)).astype(np.float32)
  scores[1, 2] = scores[5, 0] = np.nan
  key = ~np.asarray(jaxprune.selection.ordered_key(jnp.asarray(scores)))
  for keep in (0, 1, 4, 9, 20, 36, 40):
    got = np.asarray(calibration._keep_highest(jnp.asarray(scores), jnp.int32(keep), axis))
    if axis is None:  # the keep highest in the library's order, the lower index first on ties
      expected = np.zeros(36, bool)
      expected[np.argsort(key.reshape(-1), kind="stable")[:keep]] = True
      expected = expected.reshape(9, 4)
    else:
      expected = np.zeros((9, 4), bool)
      for o in range(4):
        expected[np.argsort(key[:, o], kind="stable")[:keep], o] = True
    np.testing.assert_array_equal(got, expected)


def _fns():
  w = {"w": jnp.ones((4, 4))}
  x = jnp.ones((2, 4))
  return w, x


@pytest.mark.parametrize(
  "fn,match",
  [
    (lambda p, x: x @ (2.0 * p["w"]), r"leaf 'w' is used by 'mul'"),
    (lambda p, x: x @ p["w"].T, r"leaf 'w' is used by 'transpose'"),
    (lambda p, x: (x @ p["w"], p["w"]), r"leaf 'w' is returned by fn"),
    (lambda p, x: x @ p["w"] @ p["w"], None),  # used twice: the second use reads the pruned leaf
    (lambda p, x: x, r"leaf 'w' is selected for pruning, but no dot_general"),
    (lambda p, x: p["w"] @ p["w"], r"leaf 'w\' and leaf 'w' are both operands"),
  ],
)
def test_leaves_that_are_not_layer_weights_are_named(fn, match):
  p, x = _fns()
  if match is None:
    assert jaxprune.wanda(fn, p, [x], 0.5)["w"].shape == (4, 4)
    return
  with pytest.raises(ValueError, match=match):
    jaxprune.wanda(fn, p, [x], 0.5)


def test_layer_errors_name_the_leaf():
  stacked = {"w": jnp.ones((2, 3, 4))}
  batched = lambda p, x: jax.lax.dot_general(x, p["w"], (((2,), (1,)), ((0,), (0,))))
  with pytest.raises(ValueError, match=r"leaf 'w' enters a dot_general with batch dimensions"):
    jaxprune.wanda(batched, stacked, [jnp.ones((2, 5, 3))], 0.5)
  grouped = lambda p, x: jax.lax.conv_general_dilated(
    x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2
  )
  with pytest.raises(ValueError, match=r"leaf 'k' is the kernel .* feature_group_count=2"):
    jaxprune.wanda(grouped, {"k": jnp.ones((3, 3, 2, 4))}, [jnp.ones((1, 5, 5, 4))], 0.5)
  p, x = _fns()
  loop = lambda p, x: jax.lax.fori_loop(0, jnp.sum(x).astype(jnp.int32), lambda i, c: c @ p["w"], x)
  with pytest.raises(NotImplementedError, match=r"leaf 'w' is used inside a 'while'"):
    jaxprune.wanda(loop, p, [x], 0.5)
  branch = lambda p, x: jax.lax.cond(jnp.sum(x) > 0, lambda: x @ p["w"], lambda: x)
  with pytest.raises(NotImplementedError, match=r"leaf 'w' is used inside a 'cond'"):
    jaxprune.wanda(branch, p, [x], 0.5)
  nm = jaxprune.patterns.n_m(2, 4)
  with pytest.raises(ValueError, match=r"leaf 'w'.*M=4 does not divide its input axis 0 of size 6"):
    jaxprune.wanda(lambda p, x: x @ p["w"], {"w": jnp.ones((6, 4))}, [jnp.ones((2, 6))], pattern=nm)


def test_argument_errors():
  p, x = _fns()
  fn = lambda p, x: x @ p["w"]
  with pytest.raises(ValueError, match=r"wanda: sparsity must be in \[0, 1\), got 1.5"):
    jaxprune.wanda(fn, p, [x], 1.5)
  with pytest.raises(ValueError, match="sparsity is required"):
    jaxprune.wanda(fn, p, [x])
  with pytest.raises(ValueError, match="calibration_batches is empty"):
    jaxprune.sparsegpt(fn, p, [], 0.5)
  with pytest.raises(ValueError, match=r"calibration batch 2 has arguments \['float32\[3, 4\]'\]"):
    jaxprune.wanda(fn, p, [x, x, jnp.ones((3, 4))], 0.5)
  with pytest.raises(TypeError, match="sequence of batches"):
    jaxprune.wanda(fn, p, x, 0.5)
  with pytest.raises(ValueError, match="pattern must be None"):
    jaxprune.wanda(fn, p, [x], 0.5, pattern=jaxprune.patterns.block((2, 2)))
  with pytest.raises(ValueError, match="default axis, got axis=0"):
    jaxprune.wanda(fn, p, [x], pattern=jaxprune.patterns.n_m(2, 4, axis=0))
  with pytest.raises(ValueError, match=r"prune pattern 'nothing' matches no leaf"):
    jaxprune.sparsegpt(fn, p, [x], 0.5, prune="nothing")
