"""Tests of the experiments package: models, MNIST data, configs/CLI, MACs and the sweep.

MNIST is read from ``../shared/tensorflow_datasets`` next to the repository (the prepared
offline copy); the data tests fail, naming the directory, when it is not there. The split is decoded once
per test session into a temporary cache directory.

The sweep tests share one small training config (`TINY`: 20 steps of batch 32), so that
the programs compiled by the first test are reused by the others (the compiled programs
are cached per config fingerprint in `experiments.train`).
"""

import dataclasses
import json
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from processes import run_workers
from shared_data import DATA_DIR, require_mnist

import jaxprune
from experiments import (
  checkpointing,
  cli,
  distributed,
  evaluation,
  methods,
  models,
  optimizers,
  outputs,
  runner,
  stacking,
  sweep,
  train,
)
from experiments import config as config_lib
from experiments import data as data_lib
from jaxprune import flops

needs_mnist = pytest.mark.usefixtures("mnist_required")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("jaxprune_cache")


@pytest.fixture(scope="session")
def mnist(cache_dir):
  require_mnist()
  return data_lib.load_dataset("mnist", data_dir=DATA_DIR, cache_dir=cache_dir, progress=False)


# ------------------------------------------------------------------------------ models


def _param_count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
  "name,shape,params",
  [
    ("lenet300_100", (28, 28, 1), 266_610),
    ("lenet5", (28, 28, 1), 431_080),
    ("conv2", (32, 32, 3), 4_301_642),
    ("conv4", (32, 32, 3), 2_425_930),
    ("conv6", (32, 32, 3), 2_262_602),
    ("conv6", (28, 28, 1), None),  # any H x W works
    ("vgg_small", (32, 32, 3), None),
    ("vgg11", (32, 32, 3), None),
    ("vgg16", (32, 32, 3), None),
    ("resnet20", (32, 32, 3), 269_722),
  ],
)
def test_model_shapes_and_parameter_counts(name, shape, params):
  model = models.get_model(name, num_classes=10)
  x = jnp.zeros((2, *shape))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  if params is not None:
    assert _param_count(variables["params"]) == params
  has_bn = "batch_stats" in variables
  assert has_bn == (name.startswith("vgg") or name == "resnet20")
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out.shape == (2, 10)


def test_models_forward_and_batch_stats():
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
  lenet = models.get_model("LeNet-300-100", 7)  # case and '-' are normalised
  v = lenet.init(jax.random.PRNGKey(0), x)
  assert lenet.apply(v, x).shape == (4, 7)
  assert set(v["params"]) == {"Dense_0", "Dense_1", "Dense_2"}
  assert v["params"]["Dense_0"]["kernel"].shape == (784, 300)
  assert not np.any(v["params"]["Dense_0"]["bias"])

  resnet = models.get_model("resnet20", 10)
  # (Random init of ResNet-20 compiles slowly on CPU; shapes plus NumPy values will do.)
  shapes = jax.eval_shape(lambda k: resnet.init(k, x, train=False), jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  v = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)
  logits, new_state = jax.jit(lambda v, x: resnet.apply(v, x, train=True, mutable=["batch_stats"]))(
    v, x
  )
  assert logits.shape == (4, 10) and bool(jnp.all(jnp.isfinite(logits)))
  changed = jax.tree.map(
    lambda a, b: bool(jnp.any(a != b)), v["batch_stats"], new_state["batch_stats"]
  )
  assert any(jax.tree.leaves(changed))


def test_unknown_model_names_the_valid_ones():
  with pytest.raises(ValueError) as e:
    models.get_model("alexnet", 10)
  msg = str(e.value)
  assert "alexnet" in msg and "lenet300_100" in msg and "resnet20" in msg


# ------------------------------------------------------------------------------ data


@needs_mnist
def test_mnist_arrays(mnist, cache_dir):
  assert mnist.train.images.shape == (60000, 28, 28, 1)
  assert mnist.test.images.shape == (10000, 28, 28, 1)
  assert mnist.train.images.dtype == np.float32 and mnist.train.labels.dtype == np.int32
  assert mnist.num_classes == 10 and mnist.version == "3.0.1"
  # The label counts of MNIST (LeCun et al. 1998) per class.
  assert np.bincount(mnist.train.labels).tolist() == [
    5923,
    6742,
    5958,
    6131,
    5842,
    5421,
    5918,
    6265,
    5851,
    5949,
  ]
  assert np.bincount(mnist.test.labels).tolist() == [
    980,
    1135,
    1032,
    1010,
    982,
    892,
    958,
    1028,
    974,
    1009,
  ]
  # Standardised with the MNIST training statistics.
  assert abs(float(mnist.train.images.mean())) < 0.01
  assert abs(float(mnist.train.images.std()) - 1.0) < 0.01
  assert mnist.mean == (0.1307,) and mnist.std == (0.3081,)
  # The decoded uint8 splits are cached, keyed on name, version and split.
  for split in ("train", "test"):
    assert (cache_dir / f"mnist-3.0.1-{split}.npz").is_file()
  t = time.perf_counter()
  images, labels, info = data_lib.load_split_arrays(
    "mnist", "test", data_dir=DATA_DIR, cache_dir=cache_dir
  )
  assert time.perf_counter() - t < 5
  assert images.dtype == np.uint8 and images.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(labels, mnist.test.labels)
  np.testing.assert_allclose(
    data_lib.normalize(images[:5], (0.1307,), (0.3081,)), mnist.test.images[:5]
  )


@needs_mnist
def test_unit_scaling_gives_the_raw_pixel_intensities(mnist):
  unit = data_lib.unit_scaled(mnist)
  for split in (unit.train, unit.test):
    assert split.images.dtype == np.float32
    assert split.images.min() >= -1e-6 and split.images.max() <= 1 + 1e-6
    # Every value is a pixel intensity k / 255, to float32 rounding.
    k = split.images[:50] * 255
    np.testing.assert_allclose(k, np.round(k), atol=2e-4)
  np.testing.assert_array_equal(unit.train.labels, mnist.train.labels)
  lazy = dataclasses.replace(mnist, train=object())
  with pytest.raises(ValueError, match="not in memory"):
    data_lib.unit_scaled(lazy)
  config = config_lib.load_config()
  config.input_scaling = "raw"
  with pytest.raises(ValueError, match="input_scaling must be 'standardize' or 'unit', got 'raw'"):
    runner._load(config, None, False)


def test_missing_dataset_error(tmp_path, cache_dir):
  for missing in (tmp_path, tmp_path / "does_not_exist"):
    with pytest.raises(FileNotFoundError) as e:
      data_lib.load_split_arrays("mnist", "train", data_dir=missing, cache_dir=cache_dir)
    msg = str(e.value)
    assert str(missing) in msg
    assert "tfds build mnist" in msg and "TFDS_DATA_DIR" in msg


def test_data_dir_resolution(monkeypatch, tmp_path):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
  assert data_lib.resolve_data_dir(tmp_path / "explicit") == str(tmp_path / "explicit")
  assert data_lib.resolve_data_dir(None) == str(tmp_path / "env")
  monkeypatch.delenv("TFDS_DATA_DIR")
  expected = str(data_lib.SHARED_DATA_DIR) if data_lib.SHARED_DATA_DIR.is_dir() else None
  assert data_lib.resolve_data_dir(None) == expected
  monkeypatch.setenv("JAXPRUNE_CACHE_DIR", str(tmp_path / "c"))
  assert data_lib.resolve_cache_dir() == tmp_path / "c"
  assert data_lib.resolve_cache_dir(tmp_path / "d") == tmp_path / "d"


def test_batch_iterator_shuffles_per_epoch():
  x = np.arange(10, dtype=np.float32)[:, None]
  y = np.arange(10, dtype=np.int32)

  def epoch(e, **kw):
    batches = data_lib.batch_iterator(x, y, 4, seed=3, epoch=e, **kw)
    return [labels.tolist() for _, labels in batches]

  assert epoch(0) == epoch(0)
  assert epoch(0) != epoch(1)
  assert [len(b) for b in epoch(0)] == [4, 4]  # drop_remainder
  assert sorted(sum(epoch(0, drop_remainder=False), [])) == list(range(10))
  assert epoch(0, shuffle=False, drop_remainder=False) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  stream = data_lib.train_batches(x, y, 4, seed=3)
  first_two_epochs = [next(stream)[1].tolist() for _ in range(4)]
  assert first_two_epochs == epoch(0) + epoch(1)


