"""LRPET (`jaxprune.lrpet`, `jaxprune.low_rank`): the projection's formula, BN rectification,
ranks, and the exported factors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune import low_rank


def _reference(w, r, f=0.0, energy=True, c=None):
  """LRPET's projection in float64 NumPy, step by step as the paper and code write it."""
  m = np.asarray(w, np.float64)
  if c is not None:
    m = m * c[None, :]
  u, s, vt = np.linalg.svd(m, full_matrices=False)
  head, tail = s[:r].copy(), s[r:] * f
  if energy:
    alpha = (np.sum(s**2) - np.sum(tail**2)) / np.sum(head**2)
    head = head * np.sqrt(alpha)
  out = (u * np.concatenate([head, tail])) @ vt
  if c is not None:
    out = out * (c / (c**2 + 1e-5))[None, :]
  return out


W = np.asarray(jax.random.normal(jax.random.key(0), (7, 5)), np.float64)


@pytest.mark.parametrize("r", [1, 2, 4])
@pytest.mark.parametrize("energy", [True, False])
def test_projection_matches_the_formula(r, energy):
  out = np.asarray(low_rank.project_matrix(W, r, energy_transfer=energy))
  np.testing.assert_allclose(out, _reference(W, r, energy=energy), rtol=1e-5, atol=1e-5)
  s = np.linalg.svd(out, compute_uv=False)
  assert np.all(s[r:] < 1e-6 * s[0]) and s[r - 1] > 1e-3 * s[0]  # exactly rank r
  norm = np.linalg.norm(W) if energy else np.linalg.norm(_reference(W, r, energy=False))
  np.testing.assert_allclose(np.linalg.norm(out), norm, rtol=1e-6)


def test_energy_transfer_scales_the_kept_values_by_sqrt_alpha():
  w = np.diag([5.0, 4.0, 2.0, 1.0])
  out = np.asarray(low_rank.project_matrix(w, 2))
  alpha = (25 + 16 + 4 + 1) / (25 + 16)
  np.testing.assert_allclose(np.diag(out), [5 * alpha**0.5, 4 * alpha**0.5, 0, 0], rtol=1e-6)
  half = np.asarray(low_rank.project_matrix(w, 2, reduce_factor=0.5))
  alpha = (46 - (1.0 + 0.25)) / 41  # the tail keeps (f s)^2 = 1 + 0.25 of the energy
  np.testing.assert_allclose(np.diag(half), [5 * alpha**0.5, 4 * alpha**0.5, 1.0, 0.5], rtol=1e-6)


def test_bn_rectification():
  c = np.array([0.5, 2.0, 1.0, 3.0, 0.1])
  out = np.asarray(low_rank.project_matrix(W, 2, scale=jnp.asarray(c)))
  np.testing.assert_allclose(out, _reference(W, 2, c=c), rtol=1e-5, atol=1e-5)
  # The merged weights W diag(c) of the projected kernel have rank 2 (the point of rectifying).
  s = np.linalg.svd(out * c[None, :], compute_uv=False)
  assert np.all(s[2:] < 1e-5 * s[0])


def test_ranks():
  params = {
    "conv": {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.ones(8)},
    "dense": {"kernel": jnp.ones((100, 30))},
    "head": {"kernel": jnp.ones((30, 10))},
  }
  assert low_rank.ranks(params, 12) == {"conv/kernel": 8, "dense/kernel": 12, "head/kernel": 10}
  # n - round(0.8 n): 8 -> 2 (6.4 removed), 30 -> 6, 10 -> 2
  got = low_rank.ranks(params, prune_ratio=0.8, overrides={"head/.*": 3})
  assert got == {"conv/kernel": 2, "dense/kernel": 6, "head/kernel": 3}
  assert low_rank.ranks(params, prune_ratio=0.99) == {
    "conv/kernel": 1,
    "dense/kernel": 1,
    "head/kernel": 1,
  }


@pytest.mark.parametrize(
  "kwargs,error,match",
  [
    ({}, ValueError, "exactly one of rank"),
    ({"rank": 2, "prune_ratio": 0.5}, ValueError, "exactly one of rank"),
    ({"rank": 0}, ValueError, "rank must be >= 1, got 0"),
    ({"rank": 2.0}, TypeError, "rank must be an int, got 2.0"),
    ({"prune_ratio": 1.0}, ValueError, r"prune_ratio must be in \[0, 1\), got 1.0"),
    ({"prune_ratio": "0.5"}, TypeError, "prune_ratio must be a number"),
    ({"rank": 2, "overrides": {"(": 2}}, ValueError, "not a valid regular expression"),
    ({"rank": 2, "prune": "b"}, ValueError, "leaf 'b' of shape"),
  ],
)
def test_bad_ranks(kwargs, error, match):
  with pytest.raises(error, match=match):
    low_rank.ranks({"w": jnp.ones((4, 4)), "b": jnp.ones(4)}, **kwargs)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    ({"frequency": 0}, "frequency must be >= 1, got 0"),
    ({"begin_step": 5, "end_step": 5}, r"begin_step \(5\) must be before end_step \(5\)"),
    ({"reduce_factor": 1.5}, r"reduce_factor must be a number in \[0, 1\], got 1.5"),
    ({"bn_epsilon": 0.0}, "bn_epsilon must be a positive number, got 0.0"),
  ],
)
def test_bad_lrpet_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jaxprune.lrpet(2, **{"frequency": 1, **kwargs})


