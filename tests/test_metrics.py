"""`jaxprune.flops` on the Flax models of experiments/: MAC counting, theoretical speedup,
compression ratio (the hand-computed pure-JAX cases are in test_flops.py).

Models are initialised with ``jax.eval_shape`` where only shapes matter, so nothing is
compiled for the MAC counts.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxprune
from experiments import models
from jaxprune import flops


def _abstract_params(model, x, **kwargs):
  return jax.eval_shape(model.init, jax.random.key(0), x, **kwargs)["params"]


def _macs(model, params, x, **kwargs):
  return flops.count_macs(
    lambda p, x, **kw: model.apply({"params": p}, x, **kw), params, x, **kwargs
  )


# ---------------------------------------------------------------------------- count_macs


def test_dense_784_300():
  model = nn.Dense(300)
  x = jnp.ones((1, 784))
  macs = _macs(model, _abstract_params(model, x), x)
  assert macs["total"] == 784 * 300 == 235_200
  assert macs["by_leaf"] == {"kernel": 235_200}
  assert macs["unattributed"] == 0
  assert macs["by_primitive"] == {"dot_general": 235_200}


def test_lenet300100_per_example_and_batch():
  model = models.LeNet300100()
  x = jax.ShapeDtypeStruct((4, 28, 28, 1), jnp.float32)
  macs = _macs(model, _abstract_params(model, x), x, train=False)
  per_example = 784 * 300 + 300 * 100 + 100 * 10
  assert per_example == 266_200
  assert macs["total"] == 4 * per_example
  assert macs["by_leaf"] == {
    "Dense_0/kernel": 4 * 235_200,
    "Dense_1/kernel": 4 * 30_000,
    "Dense_2/kernel": 4 * 1_000,
  }


def test_conv_same_padding():
  model = nn.Conv(8, (3, 3), padding="SAME")
  x = jnp.ones((1, 28, 28, 1))
  macs = _macs(model, _abstract_params(model, x), x)
  assert macs["total"] == 28 * 28 * 8 * 9 == 56_448
  assert macs["by_leaf"] == {"kernel": 56_448}
  assert macs["by_primitive"] == {"conv_general_dilated": 56_448}


def test_grouped_and_strided_conv():
  model = nn.Conv(8, (3, 3), padding="SAME", feature_group_count=2)
  x = jnp.ones((2, 28, 28, 4))
  macs = _macs(model, _abstract_params(model, x), x)
  # Each output element sees 3x3 x (4 / 2) inputs.
  assert macs["total"] == 2 * 28 * 28 * 8 * 9 * 2
  depthwise = nn.Conv(4, (3, 3), strides=2, padding="VALID", feature_group_count=4)
  macs = _macs(depthwise, _abstract_params(depthwise, x), x)
  assert macs["total"] == 2 * 13 * 13 * 4 * 9 * 1


def test_lenet5_matches_hand_count():
  model = models.LeNet5()
  x = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
  macs = _macs(model, _abstract_params(model, x), x)
  conv1 = 24 * 24 * 20 * (5 * 5 * 1)  # 28 - 5 + 1 = 24, then pooled to 12
  conv2 = 8 * 8 * 50 * (5 * 5 * 20)  # 12 - 5 + 1 = 8, then pooled to 4
  dense1 = 4 * 4 * 50 * 500
  dense2 = 500 * 10
  assert macs["by_leaf"] == {
    "Conv_0/kernel": conv1,
    "Conv_1/kernel": conv2,
    "Dense_0/kernel": dense1,
    "Dense_1/kernel": dense2,
  }
  assert macs["total"] == conv1 + conv2 + dense1 + dense2 == 2_293_000


def test_raw_scan_counted_per_step():
  def apply(p, x):
    y, _ = lax.scan(lambda c, _: (jnp.tanh(c @ p["w"]), None), x, None, length=3)
    return y

  params = {"w": jnp.ones((16, 16))}
  macs = flops.count_macs(apply, params, jnp.ones((2, 16)))
  assert macs["total"] == 3 * 2 * 16 * 16
  assert macs["by_leaf"] == {"w": 3 * 2 * 16 * 16}


class Cell(nn.Module):
  @nn.compact
  def __call__(self, c, x):
    return nn.relu(nn.Dense(16)(c)), None


@pytest.mark.parametrize("stacked", [False, True])
def test_flax_scan_of_dense(stacked):
  if stacked:  # one set of params per step, stacked along axis 0
    kw = dict(variable_axes={"params": 0}, split_rngs={"params": True})
  else:  # the same params at every step
    kw = dict(variable_broadcast="params", split_rngs={"params": False})

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.scan(Cell, length=3, **kw)()(x, None)[0]

  model = Net()
  x = jnp.ones((2, 16))
  params = _abstract_params(model, x)
  macs = _macs(model, params, x)
  assert macs["total"] == 3 * 2 * 16 * 16
  assert macs["by_leaf"] == {"ScanCell_0/Dense_0/kernel": 3 * 2 * 16 * 16}


def test_attribution_through_nested_calls_and_transforms():
  w_shape, v_shape = (8, 4), (4, 6)

  @jax.custom_vjp
  def vjp_matmul(a, w):
    return a @ w

  vjp_matmul.defvjp(lambda a, w: (a @ w, (a, w)), lambda res, g: (g @ res[1].T, res[0].T @ g))

  def apply(p, x):
    h = jax.jit(lambda a, w: a @ w.astype(jnp.bfloat16).T.T.astype(jnp.float32))(x, p["w"])
    h = jax.checkpoint(lambda a: jnp.einsum("bi,ij->bj", a, p["v"]))(h)
    h2 = vjp_matmul(x, p["w"])
    scores = h @ h.T  # two activations: not attributable
    return scores.sum() + h2.sum()

  params = {"v": jnp.ones(v_shape), "w": jnp.ones(w_shape)}
  macs = flops.count_macs(apply, params, jnp.ones((5, 8)))
  assert macs["by_leaf"] == {"v": 5 * 4 * 6, "w": 2 * 5 * 8 * 4}
  assert macs["unattributed"] == 5 * 6 * 5
  assert macs["total"] == 5 * 4 * 6 + 2 * 5 * 8 * 4 + 5 * 6 * 5


def test_cond_takes_most_expensive_branch():
  def apply(p, x, flag):
    return lax.cond(flag, lambda a: (a @ p["w"]) @ p["w"], lambda a: a @ p["w"], x)

  macs = flops.count_macs(apply, {"w": jnp.ones((4, 4))}, jnp.ones((3, 4)), True)
  assert macs["total"] == 2 * 3 * 4 * 4
  assert macs["by_leaf"] == {"w": 2 * 3 * 4 * 4}


def test_while_loop_counted_once_with_warning():
  def apply(p, x):
    return lax.while_loop(lambda c: c.sum() < 100.0, lambda c: c @ p["w"], x)

  with pytest.warns(UserWarning, match="while loop"):
    macs = flops.count_macs(apply, {"w": jnp.ones((4, 4))}, jnp.ones((1, 4)))
  assert macs["by_leaf"] == {"w": 16}


# ----------------------------------------------------------------------- theoretical_speedup


def _dense_with_sparse_kernel(fraction_zero, seed=0):
  model = nn.Dense(10, use_bias=False)
  x = jnp.ones((1, 100))
  rng = np.random.default_rng(seed)
  kernel = rng.normal(size=(100, 10)).astype(np.float32) + 5.0  # no accidental zeros
  zeros = rng.choice(kernel.size, int(round(fraction_zero * kernel.size)), replace=False)
  kernel.reshape(-1)[zeros] = 0.0
  params = {"kernel": jnp.asarray(kernel)}
  return model, params, x


def test_speedup_of_90_percent_sparse_dense_is_10x():
  model, params, x = _dense_with_sparse_kernel(0.9)
  macs = _macs(model, params, x)
  assert macs["total"] == 1000
  assert flops.theoretical_speedup(macs, params) == pytest.approx(10.0)
  # The same from masks (boolean, packed, or with a prefix) and from a summary.
  mask = {"kernel": params["kernel"] != 0}
  assert flops.theoretical_speedup(macs, mask) == pytest.approx(10.0)
  packed = {"kernel": jaxprune.masks.pack(mask["kernel"])}
  assert flops.theoretical_speedup(macs, packed) == pytest.approx(10.0)
  assert flops.theoretical_speedup(macs, {"params": params}) == pytest.approx(10.0)
  summary = jaxprune.sparsity_summary(params)
  assert flops.theoretical_speedup(macs, summary) == pytest.approx(10.0)


def test_speedup_dense_model_is_one_and_unattributed_macs_are_not_scaled():
  model, params, x = _dense_with_sparse_kernel(0.0)
  macs = _macs(model, params, x)
  assert flops.theoretical_speedup(macs, params) == 1.0

  def apply(p, a):
    h = a @ p["w"]
    return h @ h.T  # 4 * 3 * 4 unattributed MACs

  params = {"w": jnp.asarray(np.array([[1.0, 0, 0], [0, 0, 0]], np.float32))}
  macs = flops.count_macs(apply, params, jnp.ones((4, 2)))
  assert macs["by_leaf"] == {"w": 4 * 2 * 3} and macs["unattributed"] == 4 * 3 * 4
  expected = (24 + 48) / (24 / 6 + 48)
  assert flops.theoretical_speedup(macs, params) == pytest.approx(expected)


def test_speedup_lenet300100_layerwise():
  model = models.LeNet300100()
  x = jnp.ones((1, 28, 28, 1))
  params = jax.tree.map(jnp.ones_like, _abstract_params(model, x))
  macs = _macs(model, params, x)
  # Keep 10% of the first layer, 50% of the second; the last layer and biases dense;
  # masks from jaxprune.get_masks use None for unpruned leaves.
  masks = jax.tree.map(lambda _: None, params)
  k0 = np.zeros((784, 300), bool)
  k0[:, :30] = True
  k1 = np.zeros((300, 100), bool)
  k1[:150] = True
  masks["Dense_0"]["kernel"], masks["Dense_1"]["kernel"] = jnp.asarray(k0), jnp.asarray(k1)
  expected = 266_200 / (235_200 * 0.1 + 30_000 * 0.5 + 1_000)
  assert flops.theoretical_speedup(macs, masks) == pytest.approx(expected)
  pruned = jax.tree.map(
    lambda p, m: p if m is None else p * m, params, masks, is_leaf=lambda v: v is None
  )
  assert flops.theoretical_speedup(macs, pruned) == pytest.approx(expected)


def test_speedup_mismatched_tree_raises():
  model, params, x = _dense_with_sparse_kernel(0.5)
  macs = _macs(model, params, x)
  with pytest.raises(ValueError, match="none of the leaves"):
    flops.theoretical_speedup(macs, {"something_else": jnp.ones(3)})


# ------------------------------------------------------------------------ compression_ratio


def test_compression_ratio_known_tree():
  tree = {
    "a": jnp.array([1.0, 0.0, 0.0, 0.0]),
    "b": {"kernel": jnp.array([[0.0, 2.0], [3.0, 4.0]]), "bias": jnp.zeros(2)},
  }
  # 10 entries, 4 nonzero.
  assert flops.compression_ratio(tree) == pytest.approx(10 / 4)
  masks = {"m": jnp.array([True, False, False, False, False])}
  assert flops.compression_ratio(masks) == pytest.approx(5.0)
  assert flops.compression_ratio({"w": jnp.ones((3, 3))}) == 1.0
  assert math.isinf(flops.compression_ratio({"w": jnp.zeros(3)}))
