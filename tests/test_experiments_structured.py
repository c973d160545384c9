"""The structured-pruning and DropNet experiment runners, on tiny models and synthetic data.

The data are 12 x 12 images whose label says which half is brighter; the models are small
versions of the experiments' (every width a field), so that each run compiles in seconds.
"""

import json

import flax
import jax
import numpy as np
import pytest
from shared_data import tiny_image_data

import jaxprune
from experiments import cli, models
from experiments import dropnet as dn
from experiments import structured as st
from experiments.configs import mnist_dropnet, mnist_structured
from jaxprune import structured


@pytest.fixture
def tiny(monkeypatch):
  data = tiny_image_data()
  monkeypatch.setattr(st, "_load", lambda config: data)
  monkeypatch.setitem(
    models._FACTORIES, "tiny_vgg", lambda n: models.VGG(num_classes=n, stages=((4,), (6,)))
  )
  monkeypatch.setitem(
    models._FACTORIES, "tiny_mlp", lambda n: models.LeNet300100(num_classes=n, hidden=(8, 6))
  )
  return data


def _structured_config(tmp_path):
  config = mnist_structured.get_config("tiny_vgg")
  config.output_dir = str(tmp_path / "structured")
  config.progress = False
  config.pretrain_steps, config.finetune_steps = 4, 2
  config.batch_size, config.calibration_batches = 16, 1
  config.ratios = (0.5,)
  config.latency_rounds, config.latency_min_time = 1, 0.0
  return config


def test_structured_runner_end_to_end(tiny, tmp_path, monkeypatch):
  config = _structured_config(tmp_path)
  result = st.run(config)
  by_method = {r["method"]: r for r in result["records"]}
  assert set(by_method) == {"dense", *config.methods}
  dense = by_method["dense"]
  module = models.get_model("tiny_vgg", 2)
  for method, rec in by_method.items():
    if method == "dense":
      continue
    # Every group at the ratio (l1, random, ispasp, the scratch controls: 2 of 4 and 3 of 6), or one
    # threshold over the groups (slimming, taylor, dropnet) removing round(0.5 * 10) channels.
    assert rec["channels_removed"] == 0.5, method
    assert rec["params"] < dense["params"]
    # The recorded widths are the network's: rebuilt, it has the recorded parameter count.
    small = module.clone(**st._tuples(rec["widths"]))
    variables = small.init(jax.random.key(0), tiny.test_x[:1], train=False)
    assert sum(np.size(x) for x in jax.tree.leaves(variables["params"])) == rec["params"]
  assert by_method["scratch_b"]["train_steps"] > by_method["scratch_e"]["train_steps"] == 4
  assert by_method["scratch_b"]["train_steps"] <= 2.0 * 4

  # Before fine-tuning, the slim network is the dense one with the removed channels zeroed.
  out = tmp_path / "structured"
  ckpt = next((out / "checkpoints").glob("dense_s0_*.msgpack"))
  runner = st._Runner(config, tiny, module, out)
  init = st._fresh(module.init(jax.random.key(0), tiny.train_x[:2], train=False))
  dense_vars = flax.serialization.from_bytes(init, ckpt.read_bytes())
  groups = structured.dependency_groups(runner.fn, dense_vars, runner.x64)
  keeps = st._keeps("l1", 0.5, dense_vars, groups, runner, 0)
  masked = jaxprune.apply_masks(dense_vars, structured.keep_masks(dense_vars, groups, keeps))
  assert st.accuracy(module, masked, tiny) == by_method["l1"]["accuracy_before_finetune"]
  assert st.accuracy(module, dense_vars, tiny) == dense["test_accuracy"]

  for name in ("summary.md", "summary.csv", "structured.png", "log.txt"):
    assert (out / name).is_file()
  assert "| scratch_b | 50% | 50.0% |" in (out / "summary.md").read_text()

  # A rerun reuses every finished run (and the trained dense networks) without training.
  monkeypatch.setattr(st, "train", lambda *a, **k: pytest.fail("retrained a finished run"))
  again = st.run(config)
  assert [r["test_accuracy"] for r in again["records"]] == [
    r["test_accuracy"] for r in result["records"]
  ]
  # remeasure: the latency is measured again from the saved slim networks, the rest kept.
  config.remeasure = True
  remeasured = st.run(config)
  for a, b in zip(remeasured["records"], result["records"]):
    assert {k: v for k, v in a.items() if "latency" not in k and "speedup" not in k} == {
      k: v for k, v in b.items() if "latency" not in k and "speedup" not in k
    }


