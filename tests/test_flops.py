"""`jaxprune.flops`: multiply-adds of small dense and conv models counted by hand, sparse counts, the walk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxprune import flops


def mlp(p, x):
  h = jnp.maximum(x @ p["w1"] + p["b1"][None], 0.0)
  return h @ p["w2"]


MLP = {"w1": jnp.ones((6, 8)), "b1": jnp.zeros(8), "w2": jnp.ones((8, 3))}


def conv(p, x, stride=1, padding="VALID", groups=1):
  return lax.conv_general_dilated(
    x,
    p["k"],
    (stride, stride),
    padding,
    feature_group_count=groups,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


def test_dense_layers_by_hand():
  macs = flops.count_macs(mlp, MLP, jnp.ones((5, 6)))
  # Per example 6 x 8 + 8 x 3 multiply-adds; the bias add and the ReLU are not counted.
  assert macs == {
    "total": 5 * (48 + 24),
    "by_leaf": {"w1": 5 * 48, "w2": 5 * 24},
    "unattributed": 0,
    "by_primitive": {"dot_general": 5 * (48 + 24)},
  }


@pytest.mark.parametrize(
  "stride,padding,groups,out",
  [
    (1, "VALID", 1, 4),  # 6 - 3 + 1 = 4 outputs per side
    (2, "SAME", 1, 3),  # ceil(6 / 2)
    (1, "VALID", 2, 4),  # each output feature sees 2 / 2 = 1 input feature
  ],
)
def test_conv_by_hand(stride, padding, groups, out):
  params = {"k": jnp.ones((3, 3, 2 // groups, 4))}
  macs = flops.count_macs(
    conv, params, jnp.ones((2, 6, 6, 2)), stride=stride, padding=padding, groups=groups
  )
  expected = 2 * out * out * 4 * (3 * 3 * 2 // groups)  # outputs x kernel entries per output
  assert macs["by_leaf"] == {"k": expected}
  assert macs["by_primitive"] == {"conv_general_dilated": expected}


def test_counts_do_not_depend_on_jit_or_on_concrete_arrays():
  x = jnp.ones((5, 6))
  eager = flops.count_macs(mlp, MLP, x)
  assert flops.count_macs(jax.jit(mlp), MLP, x) == eager
  assert flops.count_macs(lambda p, a: jax.jit(mlp)(p, a), MLP, x) == eager
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (MLP, x))
  assert flops.count_macs(mlp, *shapes) == eager


def test_sparse_macs_with_masks():
  macs = flops.count_macs(mlp, MLP, jnp.ones((1, 6)))
  keep = np.zeros((6, 8), bool)
  keep[:, :2] = True  # a quarter of w1
  masks = {"w1": jnp.asarray(keep), "b1": None, "w2": None}  # None: not pruned, as in get_masks
  assert flops.sparse_macs(macs, masks) == 48 / 4 + 24
  assert flops.theoretical_speedup(macs, masks) == pytest.approx(72 / 36)
  # The same from params with the pruned weights zeroed, and from a prefixed tree.
  params = dict(MLP, w1=jnp.where(keep, 1.0, 0.0))
  assert flops.sparse_macs(macs, params) == 36
  assert flops.sparse_macs(macs, {"params": params}) == 36
  everything_pruned = {"w1": jnp.zeros((6, 8), bool), "w2": jnp.zeros((8, 3), bool)}
  assert flops.sparse_macs(macs, everything_pruned) == 0
  assert flops.theoretical_speedup(macs, everything_pruned) == np.inf
  with pytest.raises(ValueError, match="none of the leaves"):
    flops.sparse_macs(macs, {"other": jnp.ones(3)})


def test_sparse_conv_macs_scale_with_kernel_density():
  params = {"k": jnp.ones((3, 3, 2, 4)).at[:, :, :, 1:].set(0.0)}  # one output feature of four kept
  macs = flops.count_macs(conv, params, jnp.ones((1, 6, 6, 2)))
  assert flops.sparse_macs(macs, params) == 4 * 4 * 1 * 18


def test_weight_ops_name_the_leaf_of_every_product():
  def apply(p, x):
    h = x @ p["w"].T  # the weight through a transpose
    scores = h @ h.T  # two activations
    return lax.cond(x.sum() > 0, lambda a: a @ p["v"], lambda a: (a @ p["v"]) @ p["u"], scores)

  params = {"u": jnp.ones((2, 2)), "v": jnp.ones((3, 2)), "w": jnp.ones((4, 5))}
  ops = list(flops.weight_ops(apply, params, jnp.ones((3, 5))))
  assert [(op.primitive, op.leaf, op.macs, op.repeats) for op in ops] == [
    ("dot_general", "w", 3 * 5 * 4, 1),
    ("dot_general", None, 3 * 4 * 3, 1),
    ("dot_general", "v", 3 * 3 * 2, 1),
    ("dot_general", "u", 3 * 2 * 2, 1),
    ("dot_general", "v", 3 * 3 * 2, 1),
  ]
  # Every branch of the cond is listed (branch 0 is the false one); count_macs takes the costliest.
  assert [op.branch for op in ops] == [(), (), ((0, 0),), ((0, 0),), ((0, 1),)]
  assert all(op.eqn.primitive.name == "dot_general" for op in ops)
  assert flops.count_macs(apply, params, jnp.ones((3, 5)))["by_leaf"] == {"u": 12, "v": 18, "w": 60}


def test_equations_follow_leaves_into_scan_bodies():
  def apply(p, x):
    return lax.scan(lambda c, w: (c @ w, None), x, p["stack"])[0]  # one weight per step

  params = {"stack": jnp.ones((3, 4, 4))}
  ops = list(flops.weight_ops(apply, params, jnp.ones((2, 4))))
  assert [(op.leaf, op.macs, op.repeats) for op in ops] == [("stack", 2 * 4 * 4, 3)]
  names = [e.eqn.primitive.name for e in flops.equations(apply, params, jnp.ones((2, 4)))]
  assert names.index("scan") < names.index("dot_general")  # a body after its equation
  assert flops.count_macs(apply, params, jnp.ones((2, 4)))["total"] == 3 * 2 * 4 * 4
