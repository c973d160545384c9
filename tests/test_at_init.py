"""Pruning at initialisation (SNIP, GraSP, SynFlow), the shuffle ablation and layer collapse."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune

IN, HIDDEN, OUT = 6, 5, 3


def make_params(seed=0):
  k = jax.random.split(jax.random.key(seed), 2)
  return {
    "l1": {"kernel": jax.random.normal(k[0], (IN, HIDDEN)), "bias": jnp.zeros(HIDDEN)},
    "l2": {"kernel": jax.random.normal(k[1], (HIDDEN, OUT)), "bias": jnp.zeros(OUT)},
  }


def linear_apply(params, x):  # a linear 2-layer net: gradients are easy to write by hand
  h = x @ params["l1"]["kernel"] + params["l1"]["bias"][None, :]
  return h @ params["l2"]["kernel"] + params["l2"]["bias"][None, :]


def relu_apply(params, x):
  h = jax.nn.relu(x @ params["l1"]["kernel"] + params["l1"]["bias"][None, :])
  return h @ params["l2"]["kernel"] + params["l2"]["bias"][None, :]


X = np.asarray(jax.random.normal(jax.random.key(9), (4, IN)))


def top_global(scores: dict, keep: int) -> dict:
  """Reference global selection in NumPy (no ties in these tests)."""
  flat = np.concatenate([v.ravel() for v in scores.values()])
  threshold = np.sort(flat)[-keep]
  return {k: v >= threshold for k, v in scores.items()}


def kernels(masks):
  return {k: np.asarray(masks[k]["kernel"]) for k in ("l1", "l2")}


def test_snip_scores_by_hand():
  params = make_params()
  w1, w2 = (np.asarray(params[k]["kernel"], np.float64) for k in ("l1", "l2"))
  # L = sum(x W1 W2): dL/dW1 = x^T 1 W2^T, dL/dW2 = (x W1)^T 1.
  ones = np.ones((X.shape[0], OUT))
  g1, g2 = X.T @ ones @ w2.T, (X @ w1).T @ ones
  expected = top_global({"l1": np.abs(w1 * g1), "l2": np.abs(w2 * g2)}, keep=13)
  loss = lambda p, x: jnp.sum(linear_apply(p, x))
  masks = jaxprune.snip(params, loss, X, 1 - 13 / 45)
  for k in ("l1", "l2"):
    np.testing.assert_array_equal(kernels(masks)[k], expected[k])
  assert masks["l1"]["bias"] is None


def test_grasp_hessian_vector_product_by_hand():
  params = make_params()
  w1, w2 = (np.asarray(params[k]["kernel"], np.float64) for k in ("l1", "l2"))
  # A quadratic loss in each weight block: L = 0.5 * ||x W1 W2||^2.
  loss = lambda p, x: 0.5 * jnp.sum(linear_apply(p, x) ** 2)
  # Generic check of H g against the full Hessian of the flattened kernels.
  flat0, unravel = jax.flatten_util.ravel_pytree(params)
  grad = jax.grad(lambda f: loss(unravel(f), X))(flat0)
  hessian = jax.hessian(lambda f: loss(unravel(f), X))(flat0)
  hg = unravel(hessian @ grad)
  scores = {k: w * np.asarray(hg[k]["kernel"], np.float64) for k, w in (("l1", w1), ("l2", w2))}
  expected = top_global(scores, keep=20)
  masks = jaxprune.grasp(params, loss, X, 1 - 20 / 45)
  for k in ("l1", "l2"):
    np.testing.assert_array_equal(kernels(masks)[k], expected[k])


def test_synflow_one_round_by_hand_and_data_free():
  params = make_params()
  a1, a2 = (np.abs(np.asarray(params[k]["kernel"], np.float64)) for k in ("l1", "l2"))
  # R = 1^T |W1| |W2| 1 (biases are zero): dR/dW1 = 1 (|W2| 1)^T, dR/dW2 = (1^T |W1|)^T 1^T.
  r1 = np.outer(np.ones(IN), a2 @ np.ones(OUT))
  r2 = np.outer(np.ones(IN) @ a1, np.ones(OUT))
  expected = top_global({"l1": a1 * r1, "l2": a2 * r2}, keep=15)
  masks = jaxprune.synflow(params, relu_apply, (1, IN), 1 - 15 / 45, rounds=1)
  for k in ("l1", "l2"):
    np.testing.assert_array_equal(kernels(masks)[k], expected[k])
  # No data enters: the input batch size changes nothing, nor does the sign of the weights.
  flipped = jax.tree.map(lambda x: -x, params)
  for other in (
    jaxprune.synflow(params, relu_apply, (7, IN), 1 - 15 / 45, rounds=1),
    jaxprune.synflow(flipped, relu_apply, (1, IN), 1 - 15 / 45, rounds=1),
  ):
    for k in ("l1", "l2"):
      np.testing.assert_array_equal(kernels(other)[k], expected[k])


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
@pytest.mark.parametrize("distribution", ["global", "uniform", "erk"])
def test_exact_sparsity(method, distribution):
  k = jax.random.split(jax.random.key(3), 2)
  params = {
    "a": {"kernel": jax.random.normal(k[0], (30, 40))},
    "b": {"kernel": jax.random.normal(k[1], (40, 10))},
  }
  apply = lambda p, x: jax.nn.relu(x @ p["a"]["kernel"]) @ p["b"]["kernel"]
  loss = lambda p, x: jnp.mean(apply(p, x) ** 2)
  x = jax.random.normal(jax.random.key(4), (8, 30))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if method == "synflow":
      masks = jaxprune.synflow(params, apply, (1, 30), 0.9, rounds=10, distribution=distribution)
    else:
      masks = getattr(jaxprune, method)(params, loss, x, 0.9, distribution=distribution)
  zeros = {name: int((~np.asarray(masks[name]["kernel"])).sum()) for name in ("a", "b")}
  if distribution == "global":
    assert sum(zeros.values()) == round(0.9 * 1600)
  else:
    shares = jaxprune.allocation.get_allocation(distribution)(0.9, [(30, 40), (40, 10)])
    assert zeros == {"a": round(shares[0] * 1200), "b": round(shares[1] * 400)}


def test_synflow_avoids_the_collapse_that_snip_shows():
  # A wide first layer (2000 weights) before a small one (15): per weight, SNIP's scores are far
  # smaller in the wide layer, so at 99.8% global sparsity (4 weights kept) SNIP keeps only the small layer; SynFlow's
  # conserved flow keeps a path (Tanaka et al. 2020).
  k = jax.random.split(jax.random.key(5), 2)
  params = {
    "l1": {"kernel": jax.random.normal(k[0], (400, HIDDEN)) / 20, "bias": jnp.zeros(HIDDEN)},
    "l2": {"kernel": jax.random.normal(k[1], (HIDDEN, OUT)), "bias": jnp.zeros(OUT)},
  }
  x = jax.random.normal(jax.random.key(6), (16, 400))
  loss = lambda p, x: jnp.sum(relu_apply(p, x) ** 2)
  with pytest.warns(UserWarning, match="snip: the masks collapse the network"):
    masks = jaxprune.snip(params, loss, x, 0.998)
  assert jaxprune.collapse.layer_collapse(masks).empty_leaves == ["l1/kernel"]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no warning
    masks = jaxprune.synflow(params, relu_apply, (1, 400), 0.998, rounds=100)
  assert not jaxprune.collapse.layer_collapse(masks).collapsed


def test_collapse_report_on_constructed_masks():
  healthy = {"l1": np.ones((IN, HIDDEN), bool), "l2": np.ones((HIDDEN, OUT), bool)}
  report = jaxprune.collapse.layer_collapse(healthy)
  assert (
    not report.collapsed and report.chain == ["l1", "l2"] and report.describe() == "no collapse"
  )
  # Cut: l1 keeps only hidden unit 0's inputs, l2 keeps only hidden unit 4's outputs.
  l1 = np.zeros((IN, HIDDEN), bool)
  l1[:, 0] = True
  l2 = np.zeros((HIDDEN, OUT), bool)
  l2[4, :] = True
  report = jaxprune.collapse.layer_collapse({"l1": l1, "l2": l2})
  assert report.collapsed and not report.connected and not report.empty_leaves
  assert report.dead_outputs == {"l1": HIDDEN - 1, "l2": 0}
  assert report.dead_inputs == {"l1": 0, "l2": HIDDEN - 1}
  # Conv (HWIO) then dense after a channels-last flatten of a 2x2 map.
  conv = np.zeros((3, 3, 1, 4), bool)
  conv[1, 1, 0, 2] = True  # only channel 2 is fed
  dense = np.zeros((16, 5), bool)
  dense[2, 0] = True  # flattened input 2 is channel 2: connected
  assert jaxprune.collapse.layer_collapse({"conv": conv, "dense": dense}).connected
  dense = np.zeros((16, 5), bool)
  dense[3, 0] = True  # channel 3: not fed
  assert not jaxprune.collapse.layer_collapse({"conv": conv, "dense": dense}).connected
  with pytest.raises(ValueError, match="order names"):
    jaxprune.collapse.layer_collapse(healthy, order=["l1", "nothing"])


def test_shuffle_keeps_counts_and_static_training_keeps_masks():
  params = make_params()
  loss = lambda p, x: jnp.sum(relu_apply(p, x) ** 2)
  masks = jaxprune.snip(params, loss, X, 0.5)
  shuffled = jaxprune.shuffle_masks(masks, seed=1)
  for k in ("l1", "l2"):
    assert int(kernels(shuffled)[k].sum()) == int(kernels(masks)[k].sum())
  assert any(not np.array_equal(kernels(shuffled)[k], kernels(masks)[k]) for k in ("l1", "l2"))
  assert shuffled["l1"]["bias"] is None
  tx = jaxprune.static_sparse(masks=masks, inner=optax.sgd(0.1, momentum=0.9))
  state = tx.init(params)
  for step in range(5):
    grads = jax.grad(loss)(params, X + step)
    updates, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)
    for k in ("l1", "l2"):
      np.testing.assert_array_equal(kernels(jaxprune.get_masks(state))[k], kernels(masks)[k])
      assert np.all(np.asarray(params[k]["kernel"])[~kernels(masks)[k]] == 0)


def test_errors():
  params = make_params()
  loss = lambda p, x: jnp.sum(linear_apply(p, x))
  with pytest.raises(ValueError, match=r"snip: sparsity must be in \[0, 1\), got 1.5"):
    jaxprune.snip(params, loss, X, 1.5)
  with pytest.raises(ValueError, match="grasp: sparsity must be in"):
    jaxprune.grasp(params, loss, X, float("nan"))
  with pytest.raises(ValueError, match="rounds must be an int >= 1, got 0"):
    jaxprune.synflow(params, linear_apply, (1, IN), 0.5, rounds=0)


def test_apply_masks_zeroes_pruned_entries_before_any_update():
  params = make_params()
  masks = jaxprune.snip(params, lambda p, x: jnp.sum(relu_apply(p, x) ** 2), X, 0.7)
  packed = jax.tree.map(jaxprune.masks.pack, masks)
  for m in (masks, packed):
    out = jaxprune.apply_masks(params, m)
    for k in ("l1", "l2"):
      keep = kernels(masks)[k]
      np.testing.assert_array_equal(
        np.asarray(out[k]["kernel"]), np.where(keep, np.asarray(params[k]["kernel"]), 0)
      )
      np.testing.assert_array_equal(out[k]["bias"], params[k]["bias"])


def test_synflow_on_a_flax_model_with_batch_norm_in_inference_mode():
  import flax.linen as nn

  class ConvBN(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(8, (3, 3))(x)
      x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
      return nn.Dense(4)(x.reshape((x.shape[0], -1)))

  model = ConvBN()
  variables = model.init(jax.random.key(0), jnp.ones((1, 6, 6, 1)))
  apply = lambda p, x: model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x)
  masks = jaxprune.synflow(variables["params"], apply, (1, 6, 6, 1), 0.9, rounds=20)
  kept = {k: v for k, v in jaxprune.masks.host_arrays(masks).items()}
  assert set(kept) == {"Conv_0/kernel", "Dense_0/kernel"}  # BatchNorm's scale and bias not pruned
  total = sum(v.size for v in kept.values())
  assert sum(int((~v).sum()) for v in kept.values()) == round(0.9 * total)
  assert jaxprune.collapse.layer_collapse(masks).connected  # conv -> flatten -> dense path checked


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_prune_at_init_is_one_call_from_params_to_a_pruned_optimizer(method):
  params = make_params()
  loss = lambda p, x: jnp.sum(relu_apply(p, x) ** 2)
  if method == "synflow":
    expected = jaxprune.synflow(params, relu_apply, (1, IN), 0.6, rounds=5)
    tx = jaxprune.prune_at_init(
      params,
      0.6,
      method=method,
      apply_fn=relu_apply,
      input_shape=(1, IN),
      rounds=5,
      inner=optax.adam(0.01),
    )
  else:
    expected = getattr(jaxprune, method)(params, loss, X, 0.6)
    tx = jaxprune.prune_at_init(
      params, 0.6, method=method, loss_fn=loss, batch=X, inner=optax.adam(0.01)
    )
  state = tx.init(params)
  jax.tree.map(np.testing.assert_array_equal, jaxprune.get_masks(state), expected)
  updates, state = tx.update(jax.grad(loss)(params, X), state, params)
  params = optax.apply_updates(params, updates)
  for k in ("l1", "l2"):
    assert np.all(np.asarray(params[k]["kernel"])[~kernels(expected)[k]] == 0)


def test_prune_at_init_errors():
  params = make_params()
  with pytest.raises(ValueError, match="'snip' needs loss_fn and batch"):
    jaxprune.prune_at_init(params, 0.5, inner=optax.sgd(0.1))
  with pytest.raises(ValueError, match="'synflow' needs apply_fn and input_shape"):
    jaxprune.prune_at_init(params, 0.5, method="synflow", inner=optax.sgd(0.1))
  with pytest.raises(ValueError, match="method must be 'snip', 'grasp' or 'synflow', got 'obd'"):
    jaxprune.prune_at_init(params, 0.5, method="obd", inner=optax.sgd(0.1))


# ProsPr ----------------------------------------------------------------------------------------


def _regression(seed=0):
  """A linear least-squares model, where ProsPr's meta-loss is quadratic in the mask."""
  k = jax.random.split(jax.random.key(seed), 3)
  params = {"l1": {"kernel": jax.random.normal(k[0], (IN, OUT))}}
  batches = [
    (np.asarray(jax.random.normal(jax.random.fold_in(k[1], i), (4, IN)), np.float64),
     np.asarray(jax.random.normal(jax.random.fold_in(k[2], i), (4, OUT)), np.float64))
    for i in range(4)
  ]  # fmt: skip
  loss = lambda p, b: 0.5 * jnp.sum((b[0] @ p["l1"]["kernel"] - b[1]) ** 2)
  return params, batches, loss


