"""Early-bird tickets: the mask distance and the FIFO criterion of You et al. (2020)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune.early_bird import EarlyBird, mask_distance


def masks_with(flips, n=20):
  """A mask tree whose first ``flips`` entries of 'w' are pruned (the rest kept)."""
  return {"w": jnp.arange(n).reshape(4, n // 4) >= flips, "b": None}


def test_mask_distance_is_the_fraction_of_differing_entries():
  a = {"x": jnp.array([True, False, True, True]), "y": jnp.ones((2, 3), bool), "b": None}
  b = {"x": jnp.array([True, True, False, True]), "y": jnp.zeros((2, 3), bool), "b": None}
  assert mask_distance(a, b) == 8 / 10
  assert mask_distance(a, a) == 0.0
  packed = {"x": jaxprune.masks.pack(a["x"]), "y": a["y"], "b": None}
  assert mask_distance(packed, b) == 8 / 10
  with pytest.raises(ValueError, match=r"leaf 'x' has shape \(4,\) in one mask, \(2, 2\)"):
    mask_distance({"x": a["x"]}, {"x": a["x"].reshape(2, 2)})
  with pytest.raises(ValueError, match="prune different leaves"):
    mask_distance({"x": a["x"]}, {"z": a["x"]})
  with pytest.raises(TypeError, match="leaf 'x' has dtype float32"):
    mask_distance({"x": jnp.ones(4)}, {"x": a["x"]})


def test_emerges_when_the_newest_masks_are_close_to_the_four_before():
  tracker = EarlyBird()  # window 5, threshold 0.1, as the authors' code
  state = tracker.init()
  assert state.distances == (1.0, 1.0, 1.0, 1.0) and not state.emerged
  # Masks of 20 entries; the pruned prefix grows 6, 5, 4, 3, 2, 2, 2: distances are (a - b) / 20.
  flips = [6, 5, 4, 3, 2, 2, 2]
  seen = []
  for i, f in enumerate(flips):
    state = tracker.update(state, masks_with(f))
    seen.append((state.count, state.distances, state.emerged))
  assert seen[3] == (4, (1.0, 1.0, 1.0, 1.0), False)  # fewer than 5 masks: not measured yet
  assert seen[4] == (5, (0.2, 0.15, 0.1, 0.05), False)  # newest (2) vs 6, 5, 4, 3
  assert seen[5] == (6, (0.15, 0.1, 0.05, 0.0), False)
  assert seen[6] == (7, (0.1, 0.05, 0.0, 0.0), True)  # all <= 0.1 (0.1 included)
  assert state.emerged_at == 7 and len(state.masks) == 5


def test_emerged_at_stays_the_first_emergence_and_window_size_is_respected():
  tracker = EarlyBird(window=2, threshold=0.0)
  state = tracker.init()
  for f in [3, 3, 5, 5]:
    state = tracker.update(state, masks_with(f))
  assert state.emerged and state.emerged_at == 2 and len(state.masks) == 2
  assert state.distances == (0.0,)


def test_reads_the_masks_of_a_pruner_state_during_training():
  params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
  tx = jaxprune.magnitude_pruning(0.5, inner=optax.sgd(0.0))  # fixed masks after update 0
  opt_state = tx.init(params)
  tracker, state = EarlyBird(window=3), EarlyBird(window=3).init()
  for t in range(3):
    updates, opt_state = tx.update({"w": jnp.ones((8, 8))}, opt_state, params)
    params = optax.apply_updates(params, updates)
    state = tracker.update(state, jaxprune.get_masks(opt_state))
  assert state.emerged and state.distances == (0.0, 0.0)
  assert np.asarray(state.masks[-1]["w"]).sum() == 32


@pytest.mark.parametrize(
  "tracker, match",
  [
    (EarlyBird(window=1), "window must be an int >= 2, got 1"),
    (EarlyBird(threshold=1.5), r"threshold must be a number in \[0, 1\], got 1.5"),
  ],
)
def test_bad_settings(tracker, match):
  with pytest.raises(ValueError, match=match):
    tracker.init()


def test_masks_that_change_structure_are_refused():
  tracker = EarlyBird(window=2)
  state = tracker.update(tracker.init(), masks_with(2))
  with pytest.raises(ValueError, match="prune different leaves"):
    tracker.update(state, {"v": jnp.ones((4, 5), bool)})
  with pytest.raises(ValueError, match="the masks tree has no mask"):
    tracker.update(state, {"w": None})