class ConvBN(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(6, (3, 3), name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
    return nn.Dense(3, name="head")(nn.relu(x).mean(axis=(1, 2)))


def test_lrpet_with_bn_rectification_projects_the_merged_weights():
  model = ConvBN()
  x = jax.random.normal(jax.random.key(1), (4, 6, 6, 2))
  variables = model.init(jax.random.key(0), x)
  stats = jax.tree.map(lambda v: v + 0.5, variables["batch_stats"])  # var 1.5, mean 0.5
  params = variables["params"]
  params = {**params, "bn": {**params["bn"], "scale": jnp.linspace(0.5, 2.0, 6)}}
  tx = jaxprune.lrpet(
    2, frequency=3, batch_norm={"conv/kernel": "bn"}, prune="conv/kernel", inner=optax.sgd(0.1)
  )
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params, batch_stats=stats)
  out = optax.apply_updates(params, updates)
  c = np.linspace(0.5, 2.0, 6) / np.sqrt(1.5 + 1e-5)
  trained = np.asarray(params["conv"]["kernel"]).reshape(-1, 6) - 0.1
  np.testing.assert_allclose(
    np.asarray(out["conv"]["kernel"]).reshape(-1, 6), _reference(trained, 2, c=c), atol=1e-5
  )
  np.testing.assert_array_equal(out["head"]["kernel"], params["head"]["kernel"] - 0.1)
  with pytest.raises(ValueError, match="pass them as tx.update"):
    tx.update(grads, tx.init(params), params)
  with pytest.raises(ValueError, match="'nope/var'"):
    jaxprune.lrpet(2, frequency=3, batch_norm={"conv/kernel": "nope"}).update(
      grads, tx.init(params), params, batch_stats=stats
    )
  with pytest.raises(ValueError, match=r"batch_norm names \['head/kernel'\]"):
    jaxprune.lrpet(2, frequency=3, prune="conv/kernel", batch_norm={"head/kernel": "bn"}).init(
      params
    )


def test_projection_steps_only():
  params = {"w": jax.random.normal(jax.random.key(2), (6, 6))}
  tx = optax.chain(optax.sgd(0.1), jaxprune.lrpet(3, frequency=2, begin_step=1, end_step=3))
  state = tx.init(params)
  ranks = []
  for t in range(6):
    updates, state = tx.update({"w": jnp.full((6, 6), 0.1 * t)}, state, params)
    params = optax.apply_updates(params, updates)
    ranks.append(int(np.linalg.matrix_rank(np.asarray(params["w"]))))
  # Projections at 1 and 3 (end_step); the constant gradients add rank 1 at steps 2, 4 and 5.
  assert ranks == [6, 3, 4, 3, 4, 4]


def test_factors_and_low_rank_layers_reproduce_the_projected_model():
  class MLP(nn.Module):
    dense: type = nn.Dense

    @nn.compact
    def __call__(self, x):
      return nn.Dense(4, name="out")(nn.relu(nn.Dense(16, name="hidden")(x)))

  class LowRankMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      hidden = low_rank.LowRankDense(16, 3, name="hidden")(x)
      return nn.Dense(4, name="out")(nn.relu(hidden))

  x = jax.random.normal(jax.random.key(3), (5, 12))
  params = MLP().init(jax.random.key(4), x)["params"]
  projected = low_rank.project(params, 3, prune="hidden/kernel")
  factors = low_rank.factorize(projected, 3, prune="hidden/kernel")
  f = factors["hidden"]["kernel"]
  assert f.a.shape == (12, 3) and f.b.shape == (3, 16)
  np.testing.assert_allclose(f.a @ f.b, projected["hidden"]["kernel"], atol=1e-5)
  small = low_rank.module_params(factors)
  assert jax.tree.map(jnp.shape, small) == jax.tree.map(
    jnp.shape, LowRankMLP().init(jax.random.key(0), x)["params"]
  )
  np.testing.assert_allclose(
    LowRankMLP().apply({"params": small}, x),
    MLP().apply({"params": projected}, x),
    rtol=1e-5,
    atol=1e-5,
  )


def test_low_rank_conv_equals_the_projected_convolution():
  kernel = jax.random.normal(jax.random.key(5), (3, 3, 4, 8))
  params = {"conv": {"kernel": kernel}}
  projected = low_rank.project(params, 2)["conv"]["kernel"]
  f = low_rank.factorize({"conv": {"kernel": projected}}, 2)["conv"]["kernel"]
  assert f.a.shape == (3, 3, 4, 2) and f.b.shape == (2, 8)
  x = jax.random.normal(jax.random.key(6), (2, 9, 9, 4))
  bias = jnp.arange(8.0)
  for strides, padding in ((1, "SAME"), (2, "VALID")):
    dense = nn.Conv(8, (3, 3), strides=strides, padding=padding).apply(
      {"params": {"kernel": projected, "bias": bias}}, x
    )
    got = low_rank.conv(x, f, bias, strides=strides, padding=padding)
    np.testing.assert_allclose(got, dense, rtol=1e-4, atol=1e-4)
    module = low_rank.LowRankConv(8, (3, 3), 2, strides=strides, padding=padding)
    np.testing.assert_allclose(
      module.apply({"params": {"a": f.a, "b": f.b, "bias": bias}}, x), got, rtol=1e-6
    )