def test_batch_indices_follow_train_batches_from_any_position():
  x = np.zeros((10, 1), np.float32)
  y = np.arange(10, dtype=np.int32)
  stream = data_lib.train_batches(x, y, 3, seed=5)
  expected = [next(stream)[1].tolist() for _ in range(8)]  # 3 batches per epoch
  indices, pos = data_lib.batch_indices(10, 3, seed=5, position=(0, 0), count=8)
  assert indices.dtype == np.int32 and indices.tolist() == expected
  assert pos == (2, 2) == data_lib.data_position(8, 10, 3)
  # Restarting from a saved position gives the rest of the same stream.
  head, pos = data_lib.batch_indices(10, 3, seed=5, position=(0, 0), count=4)
  assert pos == (1, 1)
  tail, _ = data_lib.batch_indices(10, 3, seed=5, position=pos, count=4)
  assert np.concatenate([head, tail]).tolist() == expected
  with pytest.raises(ValueError):
    data_lib.batch_indices(10, 3, seed=5, position=(0, 3), count=1)


# ------------------------------------------------------------------------------ config


def test_default_config():
  config = config_lib.load_config()
  assert config.model == "lenet300_100" and config.dataset == "mnist"
  assert config.data_dir is None
  assert tuple(config.sparsities) == (0.8, 0.9, 0.95, 0.98)
  assert tuple(config.methods) == ("dense", "one_shot", "gradual")
  assert config.optimizer.name == "sgd" and config.optimizer.momentum == 0.9
  assert config.output_dir == "results/mnist_lenet300"
  assert len(sweep.sweep_plan(config)) == 9
  assert config.checkpoint_every is None and config.resume is True
  assert config.stop_after_step is None and config.vmap_seeds is True
  assert config_lib.checkpoint_interval(config) == config.eval_every
  # The published LeNet-300-100 results of ../shared/REFERENCES.md, in percent.
  points = outputs.published_points(config)
  assert [(p["sparsity"], round(p["accuracy"], 2)) for p in points] == [
    (0.0, 98.3),
    (0.95, 98.4),
    (0.98, 97.6),
    (0.918, 98.41),
  ]
  assert all(p["label"] for p in points)
  # The seeds of a (method, sparsity) are vmapped together; there is one seed here.
  assert [len(g) for g in sweep.run_groups(config)] == [1] * 9


def test_config_overrides():
  args, config = cli.parse_args(
    [
      "--config",
      "mnist_lenet300",
      "--config.batch_size=64",
      "--config.optimizer.learning_rate",
      "0.1",
      "--set",
      "sparsities=0.5,0.75",
      "--set",
      "methods=gradual",
      "--set",
      "progress=false",
      "--data_dir",
      "/some/where",
    ]
  )
  assert config.batch_size == 64 and isinstance(config.batch_size, int)
  assert config.optimizer.learning_rate == 0.1
  assert tuple(config.sparsities) == (0.5, 0.75)
  assert tuple(config.methods) == ("gradual",)
  assert config.progress is False
  assert config.data_dir == "/some/where"
  assert sweep.sweep_plan(config) == [("gradual", 0.5, 0), ("gradual", 0.75, 0)]
  # A config given as a file path works too.
  path = config_lib.CONFIG_DIR / "mnist_lenet300.py"
  assert config_lib.load_config(str(path)).model == "lenet300_100"
  # Fields that default to None take any literal; lists take Python literals.
  _, config = cli.parse_args(
    [
      "--set",
      "stop_after_step=30",
      "--set",
      "checkpoint_every=none",
      "--set",
      "published=[{'label': 'x', 'sparsity': 0.5, 'error': 2.0}]",
      "--set",
      "seeds=0,1,2",
      "--set",
      "vmap_sparsities=true",
    ]
  )
  assert config.stop_after_step == 30 and config.checkpoint_every is None
  assert outputs.published_points(config) == [
    {"label": "x", "sparsity": 0.5, "accuracy": 98.0, "source": ""}
  ]
  assert [len(g) for g in sweep.run_groups(config)] == [3, 12, 12]
  with config.unlocked():
    config.vmap_seeds, config.vmap_sparsities = False, False
  assert [len(g) for g in sweep.run_groups(config)] == [1] * 27


def test_fingerprint_ignores_only_execution_fields():
  config = config_lib.load_config()
  base = config_lib.fingerprint(config)
  for field, value in [
    ("output_dir", "/x"),
    ("seeds", (4, 5)),
    ("vmap_seeds", False),
    ("stop_after_step", 3),
    ("published", []),
    ("progress", False),
  ]:
    changed = config_lib.load_config()
    changed[field] = value
    assert config_lib.fingerprint(changed) == base, field
  changed = config_lib.load_config()
  changed.optimizer.learning_rate = 0.01
  assert config_lib.fingerprint(changed) != base


@pytest.mark.parametrize(
  "entry,match",
  [
    ({"sparsity": 0.9, "accuracy": 98.0}, "label"),
    ({"label": "x", "sparsity": 0.9}, "accuracy or an error"),
    ({"label": "x", "sparsity": 0.9, "accuracy": 0.98}, "percent"),
    ({"label": "x", "sparsity": 1.5, "accuracy": 98.0}, "sparsity"),
  ],
)
def test_bad_published_points(entry, match):
  config = config_lib.load_config()
  config.published = [entry]
  with pytest.raises(ValueError, match=match):
    outputs.published_points(config)


@pytest.mark.parametrize(
  "argv",
  [
    ["--config.no_such_field=1"],
    ["--set", "batch_size=1.5"],
    ["--bogus"],
    ["--set", "optimizer=3"],
  ],
)
def test_bad_overrides_exit(argv, capsys):
  with pytest.raises(SystemExit):
    cli.parse_args(argv)
  assert "error" in capsys.readouterr().err


def test_unknown_method_rejected():
  config = config_lib.load_config()
  config.methods = ("dense", "lottery")
  with pytest.raises(ValueError, match="lottery"):
    sweep.sweep_plan(config)


# ------------------------------------------------------------------------------ MACs


def _macs(model, shape):
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
  return evaluation.model_macs(model, variables, shape)


def test_mac_counts_of_layers_with_known_counts():
  # LeNet-300-100: 784*300 + 300*100 + 100*10 multiply-adds per example.
  lenet = _macs(models.get_model("lenet300_100", 10), (28, 28, 1))
  assert lenet["by_leaf"] == {
    "Dense_0/kernel": 235_200,
    "Dense_1/kernel": 30_000,
    "Dense_2/kernel": 1_000,
  }
  assert lenet["total"] == 266_200 and lenet["unattributed"] == 0
  # LeNet-5 (Caffe): conv 5x5x1->20 on 24x24 outputs, conv 5x5x20->50 on 8x8 outputs,
  # dense 800->500 and 500->10.
  lenet5 = _macs(models.get_model("lenet5", 10), (28, 28, 1))
  assert lenet5["by_leaf"] == {
    "Conv_0/kernel": 24 * 24 * 20 * 25,
    "Conv_1/kernel": 8 * 8 * 50 * 25 * 20,
    "Dense_0/kernel": 800 * 500,
    "Dense_1/kernel": 5000,
  }
  # A strided grouped convolution: 5x5 outputs x 8 features x 3x3 kernel x 4/2 inputs.
  conv = nn.Conv(8, (3, 3), strides=(2, 2), padding="SAME", feature_group_count=2)
  x = jnp.zeros((1, 10, 10, 4))
  params = jax.eval_shape(conv.init, jax.random.PRNGKey(0), x)["params"]
  counts = flops.count_macs(lambda p, x: conv.apply({"params": p}, x), params, x)
  assert counts["by_leaf"] == {"kernel": 5 * 5 * 8 * 9 * 2}


def test_speedup_and_compression_scale_layers_by_density():
  model = models.get_model("lenet300_100", 10)
  macs = _macs(model, (28, 28, 1))
  rng = np.random.default_rng(0)
  params = {
    f"Dense_{i}": {
      "kernel": rng.uniform(0.5, 1.0, (n, m)).astype(np.float32),
      "bias": np.zeros(m, np.float32),
    }
    for i, (n, m) in enumerate([(784, 300), (300, 100), (100, 10)])
  }
  keep = np.arange(784 * 300).reshape(784, 300) % 10 == 0  # 10% of Dense_0 kept
  params["Dense_0"]["kernel"] = np.where(keep, params["Dense_0"]["kernel"], 0.0)
  m = evaluation.measure(params, macs)
  assert m["theoretical_speedup"] == pytest.approx(266_200 / (23_520 + 30_000 + 1_000))
  # The 410 biases are zero, so only the kept kernel entries are nonzero.
  assert m["compression_ratio"] == pytest.approx(266_610 / (23_520 + 30_000 + 1_000))
  assert m["zeros"] == 211_680 + 410 and m["size"] == 266_610
  assert m["leaves"]["Dense_0/kernel"] == pytest.approx(0.9)
  assert m["kernel_sparsity"] == pytest.approx(211_680 / 266_200)
  assert flops.theoretical_speedup(macs, jax.tree.map(np.zeros_like, params)) == np.inf


