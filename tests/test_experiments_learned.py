"""The learned, ephemeral and second-order methods of ``mnist_learned`` through the sweep runner.

The runner reads synthetic MNIST-shaped data here (28 x 28 images whose label says which of ten
stripes is brightest), so nothing is decoded. One tiny sweep (20 steps of batch 32, one seed) trains
three methods that cover the runner's paths: ``ste`` (ephemeral masks, a global target), ``scl``
(ephemeral, a learned sparsity, pruned weights frozen) and ``sr_ste`` (ephemeral 2:4, a program per
pattern); every other method's transformation is built and traced on LeNet-300-100 without
compiling. The resume test reuses the sweep's compiled program (same config fingerprint).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import checkpointing, cli, evaluation, methods, models, runner, sweep, train
from experiments import config as config_lib
from experiments import data as data_lib

KERNELS = {"Dense_0/kernel": (784, 300), "Dense_1/kernel": (300, 100), "Dense_2/kernel": (100, 10)}
SWEPT = ("ste", "scl", "sr_ste")
NEW = ("ste", "movement", "platon", "fisher", "movement_soft", "scl", "nm_magnitude", "ste_nm")
NEW += ("sr_ste",)
EPHEMERAL = ("ste", "movement", "movement_soft", "scl", "ste_nm", "sr_ste")


def _split(n: int, seed: int) -> data_lib.Split:
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n).astype(np.int32)
  images = rng.standard_normal((n, 28, 28, 1)).astype(np.float32)
  for c in range(10):  # stripe c (rows 2c + 4 and 2c + 5) is brighter for label c
    images[labels == c, 2 * c + 4 : 2 * c + 6] += 1.0
  return data_lib.Split(images, labels)


@pytest.fixture(scope="module", autouse=True)
def synthetic_data():
  dataset = data_lib.Dataset("mnist", "synthetic", _split(640, 0), _split(200, 1), 10, (0,), (1,))

  def load(config, data_dir, progress):
    del data_dir, progress
    return dataset, train.prepare_data(dataset, int(config.eval_batch_size))

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(runner, "_load", load)
    yield dataset


def _argv(out, *extra):
  return [
    "--config",
    "mnist_learned",
    "--output_dir",
    str(out),
    "--no_progress",
    *("--set", "num_train_steps=20", "--set", "eval_every=10", "--set", "batch_size=32"),
    *("--set", "eval_batch_size=200", "--set", "seeds=0", "--set", "plots=false"),
    *("--set", "sparsities=0.9", "--set", "learned.nm_n=2"),
    # SCL's masks move until gradual's end (step 14): a lambda that prunes part of the kernels.
    *("--set", "learned.scl_regularization=((0.9, 7.0),)"),
    *extra,
  ]


@pytest.fixture(scope="module")
def learned_sweep(tmp_path_factory):
  out = tmp_path_factory.mktemp("learned")
  assert cli.main(_argv(out, "--set", f"methods={','.join(SWEPT)}")) == 0
  records = {}
  for path in sorted((out / "runs").glob("*.json")):
    record = json.loads(path.read_text())
    records[record["name"]] = record
  assert sorted(records) == ["scl_s0.9_seed0", "sr_ste_s0.5_seed0", "ste_s0.9_seed0"]
  return out, records


def _deployed(out, name):
  with np.load(out / "deployed" / f"{name}.npz") as f:
    return {k: f[k] for k in f.files}


def test_config_plans_and_traces_every_method():
  config = config_lib.load_config("mnist_learned")
  sweep.validate(config)
  plan = sweep.sweep_plan(config)
  assert len(plan) == 84 and len(config.seeds) == 3
  # N:M at its own sparsities (2:4 and 1:4); the rest at 90/95/98%.
  assert {s for m, s, _ in plan if m == "sr_ste"} == {0.5, 0.75}
  assert {s for m, s, _ in plan if m == "scl"} == {0.9, 0.95, 0.98}
  assert methods.nm_pattern(config, 0.75) == (1, 4)
  # Every learned-sparsity target has a lambda; a target without one is named.
  for method in ("movement_soft", "scl"):
    assert methods.regularization(config, method, 0.98) > 0
  with pytest.raises(ValueError, match="0.97"):
    methods.regularization(config, "scl", 0.97)
  assert set(NEW) <= set(config.methods)
  assert [m for m in NEW if methods.METHODS[m].ephemeral] == list(EPHEMERAL)
  # Every new method's step on LeNet-300-100, traced (not compiled).
  model = models.get_model("lenet300_100", 10)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  for method in NEW:
    sparsity = 0.5 if method in ("nm_magnitude", "ste_nm", "sr_ste") else 0.95
    tx = methods.METHODS[method].make_tx(config, sparsity, 0)
    state = jax.eval_shape(tx.init, params)
    updates, _ = jax.eval_shape(tx.update, params, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params), method


def test_deployed_models_and_dense_weights(learned_sweep):
  out, records = learned_sweep
  total = sum(a * b for a, b in KERNELS.values())
  for name, record in records.items():
    method, final = record["method"], record["final"]
    assert [e["step"] for e in record["evaluations"]] == [10, 20], name
    zeros = {k: round(final["leaf_sparsity"][k] * a * b) for k, (a, b) in KERNELS.items()}
    if method == "ste":  # global allocation: exactly round(0.9 * kernels) pruned
      assert sum(zeros.values()) == round(0.9 * total)
    elif method == "sr_ste":  # exactly 2 of every 4 inputs of every kernel
      assert all(final["leaf_sparsity"][k] == 0.5 for k in KERNELS) and record["pattern"] == "2:4"
    else:  # learned: part of the kernels, with the lambda it trained with
      assert 0.05 < final["kernel_sparsity"] < 0.95 and record["regularization"] == 7.0
    # The deployed model is what was measured and written; the dense weights all stay nonzero.
    assert record["ephemeral"] and final["dense_kernel_sparsity"] == 0.0, name
    assert record["deployed_params"] == f"deployed/{name}.npz"
    deployed = _deployed(out, name)
    for leaf, (a, b) in KERNELS.items():
      assert int(np.sum(deployed[leaf] == 0)) == zeros[leaf], (name, leaf)
      if method == "sr_ste":
        assert np.all((deployed[leaf] != 0).reshape(a // 4, 4, b).sum(1) == 2), leaf
  # The summary lists the sparsity each learned-sparsity run reached.
  assert "| scl | 90.0% | 0 | 7 | " in (out / "summary.md").read_text()


def test_evaluation_uses_the_deployed_weights(learned_sweep, synthetic_data):
  out, records = learned_sweep
  name = "ste_s0.9_seed0"
  model = models.get_model("lenet300_100", 10)
  flat = _deployed(out, name)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  params = {layer: {k: jnp.asarray(flat[f"{layer}/{k}"]) for k in v} for layer, v in shapes.items()}
  test = evaluation.prepare_test_data(synthetic_data.test, 200)
  correct, _ = jax.jit(evaluation.make_eval_fn(model, 200))(
    params, {}, test.images, test.labels, test.valid
  )
  assert int(correct) / test.size == records[name]["final"]["test_accuracy"]
  # Not the dense weights: they give another network.
  assert records[name]["final"]["kernel_sparsity"] == pytest.approx(0.9)


def _final_state(out, argv, name):
  _, config = cli.parse_args(argv)
  tx = methods.METHODS["sr_ste"].make_tx(config, 0.5, 0)
  template = train.init_state(models.get_model(config.model, 10), tx, 0, (28, 28, 1))
  checkpoints = checkpointing.RunCheckpoints(out / "checkpoints" / name)
  try:
    state, meta = checkpoints.restore(checkpoints.steps()[-1], template)
  finally:
    checkpoints.close()
  assert meta["step"] == config.num_train_steps
  return state


def test_killed_ephemeral_run_resumes_bitwise(learned_sweep, tmp_path, capsys):
  reference, records = learned_sweep
  out, name = tmp_path / "killed", "sr_ste_s0.5_seed0"
  argv = _argv(out, "--set", "methods=sr_ste", "--set", "checkpoint_every=5")
  argv += ["--set", "stop_after_step=15"]
  assert cli.main(argv) == cli.EXIT_STOPPED
  assert not (out / "runs" / f"{name}.json").exists()
  assert cli.main(argv) == 0
  assert "resuming from the checkpoint of step 15/20" in capsys.readouterr().out
  resumed = json.loads((out / "runs" / f"{name}.json").read_text())
  resumed.pop("train_time_s")
  assert resumed == {k: v for k, v in records[name].items() if k != "train_time_s"}
  a, b = _final_state(out, argv, name), _final_state(reference, argv, name)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
  # The checkpoint holds the dense weights (what a resumed run needs), the file the deployed.
  assert not np.any(np.asarray(a.params["Dense_0"]["kernel"]) == 0)
  for leaf, x in _deployed(out, name).items():
    assert np.array_equal(x, _deployed(reference, name)[leaf]), leaf
