"""The one-shot pruning experiment runner (experiments/oneshot.py) end to end, on tiny models and
synthetic 28 x 28 images whose label says which half is brighter."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cli, models
from experiments import oneshot as os_
from experiments.configs import mnist_oneshot
from jaxprune import calibration


def _data(n=256, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n + 128, 28, 28, 1)).astype(np.float32)
  y = (x[:, :, :14].mean((1, 2, 3)) > x[:, :, 14:].mean((1, 2, 3))).astype(np.int32)
  x[:, :, :14] += 0.5 * (2 * y[:, None, None, None] - 1)
  return os_._Data(
    jnp.asarray(x[:n]), jnp.asarray(y[:n]), jnp.asarray(x[n:]), jnp.asarray(y[n:]), num_classes=2
  )


@pytest.fixture
def tiny(monkeypatch):
  data = _data()
  monkeypatch.setattr(os_, "_load", lambda config: data)
  factories = {
    "tiny_mlp": lambda n: models.LeNet300100(num_classes=n, hidden=(8,)),
    "tiny_cnn": lambda n: models.LeNet5(num_classes=n, features=(4, 8), hidden=8),
    "tiny_vit": lambda n: models.ViT(num_classes=n, dim=8, depth=1, heads=2, mlp_dim=8),
  }
  for name, factory in factories.items():
    monkeypatch.setitem(models._FACTORIES, name, factory)
  return data


def test_oneshot_runner_end_to_end(tiny, tmp_path, monkeypatch):
  config = mnist_oneshot.get_config()
  config.models = ("tiny_mlp",)
  config.budgets = {}
  config.train_steps, config.batch_size = 3, 16
  config.calibration_images, config.calibration_batch_size = 16, 8
  config.targets, config.layer_sets = ("0.5",), ("all",)
  config.output_dir = str(tmp_path / "oneshot")
  config.progress, config.warm_timing = False, False
  result = os_.run(config)
  by = {(r["method"], r["target"]): r for r in result["records"]}
  assert len(by) == 1 + 3 and by[("dense", "dense")]["sparsity"] == 0.0
  for method in os_.METHODS:
    for target in config.targets:
      record = by[(method, target)]
      assert 0.0 <= record["test_accuracy"] <= 1.0 and record["prune_s"] > 0
      # Every kernel of the MLP (fan-ins 784 and 8) is pruned to exactly half.
      assert record["sparsity"] == record["kernel_sparsity"] == 0.5
      assert record["dense_leaves"] == []
  out = tmp_path / "oneshot"
  for name in ("summary.md", "summary.csv", "oneshot.png", "log.txt", "config.json"):
    assert (out / name).is_file()
  table = (out / "summary.md").read_text()
  assert "| tiny_mlp | all | 0.5 | 50.0% |" in table and "SparseGPT (%)" in table
  record = json.loads((out / "runs" / "tiny_mlp_sparsegpt_0.5_s0.json").read_text())
  assert record["test_accuracy"] == by[("sparsegpt", "0.5")]["test_accuracy"]
  # The accuracy recorded is the pruned network's: SparseGPT's reconstructed params.
  module = models.get_model("tiny_mlp", 2)
  params = os_.dense_params(config, tiny, module, "tiny_mlp", 0, out)
  fn = lambda p, x: module.apply({"params": p}, x)
  batches = os_.calibration_batches(tiny, config, 0)
  new, masks = os_.prune_once("sparsegpt", fn, params, batches, "0.5", None, config)
  assert os_.accuracy(module, new, tiny) == record["test_accuracy"]

  # A rerun reuses the trained networks and every finished run.
  config.plots = False
  monkeypatch.setattr(os_, "train", lambda *a, **k: pytest.fail("retrained a network"))
  monkeypatch.setattr(os_, "prune_once", lambda *a, **k: pytest.fail("pruned again"))
  again = os_.run(config)
  assert [r["test_accuracy"] for r in again["records"]] == [
    r["test_accuracy"] for r in result["records"]
  ]


def test_layers_that_n_m_does_not_fit_stay_dense(tiny):
  # LeNet-5's first convolution has one input channel, the ViT's patch embedding 49 inputs.
  for name, dense in (
    ("tiny_cnn", ["params/Conv_0/kernel"]),
    ("tiny_vit", ["params/embed/kernel"]),
  ):
    module = models.get_model(name, 2)
    variables = jax.eval_shape(module.init, jax.random.key(0), tiny.test_x[:2])
    fn = lambda v, x: module.apply(v, x)
    layers = calibration.layers(fn, variables, tiny.test_x[:2])
    pruned, left = os_._selection(layers, "2:4")
    assert left == dense and len(pruned) == len(layers) - 1
    assert os_._selection(layers, "0.5")[1] == []
    # "inner": the first and last layers in use order stay dense too.
    _, left = os_._selection(layers, "0.5", "inner")
    assert left == [layers[0].path, layers[-1].path]
    assert layers[-1].path in ("params/Dense_1/kernel", "params/head/kernel")


def test_oneshot_config_validates_and_bad_fields_are_named():
  config = mnist_oneshot.get_config()
  os_.validate(config)
  assert os_.parse_target("2:4") == (None, (2, 4)) and os_.parse_target("0.5") == (0.5, None)
  config.targets = ("0.5", "3:2")
  with pytest.raises(ValueError, match="'3:2'"):
    os_.validate(config)
  config = mnist_oneshot.get_config()
  config.methods = ("wanda", "obs")
  with pytest.raises(ValueError, match=r"unknown methods \['obs'\]"):
    os_.validate(config)
  assert cli.main(["--config", "mnist_oneshot", "--set", "calibration_images=0"]) == 2