def test_stacking_shares_counters_and_round_trips():
  import optax

  import jaxprune

  params = [{"w": jnp.full((3, 4), float(i)), "b": jnp.zeros(4)} for i in range(3)]
  tx = optax.chain(
    optax.sgd(0.1, momentum=0.9), optax.inject_hyperparams(jaxprune.magnitude_pruning)(sparsity=0.5)
  )
  states = [tx.init(p) for p in params]
  axes = stacking.run_axes(states[0])
  stacked = stacking.stack(states, axes)
  assert stacked[1].count.shape == () and stacked[1].inner_state.count.shape == ()
  assert stacked[1].hyperparams["sparsity"].shape == (3,)
  assert stacked[1].inner_state.masks["w"].shape == (3, 3, 4)
  for a, b in zip(stacking.unstack(stacked, axes, 3), states):
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b))
  later = (states[0][0], states[0][1]._replace(count=jnp.ones((), jnp.int32)))
  with pytest.raises(ValueError, match="same step"):
    stacking.stack([later, states[1]], axes)


# ------------------------------------------------------------------------------ sweep

# One small training config for every sweep test (20 steps; evaluations at 10 and 20), so
# that the compiled programs are shared between the tests.
TINY = [
  "--set",
  "num_train_steps=20",
  "--set",
  "eval_every=10",
  "--set",
  "batch_size=32",
  "--set",
  "eval_batch_size=5000",
]
# The runs compared between tests: two seeds of gradual pruning to 90% (no plots: only the
# tiny sweep checks them).
PAIR = [
  "--set",
  "methods=gradual",
  "--set",
  "sparsities=0.9",
  "--set",
  "seeds=0,1",
  "--set",
  "plots=false",
]
PAIR_RUNS = [train.RunSpec("gradual", 0.9, 0), train.RunSpec("gradual", 0.9, 1)]


def _argv(out, cache_dir, *extra):
  return [
    "--data_dir",
    str(DATA_DIR),
    "--cache_dir",
    str(cache_dir),
    "--output_dir",
    str(out),
    "--no_progress",
    *TINY,
    *extra,
  ]


def _records(out):
  """The run records of a sweep, without their wall-clock times."""
  records = {}
  for path in sorted((out / "runs").glob("*.json")):
    record = json.loads(path.read_text())
    record.pop("train_time_s")
    records[record["name"]] = record
  return records


def _restore_final(out, config, spec):
  """``(state, meta)`` of the final checkpoint of run ``spec``."""
  model = models.get_model(config.model, 10)
  tx = methods.METHODS[spec.method].make_tx(config, spec.sparsity, spec.seed)
  template = train.init_state(model, tx, spec.seed, (28, 28, 1))
  checkpoints = checkpointing.RunCheckpoints(out / "checkpoints" / spec.name)
  try:
    return checkpoints.restore(checkpoints.steps()[-1], template)
  finally:
    checkpoints.close()


def _final_state(out, argv, spec):
  """The whole training state in the final checkpoint of run ``spec`` (NumPy leaves)."""
  _, config = cli.parse_args(argv)
  state, meta = _restore_final(out, config, spec)
  assert meta["step"] == config.num_train_steps
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def _assert_same_states(out_a, out_b, argv):
  """The final params, optimizer states (masks, counters), RNG keys are bitwise equal."""
  for spec in PAIR_RUNS:
    a, b = _final_state(out_a, argv, spec), _final_state(out_b, argv, spec)
    assert len(a) == len(b)
    for x, y in zip(a, b):
      assert x.dtype == y.dtype and np.array_equal(x, y), spec.name


@pytest.fixture(scope="module")
def tiny_sweep(mnist, cache_dir, tmp_path_factory):
  """Every method at 50% and 90%, one seed, run sequentially (one run per program)."""
  out = tmp_path_factory.mktemp("tiny_sweep")
  rc = cli.main(_argv(out, cache_dir, "--set", "sparsities=0.5,0.9"))
  assert rc == 0
  return out


@pytest.fixture(scope="module")
def reference(mnist, cache_dir, tmp_path_factory):
  """`PAIR` trained without interruption, its two seeds as one vmapped program."""
  out = tmp_path_factory.mktemp("reference")
  assert cli.main(_argv(out, cache_dir, *PAIR)) == 0
  return out


@needs_mnist
def test_tiny_sweep_writes_every_output(tiny_sweep):
  out = tiny_sweep
  printed = (out / "log.txt").read_text()
  assert "test acc" in printed and "one_shot" in printed and "gradual" in printed
  assert "compression" in printed and "speedup" in printed and "SNIP" in printed

  for name in (
    "config.json",
    "summary.json",
    "summary.csv",
    "accuracy_vs_sparsity.png",
    "training_curves.png",
    "log.txt",
  ):
    assert (out / name).is_file() and (out / name).stat().st_size > 0, name
  runs = ["dense_seed0"] + [
    f"{m}_s{s}_seed0" for m in ("one_shot", "gradual") for s in ("0.5", "0.9")
  ]
  for run in runs:
    record = json.loads((out / "runs" / f"{run}.json").read_text())
    assert [e["step"] for e in record["evaluations"]] == [10, 20]
    for e in record["evaluations"]:
      assert e["compression_ratio"] == pytest.approx(1 / (1 - e["sparsity"]))
      assert e["theoretical_speedup"] >= 1.0
    lines = (out / "runs" / f"{run}.csv").read_text().splitlines()
    assert lines[0].startswith(
      "step,epoch,loss,train_accuracy,test_loss,test_accuracy,"
      "sparsity,kernel_sparsity,compression_ratio,"
      "theoretical_speedup,sparsity/"
    )
    assert len(lines) == 3
    # A checkpoint at each evaluation (the orbax steps of the run).
    assert sorted(p.name for p in (out / "checkpoints" / run).iterdir() if p.name.isdigit()) == [
      "10",
      "20",
    ]

  summary = json.loads((out / "summary.json").read_text())
  assert len(summary["runs"]) == 5
  assert summary["macs_per_example"] == 266_200
  assert [p["sparsity"] for p in summary["published"]] == [0.0, 0.95, 0.98, 0.918]
  by_run = {r["run"]: r for r in summary["runs"]}
  assert by_run["dense_seed0"]["kernel_sparsity"] < 1e-3  # (a few biases of dead units stay 0)
  assert by_run["dense_seed0"]["theoretical_speedup"] == pytest.approx(1.0, abs=1e-3)
  for method in ("one_shot", "gradual"):
    for s in (0.5, 0.9):
      row = by_run[f"{method}_s{s}_seed0"]
      assert row["kernel_sparsity"] == pytest.approx(s, abs=1e-3)
      assert s - 0.01 < row["sparsity"] <= row["kernel_sparsity"]
      assert 0.0 <= row["test_accuracy"] <= 1.0
      # In an MLP every kernel entry is one multiply-add per example, so the
      # speedup is the inverse kernel density; biases count in the compression only.
      assert row["theoretical_speedup"] == pytest.approx(1 / (1 - row["kernel_sparsity"]))
      assert row["compression_ratio"] == pytest.approx(1 / (1 - row["sparsity"]))
  # Some learning happens even in 20 steps.
  assert by_run["dense_seed0"]["test_accuracy"] > 0.5
  csv_lines = (out / "summary.csv").read_text().splitlines()
  assert len(csv_lines) == 6 and "compression_ratio,theoretical_speedup" in csv_lines[0]


@needs_mnist
def test_same_command_twice_gives_the_same_numbers(reference, cache_dir, tmp_path):
  out = tmp_path / "again"
  assert cli.main(_argv(out, cache_dir, *PAIR)) == 0
  assert _records(out) == _records(reference)
  _assert_same_states(out, reference, _argv(out, cache_dir, *PAIR))