def test_dropnet_scores_are_the_mean_activation_the_next_layer_reads(tiny):
  config = mnist_dropnet.get_config("tiny_mlp")
  config.batch_size, config.calibration_batches = 16, 2
  module = models.get_model("tiny_mlp", 2)
  variables = st._fresh(module.init(jax.random.key(0), tiny.train_x[:2], train=False))
  fn = lambda v, x: module.apply(v, x, train=False)
  groups = structured.dependency_groups(fn, variables, tiny.test_x[:4])
  scores = st.dropnet_scores(module, variables, groups, tiny, config, seed=3)
  p = variables["params"]
  idx = st._batches(len(tiny.train_y), 16, 2, 3)
  h1 = [
    jax.nn.relu(
      tiny.train_x[i].reshape(16, -1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None]
    )
    for i in idx
  ]
  h2 = [jax.nn.relu(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"][None]) for h in h1]
  want = [np.mean([np.abs(h).mean(0) for h in hs], axis=0) for hs in (h1, h2)]
  for got, expected in zip(scores, want):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "method,units",
  [("dropnet", [14, 11, 9]), ("dropnet_layer", [14, 11, 9]), ("random", [14, 11, 9])],
)
def test_dropnet_curve_removes_a_fifth_of_the_units_per_cycle(tiny, tmp_path, method, units):
  config = mnist_dropnet.get_config("tiny_mlp")
  config.output_dir = str(tmp_path / method)
  config.progress, config.plots = False, False
  config.seeds, config.methods = (0,), (method,)
  config.cycles, config.cycle_steps, config.batch_size, config.calibration_batches = 2, 3, 16, 1
  result = dn.run(config)
  curve = result["records"][0]["curve"]
  assert [c["units"] for c in curve] == units
  assert [round(c["units_left"], 4) for c in curve] == [1.0, round(11 / 14, 4), round(9 / 14, 4)]
  assert "| 2 | 64.3% |" in (tmp_path / method / "summary.md").read_text()
  assert (
    json.loads((tmp_path / method / "runs" / f"{method}_s0.json").read_text())["curve"] == curve
  )


def test_dropnet_rewind_restarts_from_the_slimmed_initialisation(tiny):
  config = mnist_dropnet.get_config("tiny_mlp")
  config.batch_size, config.calibration_batches = 16, 1
  module = models.get_model("tiny_mlp", 2)
  init = st._fresh(module.init(jax.random.key(0), tiny.train_x[:2], train=False))
  trained = st.train(module, init, tiny, steps=3, lr=0.05, seed=0, config=config)
  small_module, small, small_init = dn.prune_cycle(
    module, trained, init, "dropnet", config, tiny, 1, tiny.test_x[:8]
  )
  # The kept units' initial weights are the full initialisation's, at the kept positions.
  k0 = np.asarray(init["params"]["Dense_0"]["kernel"])
  s0 = np.asarray(small_init["params"]["Dense_0"]["kernel"])
  t0 = np.asarray(trained["params"]["Dense_0"]["kernel"])
  st0 = np.asarray(small["params"]["Dense_0"]["kernel"])
  cols = [int(np.flatnonzero(np.all(t0 == c[:, None], axis=0))[0]) for c in st0.T]
  np.testing.assert_array_equal(s0, k0[:, cols])
  assert small_module.hidden == (s0.shape[1], small["params"]["Dense_1"]["kernel"].shape[1])


def test_configs_validate_and_bad_fields_are_named(tmp_path):
  for config in (mnist_structured.get_config(m) for m in ("lenet5", "vgg_mnist", "resnet20_b")):
    st.validate(config)
  dn.validate(mnist_dropnet.get_config())
  config = mnist_structured.get_config()
  config.methods = ("l1", "magic")
  with pytest.raises(ValueError, match=r"unknown methods \['magic'\]"):
    st.validate(config)
  config = mnist_structured.get_config()
  config.ratios = (0.5, 1.0)
  with pytest.raises(ValueError, match="ratios must lie in"):
    st.validate(config)
  config = mnist_dropnet.get_config()
  config.fraction = 0.0
  with pytest.raises(ValueError, match="fraction must lie in"):
    dn.validate(config)
  assert cli.main(["--config", "mnist_structured", "--set", "finetune_steps=0"]) == 2