def _meta_loss_numpy(w, c, batches, lr, momentum):
  """The loss after len(batches) - 1 SGD steps from c * w, in float64 (PyTorch's momentum)."""
  w, buf = c * w, np.zeros_like(w)
  for x, y in batches[:-1]:
    buf = momentum * buf + x.T @ (x @ w - y)
    w = w - lr * buf
  x, y = batches[-1]
  return 0.5 * np.sum((x @ w - y) ** 2)


@pytest.mark.parametrize("steps,momentum", [(1, 0.0), (3, 0.0), (3, 0.9)])
def test_prospr_scores_are_the_meta_gradient(steps, momentum):
  params, batches, loss = _regression()
  w = np.asarray(params["l1"]["kernel"], np.float64)
  batches = batches[: steps + 1]
  # The meta-loss is quadratic in c: a central difference of any step is its exact derivative.
  expected = np.zeros_like(w)
  for i in np.ndindex(w.shape):
    e = np.zeros_like(w)
    e[i] = 1.0
    up = _meta_loss_numpy(w, 1 + e, batches, 0.05, momentum)
    down = _meta_loss_numpy(w, 1 - e, batches, 0.05, momentum)
    expected[i] = abs(up - down) / 2
  batches32 = [tuple(jnp.asarray(a, jnp.float32) for a in b) for b in batches]
  scores = jaxprune.at_init.prospr_scores(
    params, loss, batches32, steps=steps, lr=0.05, momentum=momentum
  )
  np.testing.assert_allclose(scores["l1"]["kernel"], expected, rtol=2e-4, atol=1e-4)
  masks = jaxprune.prospr(params, loss, batches32, 0.6, steps=steps, lr=0.05, momentum=momentum)
  np.testing.assert_array_equal(masks["l1"]["kernel"], top_global({"l1": expected}, 7)["l1"])