@needs_mnist
def test_killed_run_resumes_to_identical_results(reference, cache_dir, tmp_path, capsys):
  out = tmp_path / "killed"
  # Checkpoints every 5 steps (evaluations every 10) and a kill after step 15: the resumed
  # run also restores the training-loss sums of steps 11-15.
  argv = _argv(out, cache_dir, *PAIR, "--set", "checkpoint_every=5", "--set", "stop_after_step=15")
  assert cli.main(argv) == cli.EXIT_STOPPED
  assert "rerun the same command" in capsys.readouterr().err
  for spec in PAIR_RUNS:
    assert not (out / "runs" / f"{spec.name}.json").exists()
    assert checkpointing.RunCheckpoints(out / "checkpoints" / spec.name).steps() == [10, 15]
  # The same command again resumes from step 15 and finishes.
  assert cli.main(argv) == 0
  assert "resuming from the checkpoint of step 15/20" in capsys.readouterr().out
  assert _records(out) == _records(reference)
  _assert_same_states(out, reference, argv)


@needs_mnist
def test_finished_runs_are_reported_not_retrained(reference, cache_dir, capsys):
  before = _records(reference)
  mtimes = {p: p.stat().st_mtime_ns for p in (reference / "checkpoints").rglob("*")}
  assert cli.main(_argv(reference, cache_dir, *PAIR)) == 0
  printed = capsys.readouterr().out
  assert printed.count("already finished") == 2 and "step     10/20" not in printed
  assert _records(reference) == before
  assert {p: p.stat().st_mtime_ns for p in (reference / "checkpoints").rglob("*")} == mtimes
  # A changed training config does not reuse them.
  assert outputs.read_finished_run(reference, "gradual_s0.9_seed0", "0" * 16) is None


@needs_mnist
def test_dead_neuron_rate_is_logged_without_changing_the_runs(reference, cache_dir, tmp_path):
  out = tmp_path / "dnr"
  argv = _argv(out, cache_dir, *PAIR, "--set", "dead_neurons=256")
  assert cli.main(argv) == 0
  got, ref = _records(out), _records(reference)
  _, config = cli.parse_args(argv)
  model = models.get_model(config.model, 10)
  dataset = data_lib.load_dataset("mnist", data_dir=DATA_DIR, cache_dir=cache_dir, progress=False)
  idx = np.sort(np.random.default_rng(0).permutation(len(dataset.train))[:256])
  probe = evaluation.dead_neuron_probe(model, dataset.train.take(idx)[0])
  for spec in PAIR_RUNS:
    a, b = got[spec.name], ref[spec.name]
    # The training is the reference's: every other number is identical.
    for x, y in zip(a["evaluations"], b["evaluations"]):
      rate = x.pop("dead_neuron_rate")
      assert 0.0 < rate < 1.0 and set(x.pop("dead_neuron_rate_layers")) == {"Dense_0", "Dense_1"}
      assert x == y
    # The final rate is that of the final params on the same 256 training images.
    state, _ = _restore_final(out, config, spec)
    expected = probe(state.params)
    assert a["final"]["dead_neuron_rate"] == expected.total
    assert a["final"]["dead_neuron_rate_layers"] == expected.leaves


def test_dead_neuron_option_rejects_bad_values():
  config = config_lib.load_config()
  model = models.get_model("lenet300_100", 10)

  class Train:
    def __len__(self):
      return 100

  dataset = type("D", (), {"train": Train()})()
  template = type("T", (), {"model_state": {}})()
  config.dead_neurons = 0
  assert train._dead_neuron_probe(config, model, dataset, template) is None
  for n in (-1, 101):
    config.dead_neurons = n
    with pytest.raises(ValueError, match=rf"dead_neurons must be in \[0, 100\].*got {n}"):
      train._dead_neuron_probe(config, model, dataset, template)
  config.dead_neurons = 10
  with_bn = type("T", (), {"model_state": {"batch_stats": {}}})()
  with pytest.raises(ValueError, match=r"\['batch_stats'\] \(batch norm\)"):
    train._dead_neuron_probe(config, model, dataset, with_bn)
  # Off, the field leaves the fingerprints of configs from before it unchanged.
  off = config_lib.load_config()
  with off.unlocked():
    del off["dead_neurons"]
  assert config_lib.fingerprint(off) == config_lib.fingerprint(config_lib.load_config())


def _assert_close_records(a, b, names):
  for name in names:
    ea, eb = a[name]["evaluations"], b[name]["evaluations"]
    assert [e["step"] for e in ea] == [e["step"] for e in eb]
    for x, y in zip(ea, eb):
      for key in (
        "loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "sparsity",
        "theoretical_speedup",
        "compression_ratio",
      ):
        assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (name, key)


