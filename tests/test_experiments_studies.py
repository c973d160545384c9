"""The IMP studies' configs and checks (experiments.imp_studies) and the SILO / ALLR sweep methods
(experiments.retraining_methods); no training here (the studies' runs are on the report pages)."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from experiments import config as config_lib
from experiments import imp_studies, lottery, methods, retraining_methods


@pytest.mark.parametrize(
  "name", ["mnist_ap", "mnist_pq", "mnist_early_bird", "mnist_double_descent"]
)
def test_study_configs_validate_through_the_lottery_runner(name):
  config = config_lib.load_config(name)
  assert config.experiment == "lottery" and config.study in imp_studies.STUDIES
  lottery.validate(config)  # dispatched to imp_studies.validate


@pytest.mark.parametrize(
  "name, field, value, match",
  [
    ("mnist_ap", "ap.dnr_every", 300, r"ap.dnr_every \(300\) must divide ap.cycle_steps \(1000\)"),
    ("mnist_ap", "ap.activate_while_pruning", 0.3, r"activate_while_pruning \(0.3\)"),
    ("mnist_double_descent", "double_descent.noise", (0.2, 1.5), r"noise must lie in \[0, 1\]"),
    ("mnist_early_bird", "early_bird.ratios", (0.5, 1.0), r"ratios must lie in \(0, 1\)"),
    ("mnist_pq", "pq.beta", 1.0, r"beta must be in \(0, 1\)"),
    ("mnist_pq", "study", "nope", "study must be one of"),
  ],
)
def test_bad_study_settings(name, field, value, match):
  config = config_lib.load_config(name)
  node, leaf = config, field
  if "." in field:
    group, leaf = field.split(".")
    node = config[group]
  with node.unlocked():
    node[leaf] = value
  with pytest.raises(ValueError, match=match):
    imp_studies.validate(config)


def test_cells_and_pq_methods():
  assert imp_studies.cell([0.98, 0.99]) == "98.50 ± 0.50"
  assert imp_studies.cell([0.5]) == "50.00"
  assert imp_studies.cell([12.0, 14.0], percent=False, digits=1) == "13.0 ± 1.0"
  names = [m for m, _ in imp_studies.pq_methods(config_lib.load_config("mnist_pq"))]
  assert names == ["lt", "sap_p0.5_q1", "sap_p1_q2"]


def test_silo_and_allr_are_sweep_methods():
  retraining_methods.register()
  config = config_lib.load_config("mnist_imp_retraining")
  assert {"imp_llr", "imp_silo", "imp_allr"} <= set(config.methods)
  methods.validate(config)
  # SILO's prune fraction is the run's per-cycle rate: 1 - (1 - s) ** (1 / cycles).
  lengths = methods.imp_cycle_steps(config)
  original = optax.cosine_decay_schedule(0.05, lengths[0], alpha=0.01)
  expected = jaxprune.retraining.silo(
    original, lengths[0], lengths[1:], prune_fraction=1 - 0.05 ** (1 / 4)
  )
  schedule = retraining_methods.silo_schedule(config, 0.95)
  for step in (0, lengths[0] + 10, lengths[0] + lengths[1] + 600, sum(lengths) - 1):
    np.testing.assert_allclose(float(schedule(step)), float(expected(step)), rtol=1e-6)
  # ALLR wraps SGD in inject_hyperparams, so the stateful schedule reads imp's statistics.
  tx = methods.METHODS["imp_allr"].make_tx(config, 0.9, 0)
  params = {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
  state = tx.init(params)
  assert jaxprune.get_cycle(state).length == lengths[0]