def test_prospr_special_cases():
  params, batches, loss = _regression(1)
  batch = tuple(jnp.asarray(a, jnp.float32) for a in batches[0])
  # No inner step: SNIP's |w dL/dw|.
  zero = jaxprune.at_init.prospr_scores(params, loss, batch, steps=0, lr=0.1)
  g = jax.grad(loss)(params, batch)["l1"]["kernel"]
  np.testing.assert_allclose(zero["l1"]["kernel"], jnp.abs(params["l1"]["kernel"] * g), rtol=1e-6)
  # First order: |w * g(w_M)|, the gradient after the steps (one batch for all steps).
  first = jaxprune.at_init.prospr_scores(params, loss, batch, steps=2, lr=0.05, first_order=True)
  w = params["l1"]["kernel"]
  for _ in range(2):
    w = w - 0.05 * jax.grad(loss)({"l1": {"kernel": w}}, batch)["l1"]["kernel"]
  g_m = jax.grad(loss)({"l1": {"kernel": w}}, batch)["l1"]["kernel"]
  np.testing.assert_allclose(
    first["l1"]["kernel"], jnp.abs(params["l1"]["kernel"] * g_m), rtol=1e-5
  )


def test_prospr_on_the_two_layer_net_is_exact_and_not_snip():
  params = make_params(3)
  y = jnp.asarray(np.eye(OUT)[np.arange(X.shape[0]) % OUT])
  loss = lambda p, x: jnp.mean((relu_apply(p, x) - y) ** 2)
  masks = jaxprune.prospr(params, loss, X, 0.8, steps=3, lr=0.5, check_collapse=False)
  kept = sum(int(np.asarray(m).sum()) for m in jax.tree.leaves(masks))
  assert kept == 45 - round(0.8 * 45)
  assert masks["l1"]["bias"] is None
  snip = jaxprune.snip(params, loss, X, 0.8, check_collapse=False)
  assert any(not np.array_equal(masks[k]["kernel"], snip[k]["kernel"]) for k in ("l1", "l2"))


@pytest.mark.parametrize(
  "kwargs,error,match",
  [
    ({"steps": -1}, ValueError, "steps must be >= 0, got -1"),
    ({"steps": 2, "batches": [X, X]}, ValueError, "needs steps \\+ 1 = 3"),
    ({"lr": 0.0}, ValueError, "lr must be a positive number, got 0.0"),
    ({"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\), got 1.0"),
    ({"first_order": 1}, TypeError, "first_order must be a bool"),
    ({"sparsity": 1.0}, ValueError, r"sparsity must be in \[0, 1\)"),
  ],
)
def test_prospr_bad_arguments(kwargs, error, match):
  args = {"batches": X, "sparsity": 0.5, "steps": 1, "lr": 0.1}
  loss = lambda p, x: jnp.sum(linear_apply(p, x))
  with pytest.raises(error, match=match):
    jaxprune.prospr(make_params(), loss, **{**args, **kwargs})