@needs_mnist
def test_vmapped_seeds_equal_sequential_runs(reference, cache_dir, tmp_path):
  out = tmp_path / "sequential"
  argv = _argv(out, cache_dir, *PAIR, "--set", "vmap_seeds=false")
  assert cli.main(argv) == 0
  vmapped, sequential = _records(reference), _records(out)
  names = [spec.name for spec in PAIR_RUNS]
  assert [vmapped[n]["vmapped"] for n in names] == [True, True]
  assert [sequential[n]["vmapped"] for n in names] == [False, False]
  # Each seed has its own initialisation and data order...
  assert vmapped[names[0]]["final"]["loss"] != vmapped[names[1]]["final"]["loss"]
  # ...and the vmapped program computes what the sequential runs compute.
  _assert_close_records(vmapped, sequential, names)
  for spec in PAIR_RUNS:
    for x, y in zip(_final_state(reference, argv, spec), _final_state(out, argv, spec)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@needs_mnist
def test_vmapped_sparsities_equal_sequential_runs(tiny_sweep, cache_dir, tmp_path):
  out = tmp_path / "sparsities"
  argv = _argv(
    out,
    cache_dir,
    "--set",
    "methods=gradual",
    "--set",
    "sparsities=0.5,0.9",
    "--set",
    "vmap_sparsities=true",
    "--set",
    "plots=false",
  )
  assert cli.main(argv) == 0
  vmapped, sequential = _records(out), _records(tiny_sweep)
  names = ["gradual_s0.5_seed0", "gradual_s0.9_seed0"]
  assert vmapped[names[0]]["trained_with"] == names
  _assert_close_records(vmapped, sequential, names)


# ------------------------------------------------------------------------------ IMP retraining


def test_imp_retraining_config_and_schedules():
  import optax

  config = config_lib.load_config("mnist_imp_retraining")
  assert tuple(config.methods) == (
    "dense",
    "gradual",
    *("imp_ft", "imp_lrw", "imp_slr", "imp_clr", "imp_llr", "imp_silo", "imp_allr"),
  )
  assert tuple(config.sparsities) == (0.9, 0.95, 0.98) and tuple(config.seeds) == (0, 1, 2)
  # Every method trains num_train_steps steps: IMP's original phase and 4 retraining cycles
  # add up to it.
  lengths = methods.imp_cycle_steps(config)
  assert lengths == [2000, 1000, 1000, 1000, 1000]
  assert sum(lengths) == config.num_train_steps
  config.num_train_steps = 20
  assert methods.imp_cycle_steps(config) == [7, 3, 3, 3, 4]
  config.num_train_steps = 6000
  # The published LeNet-300-100 points: Han et al. and SNIP's Table 1.
  points = outputs.published_points(config)
  assert [(p["sparsity"], round(100 - p["accuracy"], 2)) for p in points] == [
    (0.0, 1.7),
    (0.918, 1.59),
    (0.95, 1.6),
    (0.98, 2.4),
    (0.982, 2.0),
    (0.985, 2.0),
  ]

  lr = {m: methods.METHODS[m].learning_rate(config) for m in config.methods}
  original = optax.cosine_decay_schedule(0.05, 2000, alpha=0.01)  # the original phase
  lr_max, lr_min = 0.05, float(original(1999))
  assert lr_min == pytest.approx(5e-4, rel=1e-3)
  for m in ("imp_ft", "imp_lrw", "imp_slr", "imp_clr"):
    assert float(lr[m](1234)) == pytest.approx(float(original(1234)))
  for start in (2000, 3000, 4000, 5000):  # the retraining cycles
    for j in (0, 99, 100, 500, 999):
      step = start + j
      assert float(lr["imp_ft"](step)) == pytest.approx(lr_min, rel=1e-5)
      assert float(lr["imp_lrw"](step)) == pytest.approx(float(original(1000 + j)), rel=1e-5)
    # SLR and CLR: warm-up over 10% of the cycle, then from lr_max down.
    for m in ("imp_slr", "imp_clr"):
      assert float(lr[m](start)) == 0.0
      assert float(lr[m](start + 100)) == pytest.approx(lr_max)
      assert float(lr[m](start + 999)) < 0.01 * lr_max + 1e-3
    assert float(lr["imp_slr"](start + 550)) == pytest.approx(float(original(1000)), rel=1e-5)
    assert float(lr["imp_clr"](start + 550)) == pytest.approx((lr_max + lr_min) / 2, rel=1e-5)
    # LLR: after the warm-up, linear from lr_max to 0 over the other 900 steps.
    assert float(lr["imp_llr"](start + 550)) == pytest.approx(lr_max / 2, rel=1e-5)
  # SILO (the authors' code) at the plot's sparsity, 90%: each prune removes p = 1 - 0.1^(1/4) of
  # the kept weights; cycle c peaks at 0.04 / (1 + (x / (1 - x))^-5) + 0.03 with x = 1 - (1 - p)^c
  # (the fraction pruned before the cycle's prune), is max_lr / 10 from 50% of the cycle on and
  # max_lr / 100 from 64%.
  p = 1 - 0.1 ** (1 / 4)
  for c, start in enumerate((2000, 3000, 4000, 5000)):
    x = 1 - (1 - p) ** c
    peak = 0.03 + (0.04 / (1 + (x / (1 - x)) ** -5) if x > 0 else 0.0)
    ramp = 1000 * 20_000 / (50 * 563)  # the ramp's length in steps: cut at 500 by the decay
    assert float(lr["imp_silo"](start + 99)) == pytest.approx(peak * 100 / ramp, rel=1e-4)
    assert float(lr["imp_silo"](start + 500)) == pytest.approx(peak / 10, rel=1e-4)
    assert float(lr["imp_silo"](start + 640)) == pytest.approx(peak / 100, rel=1e-4)
  # dense and gradual: the cosine over all the steps.
  assert float(lr["gradual"](3000)) == pytest.approx(
    float(optax.cosine_decay_schedule(0.05, 6000, alpha=0.01)(3000))
  )


@needs_mnist
def test_imp_retraining_sweep_trains_equal_steps(mnist, cache_dir, tmp_path):
  # (Two of the four schedules: each method compiles its own program; the schedules
  # themselves are checked above.)
  out = tmp_path / "imp"
  methods = ("gradual", "imp_ft", "imp_clr")
  argv = _argv(
    out,
    cache_dir,
    "--config",
    "mnist_imp_retraining",
    "--set",
    f"methods={','.join(methods)}",
    "--set",
    "sparsities=0.9",
    "--set",
    "seeds=0",
  )
  assert cli.main(argv) == 0
  records = _records(out)
  assert sorted(records) == sorted(f"{m}_s0.9_seed0" for m in methods)
  for name, record in records.items():
    assert record["num_train_steps"] == 20 and record["final"]["step"] == 20, name
    assert record["final"]["kernel_sparsity"] == pytest.approx(0.9, abs=1e-4), name
  # IMP: cycles of [7, 3, 3, 3, 4] steps, an evaluation at the end of each, 4 global prunes
  # of 1 - 0.1 ** (1/4) of the kept weights (an exact count of the 266,200 kernel weights).
  size = 266_200
  for m in methods[1:]:
    evals = records[f"{m}_s0.9_seed0"]["evaluations"]
    assert [e["step"] for e in evals] == [7, 10, 13, 16, 20]
    assert [e["cycle"] for e in evals] == [0, 1, 2, 3, 4]
    assert all(e["cycle_end"] for e in evals)
    for c, e in enumerate(evals):
      zeros = sum(e["mask_leaf_zeros"].values())
      assert zeros == round((1 - 0.1 ** (c / 4)) * size), (m, c)
      assert e["mask_sparsity"] == pytest.approx(e["planned_sparsity"], abs=1e-6)
      assert (out / "masks" / f"{m}_s0.9_seed0" / f"cycle_{c:02d}.npz").is_file()
  # The schedules differ only after the original phase: the same dense network at step 7.
  at7 = {m: records[f"{m}_s0.9_seed0"]["evaluations"][0]["test_loss"] for m in methods[1:]}
  assert len(set(at7.values())) == 1
  assert len({records[f"{m}_s0.9_seed0"]["final"]["test_loss"] for m in methods[1:]}) == 2
  for name in ("summary.md", "error_vs_sparsity.png", "learning_rates.png", "training_curves.png"):
    assert (out / name).stat().st_size > 0, name
  table = (out / "summary.md").read_text()
  assert "| imp_clr | 90.0% |" in table and "Han et al. 2015" in table


# ------------------------------------------------------------------------------ lottery tickets


def test_lottery_config_reaches_the_papers_sparsities():
  from experiments import lottery

  config = config_lib.load_config("mnist_lth")
  assert config.experiment == "lottery" and config.batch_size == 60
  assert config.optimizer.name == "adam" and config.optimizer.learning_rate == 1.2e-3
  assert (config.lottery.rate, config.lottery.output_rate) == (0.2, 0.1)
  assert config.validation_size == 5000 and tuple(config.seeds) == (0, 1, 2)
  # Frankle & Carbin's P_m: 100, 51.3, 21.1, 7.0, 3.6 and 1.9% of the weights remaining.
  remaining = [
    round(100 * (1 - lottery.planned_sparsity(config, r)), 1) for r in (0, 3, 7, 12, 15, 18)
  ]
  assert remaining == [100.0, 51.3, 21.1, 7.0, 3.6, 1.9]
  assert lottery.reinit_rounds(config) == list(range(1, 19))
  seeds = {lottery.reinit_seed(s, r) for s in range(3) for r in range(1, 19)}
  assert len(seeds) == 54 and not seeds & {0, 1, 2}
  config.reinit_rounds = (0, 3)
  with pytest.raises(ValueError, match="reinit_rounds"):
    lottery.validate(config)


LOTTERY = [
  "--config",
  "mnist_lth",
  "--set",
  "lottery.rounds=3",
  "--set",
  "lottery.round_steps=8",
  "--set",
  "eval_every=4",
  "--set",
  "checkpoint_every=8",
  "--set",
  "seeds=0,1",
  "--set",
  "vmap_seeds=true",
  "--set",
  "validation_size=1000",
]


@needs_mnist
def test_lottery_tickets_and_reinit_control(mnist, cache_dir, tmp_path):
  import jaxprune
  from experiments import lottery

  out = tmp_path / "lottery"
  argv = [
    "--data_dir",
    str(DATA_DIR),
    "--cache_dir",
    str(cache_dir),
    "--output_dir",
    str(out),
    "--no_progress",
    *LOTTERY,
  ]
  assert cli.main(argv) == 0
  _, config = cli.parse_args(argv)
  model = models.get_model("lenet300_100", 10)
  ticket_init = {
    s: train.init_state(model, lottery.ticket_tx(config), s, (28, 28, 1)).params for s in (0, 1)
  }
  shapes = ticket_init[0]

  # The ticket masks of round r: exactly round((1 - 0.8^r) n) pruned in each hidden kernel
  # and round((1 - 0.9^r) n) in the output kernel; nested; different per seed.
  masks = {
    (s, r): train.load_cycle_masks(out / "masks" / f"ticket_seed{s}", r, shapes)
    for s in (0, 1)
    for r in range(4)
  }
  for (s, r), m in masks.items():
    for layer, n, rate in (
      ("Dense_0", 784 * 300, 0.2),
      ("Dense_1", 300 * 100, 0.2),
      ("Dense_2", 100 * 10, 0.1),
    ):
      assert m[layer]["bias"] is None
      kept = m[layer]["kernel"]
      assert int(np.sum(~kept)) == round((1 - (1 - rate) ** r) * n), (s, r, layer)
      if r > 0:
        assert not np.any(kept & ~masks[s, r - 1][layer]["kernel"])
  assert not np.array_equal(masks[0, 3]["Dense_0"]["kernel"], masks[1, 3]["Dense_0"]["kernel"])

  summary = json.loads((out / "summary.json").read_text())
  sparsity_rows = summary["cycle_sparsity"]
  assert [row["round"] for row in sparsity_rows] == [0, 1, 2, 3]
  for row in sparsity_rows:
    assert row["identical_across_seeds"]
    assert row["sparsity"] == pytest.approx(row["planned"], abs=1e-12)
  assert sparsity_rows[3]["zeros"] == {
    "Dense_0/kernel": 114_778,
    "Dense_1/kernel": 14_640,
    "Dense_2/kernel": 271,
  }

  # The control: each seed's run of round r trains that seed's ticket masks (vmapped with
  # the other seed's: the masks are in each run's state) from a different initialisation.
  for s in (0, 1):
    for r in (1, 3):
      spec = train.RunSpec("reinit", lottery.planned_sparsity(config, r), s, tag=f"r{r:02d}")
      template = lottery.reinit_setup(config, model, spec, masks[s, r], (28, 28, 1)).template
      checkpoints = checkpointing.RunCheckpoints(out / "checkpoints" / spec.name)
      try:
        assert checkpoints.steps() == [8]
        final, _ = checkpoints.restore(8, template)
      finally:
        checkpoints.close()
      got = jaxprune.get_masks(final.opt_state)
      for layer in ("Dense_0", "Dense_1", "Dense_2"):
        keep = masks[s, r][layer]["kernel"]
        np.testing.assert_array_equal(np.asarray(got[layer]["kernel"]), keep)
        w = np.asarray(final.params[layer]["kernel"])
        assert np.all(w[~keep] == 0) and np.all(w[keep] != 0)
        w0 = np.asarray(template.params[layer]["kernel"])
        assert np.all(w0[~keep] == 0)
        # A fresh draw, not the ticket's initial weights.
        assert not np.any(w0[keep] == np.asarray(ticket_init[s][layer]["kernel"])[keep])

  # One row per (method, round, seed); early stopping by the validation loss.
  rows = summary["rows"]
  assert len(rows) == 2 * 4 + 2 * 3
  assert {(r["method"], r["round"]) for r in rows} == (
    {("ticket", r) for r in range(4)} | {("reinit", r) for r in (1, 2, 3)}
  )
  assert all(r["early_stop_iteration"] in (4, 8) for r in rows)
  by = {(r["method"], r["round"], r["seed"]): r for r in rows}
  for r in (1, 2, 3):
    assert by["reinit", r, 0]["remaining"] == by["ticket", r, 0]["remaining"]
    assert by["ticket", r, 0]["remaining"] == pytest.approx(1 - lottery.planned_sparsity(config, r))
  ticket = json.loads((out / "runs" / "ticket_seed0.json").read_text())
  assert [e["step"] for e in ticket["evaluations"]] == list(range(4, 33, 4))
  assert all("validation_loss" in e for e in ticket["evaluations"])
  assert len(summary["aggregate"]) == 7
  for name in ("summary.md", "summary.csv", "cycle_sparsity.csv", "lottery.png"):
    assert (out / name).stat().st_size > 0, name


# ------------------------------------------------------------------------------ sparse training


def test_snip_budget_config_is_snips_recipe_at_100k_iterations():
  config = config_lib.load_config("mnist_snip_budget")
  opt = config.optimizer
  assert (opt.name, opt.learning_rate, opt.momentum, opt.weight_decay, config.batch_size) == (
    "sgd",
    0.1,
    0.9,
    5e-4,
    100,
  )
  # 10% of the 60,000 training images held out; lr / 10 every 25,000 of 100,000 iterations.
  assert (config.validation_size, config.num_train_steps) == (6000, 100_000)
  lr = optimizers.make_learning_rate(opt, config.num_train_steps)
  steps = (0, 24_999, 25_000, 49_999, 50_000, 74_999, 75_000, 99_999)
  assert [float(lr(s)) for s in steps] == pytest.approx(
    [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4]
  )
  assert tuple(config.methods) == ("dense", "snip", "synflow", "random_init")
  assert tuple(config.sparsities) == (0.95, 0.98) and tuple(config.seeds) == (0, 1, 2)


def test_issue16_configs_follow_their_recipes():
  vs = config_lib.load_config("mnist_snip_budget_vs")
  base = config_lib.load_config("mnist_snip_budget")
  # The controlled experiment changes the initialiser (and evaluates where SNIP's code saves).
  assert (vs.model, vs.eval_every, tuple(vs.methods)) == (
    "lenet300_100_vs",
    1000,
    ("dense", "snip"),
  )
  assert vs.optimizer.to_dict() == base.optimizer.to_dict()
  assert (vs.num_train_steps, vs.validation_size, vs.batch_size) == (100_000, 6000, 100)
  kernel = models.get_model("lenet300_100_vs", 10).init(
    jax.random.key(0), jnp.zeros((1, 28, 28, 1))
  )
  w = np.asarray(kernel["params"]["Dense_0"]["kernel"])
  # Scale 1 over the fan-in, truncated at 2 std: std sqrt(1/784), nothing beyond 2 std.
  assert abs(w.std() - (1 / 784) ** 0.5) < 0.002 and np.abs(w).max() <= 2 * (1 / 784) ** 0.5 / 0.87

  imp = config_lib.load_config("mnist_imp_vs_gradual")
  assert tuple(imp.methods) == ("dense", "gradual", "imp_slr")
  assert (imp.num_train_steps, imp.validation_size, imp.batch_size) == (15_000, 5000, 128)
  assert imp.num_train_steps * imp.batch_size / 55_000 >= 30  # epochs, in all
  assert methods.imp_cycle_steps(imp) == [5000, 2500, 2500, 2500, 2500]

  rigl = config_lib.load_config("mnist_rigl_budget")
  assert tuple(rigl.methods) == ("rigl", "static", "set", "gradual", "dense")
  assert (rigl.num_train_steps, rigl.batch_size, rigl.validation_size) == (120_000, 100, 0)
  lr = optimizers.make_learning_rate(rigl.optimizer, rigl.num_train_steps)
  assert [float(lr(s)) for s in (0, 44_999, 45_000, 56_999, 57_000, 119_999)] == pytest.approx(
    [0.2, 0.2, 0.2 / 3, 0.2 / 3, 0.2 / 9, 0.2 / 9]
  )
  assert (
    methods.dst_steps(rigl)["rigl_end"] == 50_000 and methods.dst_steps(rigl)["frequency"] == 100
  )
  assert methods.prune_steps(rigl) == {
    "one_shot_step": 60_000,
    "gradual_begin": 2000,
    "gradual_end": 30_000,
    "gradual_frequency": 500,
  }
  assert (rigl.dst.distribution, rigl.distribution, rigl.dst.drop_fraction) == ("erk", "erk", 0.3)


def test_dst_and_at_init_configs():
  dst = config_lib.load_config("mnist_dst")
  assert tuple(dst.methods) == ("dense", "gradual", "static", "set", "rigl", "granet")
  assert tuple(dst.sparsities) == (0.9, 0.95, 0.98) and tuple(dst.seeds) == (0, 1, 2)
  # The main job's optimizer; RigL's T_end at 75% of the steps, its MNIST setting at 98%.
  assert (dst.optimizer.name, dst.optimizer.learning_rate, dst.optimizer.schedule) == (
    "sgd",
    0.05,
    "cosine",
  )
  assert methods.dst_steps(dst) == {
    "frequency": 100,
    "rigl_end": 2250,
    "granet_begin": 300,
    "granet_end": 2100,
  }
  assert (dst.dst.distribution, dst.dst.drop_fraction) == ("erk", 0.3)
  assert methods.prune_steps(dst)["gradual_end"] == 2100  # GraNet prunes over gradual's window

  pai = config_lib.load_config("mnist_at_init")
  # SNIP's recipe: SGD momentum 0.9, lr 0.1 decayed x0.1 at fixed points, batch 100, wd 5e-4.
  opt = pai.optimizer
  assert (opt.name, opt.learning_rate, opt.momentum, opt.weight_decay, pai.batch_size) == (
    "sgd",
    0.1,
    0.9,
    5e-4,
    100,
  )
  lr = optimizers.make_learning_rate(opt, pai.num_train_steps)
  assert [float(lr(s)) for s in (0, 1499, 1500, 2249, 2250, 2999)] == pytest.approx(
    [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
  )
  assert tuple(pai.sparsities) == (0.9, 0.95, 0.98, 0.995)
  at_init = {m for m, method in methods.METHODS.items() if method.masks is not None}
  assert at_init == {
    "snip",
    "grasp",
    "synflow",
    "magnitude_init",
    "random_init",
    "snip_shuffled",
    "prospr",
  }
  assert at_init <= set(pai.methods)
  assert (pai.at_init.distribution, pai.at_init.random_distribution) == ("global", "erk")
  assert pai.at_init.grasp_temperature == 200  # as in the GraSP authors' code
  # The DST methods are never vmapped (their seed and sparsity are not in their state; the N:M
  # methods' pattern is not either, but their seed is: `seeded=False`).
  dst_methods = {m for m, method in methods.METHODS.items() if not method.stacks and method.seeded}
  assert dst_methods == {"static", "set", "rigl", "granet", "gap"}
  dst.vmap_seeds = dst.vmap_sparsities = True
  groups = sweep.run_groups(dst)
  assert all(len(g) == 1 for g in groups if g[0].method in dst_methods)
  assert sum(g[0].method in dst_methods for g in groups) == 36
  assert [len(g) for g in groups if g[0].method == "gradual"] == [9]
  # A sparse method without its config group is a config error.
  pai.methods = ("rigl",)
  with pytest.raises(ValueError, match="'dst'"):
    sweep.sweep_plan(pai)


@needs_mnist
def test_dst_sweep_keeps_sparsity_and_moves_masks(mnist, cache_dir, tmp_path):
  import jaxprune

  out = tmp_path / "dst"
  argv = _argv(
    out,
    cache_dir,
    "--config",
    "mnist_dst",
    "--set",
    "methods=rigl,granet",
    "--set",
    "sparsities=0.9",
    "--set",
    "seeds=0",
    "--set",
    "dst.frequency=4",
    "--set",
    "plots=false",
  )
  assert cli.main(argv) == 0
  _, config = cli.parse_args(argv)
  records = _records(out)
  shapes = [(784, 300), (300, 100), (100, 10)]
  erk = jaxprune.allocation.erk(0.9, shapes)
  model = models.get_model("lenet300_100", 10)
  masks = {}
  # (Two of the four methods: each compiles its own program. static and SET are the same
  # code paths of jaxprune with a fixed mask and random growth.)
  for method in ("rigl", "granet"):
    record = records[f"{method}_s0.9_seed0"]
    assert record["num_train_steps"] == 20 and record["final"]["step"] == 20
    # ERK allocation per kernel (an exact count per kernel: within half a weight).
    for (leaf, target), shape in zip(
      zip(("Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel"), erk), shapes
    ):
      got = record["final"]["leaf_sparsity"][leaf]
      assert got == pytest.approx(target, abs=0.5 / np.prod(shape) + 1e-9), (method, leaf)
    # GraNet starts dense and prunes gradually; RigL is sparse from the start.
    first = record["evaluations"][0]["kernel_sparsity"]
    assert (first < 0.85) if method == "granet" else first == pytest.approx(0.9, abs=1e-4)
    template = train.init_state(model, dst_tx(method, config), 0, (28, 28, 1))
    checkpoints = checkpointing.RunCheckpoints(out / "checkpoints" / f"{method}_s0.9_seed0")
    try:  # the checkpoints of the evaluations at steps 10 and 20
      states = [checkpoints.restore(step, template)[0] for step in (10, 20)]
    finally:
      checkpoints.close()
    masks[method] = [jax.device_get(jaxprune.get_masks(s.opt_state)) for s in states]
    w = np.asarray(states[1].params["Dense_1"]["kernel"])
    assert np.all(w[~masks[method][1]["Dense_1"]["kernel"]] == 0), method
  # Both move their masks after step 10: RigL at steps 12 and T_end = 15 (75% of the 20
  # steps; drop and grow keep the count), GraNet at 10 and its end, 14 (70%).
  for method in ("rigl", "granet"):
    at10, at20 = (m["Dense_0"]["kernel"] for m in masks[method])
    assert np.sum(at10 != at20) > 0, method
  assert np.sum(masks["rigl"][0]["Dense_0"]["kernel"]) == np.sum(
    masks["rigl"][1]["Dense_0"]["kernel"]
  )


def dst_tx(method, config):
  return methods.METHODS[method].make_tx(config, 0.9, 0)


@needs_mnist
def test_at_init_sweep_masks_and_collapse(mnist, cache_dir, tmp_path):
  import optax

  import jaxprune

  out = tmp_path / "at_init"
  argv = _argv(
    out,
    cache_dir,
    "--config",
    "mnist_at_init",
    "--set",
    "methods=snip,magnitude_init",
    "--set",
    "sparsities=0.9,0.995",
    "--set",
    "seeds=0",
    "--set",
    "plots=false",
  )
  assert cli.main(argv) == 0
  _, config = cli.parse_args(argv)
  records = _records(out)
  model = models.get_model("lenet300_100", 10)
  params = train.init_state(
    model, methods.METHODS["dense"].make_tx(config, 0.0, 0), 0, (28, 28, 1)
  ).params
  batch = methods.first_batch(mnist, 32, 0)
  snip = jaxprune.snip(
    params,
    lambda p, b: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, b[0], train=False), b[1]
    ).mean(),
    batch,
    0.9,
  )
  kept = {
    k: int(np.sum(np.asarray(v)))
    for k, v in (
      ("Dense_0/kernel", snip["Dense_0"]["kernel"]),
      ("Dense_1/kernel", snip["Dense_1"]["kernel"]),
      ("Dense_2/kernel", snip["Dense_2"]["kernel"]),
    )
  }
  # The masks are SNIP's on the seed's initialisation and its first batch (exactly 10% of the
  # 266,200 kernel weights kept, globally).
  assert records["snip_s0.9_seed0"]["at_init"]["kept"] == kept
  assert sum(kept.values()) == round(0.1 * 266_200)
  # The shuffle ablation: SNIP's count per kernel, at other positions.
  shuffled = methods.METHODS["snip_shuffled"].masks(
    config, 0.9, methods.AtInit(params, model, batch, 0)
  )
  for layer in ("Dense_0", "Dense_1", "Dense_2"):
    a, b = np.asarray(snip[layer]["kernel"]), np.asarray(shuffled[layer]["kernel"])
    assert a.sum() == b.sum() and np.any(a != b), layer
  for name, record in records.items():
    assert record["final"]["kernel_sparsity"] == pytest.approx(
      record["target_sparsity"], abs=1e-6
    ), name
  # Global magnitude at init empties the first layer at 99.5% (its init scale is the
  # smallest): a collapse, reported per run, in summary.md and in collapse.csv.
  collapsed = records["magnitude_init_s0.995_seed0"]["at_init"]
  assert collapsed["collapsed"] and collapsed["empty_leaves"] == ["Dense_0/kernel"]
  assert not records["snip_s0.9_seed0"]["at_init"]["collapsed"]
  assert records["magnitude_init_s0.995_seed0"]["final"]["test_accuracy"] < 0.2
  table = (out / "summary.md").read_text()
  assert "| magnitude_init | 99.5% | 1/1 | 0 |" in table
  lines = (out / "collapse.csv").read_text().splitlines()
  assert len(lines) == 5 and lines[0].startswith("method,target_sparsity,seed,collapsed")
  # The pruned weights are zero from the start and stay zero.
  spec = "snip_s0.9_seed0"
  checkpoints = checkpointing.RunCheckpoints(out / "checkpoints" / spec)
  template = train.init_state(
    model,
    jaxprune.static_sparse(masks=snip, inner=optimizers.make_optimizer(config.optimizer, 20)),
    0,
    (28, 28, 1),
  )
  try:
    final, _ = checkpoints.restore(20, template)
  finally:
    checkpoints.close()
  w = np.asarray(final.params["Dense_0"]["kernel"])
  assert np.all(w[~np.asarray(snip["Dense_0"]["kernel"])] == 0)
  assert records[spec]["evaluations"][0]["kernel_sparsity"] == pytest.approx(0.9, abs=1e-6)


