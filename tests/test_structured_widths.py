"""Rebuilding a model at the widths of its slimmed params (`fit_widths`, `resize_module`)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxprune import structured


class _CNN(nn.Module):
  """Widths as fields: conv features (a tuple), a dense width; batch norm, flatten into dense."""

  features: tuple = (6, 8)
  hidden: int = 10
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    for f in self.features:
      x = nn.Conv(f, (3, 3))(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.hidden)(x)))


class _Sliced(nn.Module):
  """Reads a slice of a layer at an offset set by its width: shapes fit, wiring need not."""

  width: int = 4

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(2 * self.width)(x)
    return nn.Dense(2)(nn.relu(h[:, self.width // 2 : self.width // 2 + self.width]))


def _slim_random(model, x, seed, **kw):
  variables = model.init(jax.random.key(0), x, **kw)
  fn = lambda v, x: model.apply(v, x, **kw)
  groups = structured.dependency_groups(fn, variables, x)
  rng = np.random.default_rng(seed)
  keeps = []
  for g in groups:
    keep = rng.random(g.size) < 0.5
    keep[rng.integers(g.size)] = True
    keeps.append(keep)
  small, small_fn = structured.slim(fn, variables, groups, keeps)
  return variables, groups, keeps, small, small_fn


@pytest.mark.parametrize("seed", [0, 1])
def test_resize_module_rebuilds_the_slimmed_cnn(seed):
  x = jnp.asarray(np.random.default_rng(seed).standard_normal((2, 12, 12, 1)), jnp.float32)
  model = _CNN()
  _, groups, keeps, small, small_fn = _slim_random(model, x, seed, train=False)
  new = structured.resize_module(model, small, x, like=small_fn, train=False)
  assert new.features == tuple(int(k.sum()) for k in keeps[:2])
  assert new.hidden == int(keeps[2].sum())
  assert new.num_classes == 3
  # The module's own training mode runs on the slimmed variables ...
  out, updates = new.apply(small, x, train=True, mutable=["batch_stats"])
  assert out.shape == (2, 3)
  assert jax.tree.map(jnp.shape, updates["batch_stats"]) == jax.tree.map(
    jnp.shape, dict(small)["batch_stats"]
  )
  # ... and a fresh initialisation of the slim architecture has the slimmed shapes.
  fresh = new.init(jax.random.key(1), x, train=False)
  assert jax.tree.map(jnp.shape, fresh) == jax.tree.map(jnp.shape, small)


def test_resize_module_takes_bare_params():
  model = _CNN(features=(4,), hidden=6)
  x = jnp.ones((1, 6, 6, 1))
  params = model.init(jax.random.key(0), x)["params"]
  fn = lambda p, x: model.apply({"params": p, "batch_stats": stats}, x)
  stats = model.init(jax.random.key(0), x)["batch_stats"]
  # Only the params are slimmed here: the norm statistics stay full size, so only the dense
  # width can change (the conv channels reach the statistics the function closes over).
  groups = structured.dependency_groups(fn, params, x)
  assert [g.size for g in groups] == [4, 6]
  small, _ = structured.slim(fn, params, groups, [np.ones(4, bool), np.arange(6) < 2])
  new = structured.resize_module(model, small, x)
  assert (new.features, new.hidden) == ((4,), 2)


def test_fit_widths_for_an_nnx_constructor():
  class MLP(nnx.Module):
    def __init__(self, hidden, *, rngs):
      self.a = nnx.Linear(4, hidden[0], rngs=rngs)
      self.b = nnx.Linear(hidden[0], hidden[1], rngs=rngs)
      self.c = nnx.Linear(hidden[1], 2, rngs=rngs)

    def __call__(self, x):
      return self.c(nnx.relu(self.b(nnx.relu(self.a(x)))))

  def shapes_of(w):
    return nnx.state(nnx.eval_shape(lambda: MLP(**w, rngs=nnx.Rngs(0))))

  graphdef, state = nnx.split(MLP((8, 6), rngs=nnx.Rngs(0)))
  fn = lambda s, x: nnx.merge(graphdef, s)(x)
  x = jnp.ones((3, 4))
  groups = structured.dependency_groups(fn, state, x)
  small, small_fn = structured.slim(fn, state, groups, [np.arange(8) % 2 == 0, np.arange(6) < 5])
  widths = structured.fit_widths(shapes_of, {"hidden": (8, 6)}, small)
  assert widths == {"hidden": (4, 5)}
  graphdef_small, _ = nnx.split(MLP(**widths, rngs=nnx.Rngs(0)))
  np.testing.assert_allclose(nnx.merge(graphdef_small, small)(x), small_fn(small, x), rtol=1e-5)


def test_resize_module_rejects_a_module_wired_by_width():
  model = _Sliced()
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5)), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  fn = lambda v, x: model.apply(v, x)
  groups = structured.dependency_groups(fn, variables, x)
  # The unread outputs (positions 0, 1, 6, 7) and the read ones (2-5) of Dense_0 form two groups,
  # told apart by their first position.
  assert [g.name for g in groups] == ["params/Dense_0/kernel:1@0", "params/Dense_0/kernel:1@2"]
  # Keeping positions 0, 1, 6 and 3, 4, 5 gives the shapes of width 3, but the slimmed function
  # reads from offset 2 where the module at width 3 reads from offset 1.
  keeps = [np.array([True, True, True, False]), np.array([False, True, True, True])]
  small, small_fn = structured.slim(fn, variables, groups, keeps)
  assert structured.fit_widths(
    lambda w: jax.eval_shape(lambda: model.clone(**w).init(jax.random.key(0), x)),
    {"width": 4},
    small,
  ) == {"width": 3}
  with pytest.raises(ValueError, match="computes something else"):
    structured.resize_module(model, small, x, like=small_fn)
  # Keeping 1, 6, 7 instead puts the read slice at offset 1: the same function.
  keeps[0] = np.array([False, True, True, True])
  small, small_fn = structured.slim(fn, variables, groups, keeps)
  assert structured.resize_module(model, small, x, like=small_fn).width == 3


def test_fit_widths_errors_name_what_does_not_fit():
  def init(w):
    return {"l0": jnp.zeros((4, w["hidden"])), "l1": jnp.zeros((w["hidden"], 2))}

  with pytest.raises(ValueError, match=r"sets axes .*l0:1.*l1:0.*no single positive value"):
    structured.fit_widths(init, {"hidden": 8}, {"l0": jnp.zeros((4, 3)), "l1": jnp.zeros((5, 2))})
  with pytest.raises(ValueError, match=r"leaves differ from the model's: missing \['l1'\]"):
    structured.fit_widths(init, {"hidden": 8}, {"l0": jnp.zeros((4, 3))})
  with pytest.raises(ValueError, match=r"leaf l0 has shape \(4, 8\), the target \(5, 8\)"):
    structured.fit_widths(init, {"hidden": 8}, {"l0": jnp.zeros((5, 8)), "l1": jnp.zeros((8, 2))})
  with pytest.raises(ValueError, match="has no fields"):
    structured.resize_module(_CNN(), {}, jnp.ones((1, 4, 4, 1)), fields=["depth"])
