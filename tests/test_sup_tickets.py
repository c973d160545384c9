"""Sup-tickets (`jaxprune.sup_tickets`): the cyclic phase's schedule, re-explorations and the
superposition of tickets, against their formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune import sup_tickets


def _global_prune(tree: dict, keep: int) -> dict:
  """Reference global magnitude prune in NumPy of the leaves named 'w*' (no ties here)."""
  names = [k for k in tree if k.startswith("w")]
  flat = np.concatenate([np.abs(tree[k]).ravel() for k in names])
  threshold = np.sort(flat)[-keep]
  return {
    k: (np.where(np.abs(v) >= threshold, v, 0.0) if k in names else v) for k, v in tree.items()
  }


def test_cyclic_learning_rate():
  base = optax.linear_schedule(1.0, 0.0, 10)
  lr = sup_tickets.cyclic_learning_rate(
    base, begin=10, cycle_steps=8, cycles=2, low=0.01, high=0.09
  )
  got = [float(lr(t)) for t in range(0, 30)]
  np.testing.assert_allclose(got[:10], [float(base(t)) for t in range(10)], rtol=1e-6)
  triangle = [0.01, 0.03, 0.05, 0.07, 0.09, 0.07, 0.05, 0.03]
  np.testing.assert_allclose(got[10:26], triangle * 2, rtol=1e-5)
  np.testing.assert_allclose(got[26:], [0.01] * 4, rtol=1e-6)  # after the last cycle
  with pytest.raises(ValueError, match="low must be a positive number, got 0.0"):
    sup_tickets.cyclic_learning_rate(0.1, begin=1, cycle_steps=2, cycles=1, low=0.0, high=1.0)
  with pytest.raises(ValueError, match="cycle_steps must be >= 1, got 0"):
    sup_tickets.cycle_ends(10, 0, 2)


def test_cyclic_phase_re_explores_at_cycle_starts_only():
  params = {
    "a": {"kernel": jax.random.normal(jax.random.key(0), (20, 10))},
    "b": {"kernel": jax.random.normal(jax.random.key(1), (10, 8))},
  }
  # RigL's updates every 2 from update 2 to 8; the cycles start at 8, 12 and 16.
  tx = sup_tickets.cyclic(
    jaxprune.rigl,
    0.8,
    begin=8,
    cycle_steps=4,
    cycles=3,
    re_explore=0.5,
    frequency=2,
    begin_step=2,
    end_step=10,  # past begin: RigL's own update at 10 is suppressed
    options={"distribution": "uniform", "drop_fraction": 0.3},
    inner=optax.sgd(0.1),
  )
  state = tx.init(params)
  step = jax.jit(tx.update)
  previous, changed = None, []
  for t in range(20):
    g = jax.tree.map(lambda w: jax.random.normal(jax.random.key(50 + t), w.shape), params)
    updates, state = step(g, state, params)
    params = optax.apply_updates(params, updates)
    masks = jaxprune.get_masks(state)
    for name, size in (("a", 200), ("b", 80)):
      assert int(np.asarray(masks[name]["kernel"]).sum()) == size - round(0.8 * size)
    if previous is not None:
      diff = {n: int((previous[n]["kernel"] != masks[n]["kernel"]).sum()) for n in ("a", "b")}
      if any(diff.values()):
        changed.append(t)
      if t in (8, 12, 16):  # half of the 40 and 16 active weights dropped and regrown
        assert 0 < diff["a"] <= 2 * 20 and 0 < diff["b"] <= 2 * 8, (t, diff)
    previous = masks
  assert changed == [2, 4, 6, 8, 12, 16]


def test_cyclic_refuses_a_transformation_without_drop_and_grow():
  with pytest.raises(ValueError, match="must make a dynamic sparse transformation"):
    sup_tickets.cyclic(
      jaxprune.static_sparse, 0.5, begin=2, cycle_steps=2, cycles=1, inner=optax.sgd(0.1)
    )
  with pytest.raises(TypeError, match="options must be a mapping"):
    sup_tickets.cyclic(
      jaxprune.rigl, 0.5, begin=2, cycle_steps=2, cycles=1, options=[1], inner=optax.sgd(0.1)
    )


def _tickets():
  rng = np.random.default_rng(0)
  out = []
  for _ in range(3):
    w = rng.normal(size=(4, 5)) * (rng.random((4, 5)) < 0.4)
    out.append({"w": w.astype(np.float32), "bias": rng.normal(size=5).astype(np.float32)})
  return out


def test_superpose_is_the_running_average_pruned_back():
  tickets = _tickets()
  keep = 20 - round(0.6 * 20)
  expected = _global_prune(tickets[0], keep)
  s = sup_tickets.superpose(
    None, {k: jnp.asarray(v) for k, v in tickets[0].items()}, 0.6, prune="w"
  )
  for k, ticket in enumerate(tickets[1:], start=1):
    mixed = {n: expected[n] * (k / (k + 1)) + ticket[n] / (k + 1) for n in ticket}
    expected = _global_prune(mixed, keep)
    s = sup_tickets.superpose(s, {n: jnp.asarray(v) for n, v in ticket.items()}, 0.6, prune="w")
    for n in ("w", "bias"):
      np.testing.assert_allclose(s.params[n], expected[n], rtol=1e-6, atol=1e-7)
    assert int(np.asarray(s.masks["w"]).sum()) == keep and s.masks["bias"] is None
  assert s.tickets == 3
  # CIMA: a fixed weight of the new ticket.
  c = sup_tickets.superpose(
    None, {n: jnp.asarray(v) for n, v in tickets[0].items()}, 0.6, prune="w"
  )
  c = sup_tickets.superpose(
    c, {n: jnp.asarray(v) for n, v in tickets[1].items()}, 0.6, factor=0.25, prune="w"
  )
  start = _global_prune(tickets[0], keep)
  mixed = {n: 0.75 * start[n] + 0.25 * tickets[1][n] for n in start}
  np.testing.assert_allclose(c.params["w"], _global_prune(mixed, keep)["w"], rtol=1e-6, atol=1e-7)


def test_superpose_all_and_errors():
  tickets = _tickets()
  params, masks = sup_tickets.superpose_all(
    [{n: jnp.asarray(v) for n, v in t.items()} for t in tickets], 0.7, prune="w"
  )
  mean = {n: sum(t[n] for t in tickets) / 3 for n in tickets[0]}
  np.testing.assert_allclose(params["w"], _global_prune(mean, 6)["w"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(params["bias"], mean["bias"], rtol=1e-6)
  with pytest.raises(ValueError, match="at least one ticket"):
    sup_tickets.superpose_all([], 0.5)
  s = sup_tickets.superpose(None, {"w": jnp.ones((2, 2))}, 0.5)
  with pytest.raises(
    ValueError, match=r"leaf 'w' has shape \(2, 3\), the superposition's \(2, 2\)"
  ):
    sup_tickets.superpose(s, {"w": jnp.ones((2, 3))}, 0.5)
  with pytest.raises(
    ValueError, match=r"not shaped like the superposed params: its leaves are \['v'\]"
  ):
    sup_tickets.superpose(s, {"v": jnp.ones((2, 2))}, 0.5)
  with pytest.raises(ValueError, match=r"factor must be in \(0, 1\], got 1.5"):
    sup_tickets.superpose(s, {"w": jnp.ones((2, 2))}, 0.5, factor=1.5)
  with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
    sup_tickets.superpose(None, {"w": jnp.ones((2, 2))}, 1.0)