# ------------------------------------------------------------------------------ grain pipeline
# data_pipeline="grain": each run streams its batches (experiments.pipeline) and trains bit for
# bit what the in-memory path trains (the `reference` runs), interrupted and resumed or not.

GRAIN = ["--set", "data_pipeline=grain"]


def test_the_option_defaults_to_memory_and_keeps_fingerprints():
  config = config_lib.load_config()
  assert config.data_pipeline == "memory" and train.data_pipeline(config) == "memory"
  base = config_lib.fingerprint(config)
  # Both pipelines compute the same runs: checkpoints and finished runs are shared between them,
  # and a config without the field (written before it existed) has the same fingerprint.
  config.data_pipeline = "grain"
  assert config_lib.fingerprint(config) == base and train.data_pipeline(config) == "grain"
  with config.unlocked():
    del config["data_pipeline"]
  assert config_lib.fingerprint(config) == base and train.data_pipeline(config) == "memory"
  config.data_pipeline = "disk"
  with pytest.raises(ValueError, match="data_pipeline must be one of memory, grain, got 'disk'"):
    train.data_pipeline(config)


def test_grain_refuses_a_validation_split(capsys):
  # mnist_lth holds validation_size=5000 examples out of the training split.
  assert cli.main(["--config", "mnist_lth", *GRAIN, "--no_progress"]) == 2
  err = capsys.readouterr().err
  assert "data_pipeline='grain'" in err and "validation_size=5000" in err


