"""Bad input raises at construction or at init, naming the bad value and the leaf's path."""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax
import pytest

import jaxprune

PARAMS = {
  "enc": {
    "kernel": jnp.ones((6, 8)),
    "bias": jnp.ones(8),
    "step": jnp.zeros((2, 2), jnp.int32),
    "flag": jnp.zeros((2, 2), bool),
  },
  "out": {"kernel": jnp.ones((8, 3))},
}


@pytest.mark.parametrize(
  "factory", [jaxprune.magnitude_pruning, jaxprune.random_pruning, jaxprune.saliency_pruning]
)
@pytest.mark.parametrize("sparsity", [1.0, 1.5, -0.1, math.nan, math.inf, jnp.float32(1.2)])
def test_sparsity_outside_unit_interval(factory, sparsity):
  with pytest.raises(ValueError, match="sparsity must be in \\[0, 1\\)"):
    factory(sparsity)


def test_sparsity_of_wrong_type():
  with pytest.raises(TypeError, match="'a lot'"):
    jaxprune.magnitude_pruning("a lot")


def test_sparsity_checked_inside_inject_hyperparams_init():
  tx = optax.inject_hyperparams(jaxprune.magnitude_pruning)(sparsity=1.5)
  with pytest.raises(ValueError, match="1.5"):
    tx.init(PARAMS)


def test_missing_sparsity():
  with pytest.raises(ValueError, match="sparsity is required"):
    jaxprune.magnitude_pruning()


def test_n_greater_than_m():
  with pytest.raises(ValueError, match=r"n \(5\) must not exceed m \(4\)"):
    jaxprune.patterns.n_m(5, 4)


def test_m_not_dividing_axis_names_leaf():
  tx = jaxprune.magnitude_pruning(pattern=jaxprune.patterns.n_m(2, 4), prune=".*kernel")
  with pytest.raises(ValueError, match=r"leaf 'enc/kernel': M=4 does not divide axis -2 of size 6"):
    tx.init(PARAMS)


def test_n_m_with_a_sparsity():
  with pytest.raises(ValueError, match="N:M pattern fixes the sparsity"):
    jaxprune.magnitude_pruning(0.5, pattern=jaxprune.patterns.n_m(2, 4))


def test_block_larger_than_leaf_names_leaf():
  tx = jaxprune.magnitude_pruning(0.5, pattern=jaxprune.patterns.block((4, 16)))
  with pytest.raises(ValueError, match=r"leaf 'enc/kernel': block shape \(4, 16\) is larger"):
    tx.init(PARAMS)


def test_block_not_dividing_leaf_names_leaf():
  tx = jaxprune.magnitude_pruning(0.5, pattern=jaxprune.patterns.block((4, 4)))
  with pytest.raises(ValueError, match=r"leaf 'enc/kernel': block shape \(4, 4\) does not divide"):
    tx.init(PARAMS)


def test_channel_axis_out_of_range_names_leaf():
  tx = jaxprune.magnitude_pruning(0.5, pattern=jaxprune.patterns.channel(2))
  with pytest.raises(ValueError, match="leaf 'enc/kernel': channel axis 2"):
    tx.init(PARAMS)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(begin_step=10, end_step=5, frequency=1), r"begin_step \(10\) is after end_step \(5\)"),
    (dict(begin_step=0, end_step=5, frequency=0), "frequency must be >= 1, got 0"),
    (dict(begin_step=-1, end_step=5, frequency=1), "begin_step must be >= 0, got -1"),
    (dict(begin_step=0, end_step=5, frequency=1, power=0), "power must be a positive number"),
    (dict(begin_step=0, end_step=5, frequency=1, initial_sparsity=1.0), "initial_sparsity"),
    (dict(begin_step=0.5, end_step=5, frequency=1), "begin_step must be an int"),
  ],
)
def test_bad_polynomial_schedule(kwargs, message):
  with pytest.raises((ValueError, TypeError), match=message):
    jaxprune.schedules.polynomial(**kwargs)


def test_bad_one_shot_step():
  with pytest.raises(ValueError, match="step must be >= 0, got -2"):
    jaxprune.schedules.one_shot(-2)


def test_override_matching_no_leaf():
  tx = jaxprune.magnitude_pruning(0.5, overrides={"decoder/.*": 0.1})
  with pytest.raises(ValueError, match=r"override pattern 'decoder/\.\*' matches no pruned leaf"):
    tx.init(PARAMS)


def test_override_with_bad_sparsity_names_leaf():
  # Checked at construction, before any params are seen.
  with pytest.raises(ValueError, match=r"leaf 'out/kernel'.*got 2.0"):
    jaxprune.magnitude_pruning(0.5, overrides={"out/kernel": 2.0})


def test_leaf_matched_by_two_overrides():
  tx = jaxprune.magnitude_pruning(0.5, overrides={"out/.*": 0.1, ".*/kernel": 0.2})
  with pytest.raises(
    ValueError,
    match="leaf 'enc/kernel' is matched by two override patterns|"
    "leaf 'out/kernel' is matched by two override patterns",
  ):
    tx.init(PARAMS)


def test_prune_pattern_matching_no_leaf():
  tx = jaxprune.magnitude_pruning(0.5, prune="decoder/kernel")
  with pytest.raises(ValueError, match="prune pattern 'decoder/kernel' matches no leaf"):
    tx.init(PARAMS)


@pytest.mark.parametrize("leaf", ["enc/step", "enc/flag"])
def test_integer_or_boolean_leaf_selected(leaf):
  tx = jaxprune.magnitude_pruning(0.5, prune=[".*kernel", leaf])
  with pytest.raises(TypeError, match=f"leaf '{leaf}' of dtype"):
    tx.init(PARAMS)


def test_integer_leaf_selected_by_predicate():
  tx = jaxprune.magnitude_pruning(0.5, prune=lambda path, leaf: leaf.ndim == 2)
  with pytest.raises(TypeError, match="leaf 'enc/flag' of dtype bool"):
    tx.init(PARAMS)


@pytest.mark.parametrize("inner", [None, optax.sgd(0.1)])
def test_params_none_in_update(inner):
  tx = jaxprune.magnitude_pruning(0.5, inner=inner)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match="params must be given to update"):
    tx.update(PARAMS, state, None)


def test_unknown_distribution():
  with pytest.raises(ValueError, match="unknown distribution 'gobal'"):
    jaxprune.magnitude_pruning(0.5, distribution="gobal")


def test_get_masks_without_a_pruner():
  with pytest.raises(ValueError, match="contains no jaxprune pruner"):
    jaxprune.get_masks(optax.adam(1e-3).init(PARAMS))


def test_bad_pattern_and_schedule_types():
  with pytest.raises(TypeError, match="pattern must come from jaxprune.patterns"):
    jaxprune.magnitude_pruning(0.5, pattern="2:4")
  with pytest.raises(TypeError, match="schedule must be a jaxprune.schedules.Schedule"):
    jaxprune.magnitude_pruning(0.5, schedule=lambda step: 0.5)