@needs_mnist
def test_grain_run_equals_the_in_memory_run(reference, cache_dir, tmp_path, monkeypatch):
  # Chunks of at most 4 steps (evaluations every 10): the chunks of the two paths differ too.
  monkeypatch.setattr(train, "GRAIN_CHUNK_BYTES", 4 * len(PAIR_RUNS) * 32 * 28 * 28 * 4)
  out = tmp_path / "grain"
  argv = _argv(out, cache_dir, *PAIR, *GRAIN)
  assert cli.main(argv) == 0
  # The training split was left on disk: only the test split went to the device.
  [(dataset, data)] = [
    (d, x) for d, x in runner._LOADED.values() if isinstance(d.train, data_lib.SourceSplit)
  ]
  assert len(dataset.train) == 60_000
  assert data.train_images is None and dataset.image_shape == (28, 28, 1)
  assert _records(out) == _records(reference)
  _assert_same_states(out, reference, argv)
  # What SNIP and GraSP score on (methods.first_batch) is read from the split on disk, the same.
  memory = data_lib.load_dataset("mnist", data_dir=DATA_DIR, cache_dir=cache_dir, progress=False)
  for x, y in zip(methods.first_batch(dataset, 32, 1), methods.first_batch(memory, 32, 1)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@needs_mnist
def test_interrupted_grain_run_resumes_to_the_same_result(reference, cache_dir, tmp_path, capsys):
  out = tmp_path / "killed"
  argv = _argv(
    out, cache_dir, *PAIR, *GRAIN, "--set", "checkpoint_every=5", "--set", "stop_after_step=15"
  )
  assert cli.main(argv) == cli.EXIT_STOPPED
  for spec in PAIR_RUNS:
    assert checkpointing.RunCheckpoints(out / "checkpoints" / spec.name).steps() == [10, 15]
  capsys.readouterr()
  assert cli.main(argv) == 0
  assert "resuming from the checkpoint of step 15/20" in capsys.readouterr().out
  assert _records(out) == _records(reference)
  _assert_same_states(out, reference, argv)


# ------------------------------------------------------------------------------ data parallel
# data_parallel=true (and every run over several processes) splits each batch over the devices
# and keeps the state replicated (experiments.distributed): the runs compute what one device
# computes, up to the order of the gradient's sums.

SWEEP_WORKER = Path(__file__).with_name("sweep_worker.py")


def _assert_like_reference(out, reference, argv):
  """The runs in ``out`` are `reference`'s up to float32 rounding: the same masks, the same
  exact zeros, accuracies and losses within 1e-5 (relative)."""
  got, want = _records(out), _records(reference)
  assert got.keys() == want.keys() == {s.name for s in PAIR_RUNS}
  for name in got:
    a, b = got[name]["final"], want[name]["final"]
    assert a["zeros"] == b["zeros"] and a["leaf_sparsity"] == b["leaf_sparsity"], name
    for key in ("test_accuracy", "test_loss", "loss"):
      assert a[key] == pytest.approx(b[key], rel=1e-5), (name, key)
    assert [e["step"] for e in got[name]["evaluations"]] == [10, 20]
  _, config = cli.parse_args(argv)
  for spec in PAIR_RUNS:
    a, _ = _restore_final(out, config, spec)
    b, _ = _restore_final(reference, config, spec)
    masks_a, masks_b = jaxprune.get_masks(a.opt_state), jaxprune.get_masks(b.opt_state)
    for x, y in zip(jax.tree.leaves(masks_a), jax.tree.leaves(masks_b)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), spec.name)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
      x, y = np.asarray(x), np.asarray(y)
      np.testing.assert_array_equal(x == 0, y == 0, spec.name)
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6, err_msg=spec.name)


@needs_mnist
def test_data_parallel_run_on_eight_devices_resumes_on_one_like_one_device(
  reference, cache_dir, tmp_path, capsys
):
  # 10 steps data-parallel over the 8 devices (memory path), then the rest on one device from
  # the checkpoint of step 10: the runs are one device's (the masks, zeros, losses).
  out = tmp_path / "dp"
  argv = _argv(out, cache_dir, *PAIR)
  parallel = [*argv, "--set", "data_parallel=true", "--set", "stop_after_step=10"]
  assert cli.main(parallel) == cli.EXIT_STOPPED
  config = cli.parse_args(parallel)[1]
  placement = distributed.data_parallel(config)
  assert placement.mesh.shape == {"data": 8}
  [data] = [x for k, (_, x) in runner._LOADED.items() if k[-1] == placement.mesh]
  for array in (data.train_images, data.test.images, data.test.labels):
    assert array.sharding.is_fully_replicated and len(array.devices()) == 8
  capsys.readouterr()
  assert cli.main(argv) == 0
  assert "resuming from the checkpoint of step 10/20" in capsys.readouterr().out
  _assert_like_reference(out, reference, argv)


def test_data_parallel_step_splits_the_batch_and_all_reduces():
  placement = distributed.DataParallel(
    jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  )
  model = models.get_model("mlp_40_40", 10)
  tx = optax.chain(optax.sgd(0.1), jaxprune.magnitude_pruning(0.5, distribution="global"))
  state = train.init_state(model, tx, 0, (4, 4, 1))
  rng = np.random.default_rng(0)
  images = rng.standard_normal((2, 16, 4, 4, 1)).astype(np.float32)  # a chunk of 2 batches
  labels = rng.integers(0, 10, (2, 16)).astype(np.int32)
  one = jax.jit(train.make_train_fn(model, tx))(state, None, 2, images, labels)
  fn = jax.jit(train.make_train_fn(model, tx, placement=placement))
  args = (
    placement.replicate(state),
    None,
    np.int32(2),
    placement.global_batch(images, 1),
    placement.global_batch(labels, 1),
  )
  compiled = fn.lower(*args).compile().as_text()
  assert "all-reduce" in compiled
  assert "f32[2,16,4,4,1]" not in compiled.split("ENTRY")[-1]  # each device holds 2 rows
  split = fn(*args)
  for leaf in jax.tree.leaves(split):
    assert leaf.sharding.is_fully_replicated and len(leaf.devices()) == 8
  for x, y in zip(jax.tree.leaves(split), jax.tree.leaves(one)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_data_parallel_batch_must_split_over_the_devices(capsys):
  assert cli.main(["--set", "data_parallel=true", "--set", "batch_size=60", "--no_progress"]) == 2
  err = capsys.readouterr().err
  assert "batch_size 60 does not split over the 8 devices" in err
  assert cli.main(["--config", "mnist_lth", "--set", "data_parallel=true"]) == 2
  assert "data_parallel (and --distributed) train the sweep only" in capsys.readouterr().err


@needs_mnist
def test_two_processes_train_the_grain_sweep_as_one_device(reference, cache_dir, tmp_path):
  """Two processes of 4 CPU devices (gloo) train `PAIR` from grain, each reading its half of every
  batch; stopped after step 10 and resumed from the checkpoint both wrote, the runs equal one
  device's, and only process 0 wrote the outputs."""
  out = tmp_path / "two"
  argv = _argv(out, cache_dir, *PAIR, *GRAIN)
  outputs_ = run_workers(SWEEP_WORKER, *argv)
  for i, text in enumerate(outputs_):
    assert f"exit {cli.EXIT_STOPPED} 0" in text, f"process {i}:\n{text[-4000:]}"
  # Process 0 printed and logged; process 1 was silent.
  assert "resuming from the checkpoint of step 10/20" in outputs_[0]
  assert "stopped after step 10" in outputs_[0]
  for line in ("test acc", "resuming", "stopped after step"):
    assert line not in outputs_[1], line
  assert (out / "log.txt").read_text().count("resuming from the checkpoint of step 10/20") == 1
  _assert_like_reference(out, reference, argv)
