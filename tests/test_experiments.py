"""Tests of the experiments package: models, MNIST data, configs/CLI and a tiny sweep.

MNIST is read from ``../shared/tensorflow_datasets`` next to the repository (the prepared
offline copy); the data tests are skipped when it is not there. The split is decoded once
per test session into a temporary cache directory.
"""

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import data as data_lib
from experiments import models, runner

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "tensorflow_datasets"

needs_mnist = pytest.mark.skipif(
    not (DATA_DIR / "mnist").is_dir(), reason=f"MNIST is not prepared in {DATA_DIR}"
)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jaxprune_cache")


@pytest.fixture(scope="session")
def mnist(cache_dir):
    if not (DATA_DIR / "mnist").is_dir():
        pytest.skip(f"MNIST is not prepared in {DATA_DIR}")
    return data_lib.load_dataset("mnist", data_dir=DATA_DIR, cache_dir=cache_dir,
                                 progress=False)


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
    v = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype),
                     shapes)
    logits, new_state = jax.jit(
        lambda v, x: resnet.apply(v, x, train=True, mutable=["batch_stats"])
    )(v, x)
    assert logits.shape == (4, 10) and bool(jnp.all(jnp.isfinite(logits)))
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), v["batch_stats"],
                           new_state["batch_stats"])
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
    for split in (mnist.train, mnist.test):
        assert set(np.unique(split.labels)) == set(range(10))
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
    np.testing.assert_allclose(data_lib.normalize(images[:5], (0.1307,), (0.3081,)),
                               mnist.test.images[:5])


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


# ------------------------------------------------------------------------------ config


def test_default_config():
    config = runner.load_config()
    assert config.model == "lenet300_100" and config.dataset == "mnist"
    assert config.data_dir is None
    assert tuple(config.sparsities) == (0.8, 0.9, 0.95, 0.98)
    assert tuple(config.methods) == ("dense", "one_shot", "gradual")
    assert config.optimizer.name == "sgd" and config.optimizer.momentum == 0.9
    assert config.output_dir == "results/mnist_lenet300"
    assert len(runner.sweep_plan(config)) == 9


def test_config_overrides():
    args, config = runner.parse_args([
        "--config", "mnist_lenet300",
        "--config.batch_size=64",
        "--config.optimizer.learning_rate", "0.1",
        "--set", "sparsities=0.5,0.75",
        "--set", "methods=gradual",
        "--set", "progress=false",
        "--data_dir", "/some/where",
    ])
    assert config.batch_size == 64 and isinstance(config.batch_size, int)
    assert config.optimizer.learning_rate == 0.1
    assert tuple(config.sparsities) == (0.5, 0.75)
    assert tuple(config.methods) == ("gradual",)
    assert config.progress is False
    assert config.data_dir == "/some/where"
    assert runner.sweep_plan(config) == [("gradual", 0.5, 0), ("gradual", 0.75, 0)]
    # A config given as a file path works too.
    path = Path(runner.__file__).parent / "configs" / "mnist_lenet300.py"
    assert runner.load_config(str(path)).model == "lenet300_100"


@pytest.mark.parametrize(
    "argv", [["--config.no_such_field=1"], ["--set", "batch_size=1.5"], ["--bogus"],
             ["--set", "optimizer=3"]],
)
def test_bad_overrides_exit(argv, capsys):
    with pytest.raises(SystemExit):
        runner.parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_unknown_method_rejected():
    config = runner.load_config()
    config.methods = ("dense", "lottery")
    with pytest.raises(ValueError, match="lottery"):
        runner.sweep_plan(config)


# ------------------------------------------------------------------------------ sweep


@needs_mnist
def test_tiny_sweep_writes_every_output(mnist, cache_dir, tmp_path, capsys):
    out = tmp_path / "results"
    rc = runner.main([
        "--data_dir", str(DATA_DIR), "--cache_dir", str(cache_dir),
        "--output_dir", str(out), "--no_progress",
        "--set", "num_train_steps=20", "--set", "eval_every=10",
        "--set", "batch_size=32", "--set", "eval_batch_size=5000",
        "--set", "sparsities=0.5,0.9",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "test acc" in printed and "one_shot" in printed and "gradual" in printed

    for name in ("config.json", "summary.json", "summary.csv", "accuracy_vs_sparsity.png",
                 "training_curves.png", "log.txt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    runs = ["dense_seed0"] + [f"{m}_s{s}_seed0" for m in ("one_shot", "gradual")
                              for s in ("0.5", "0.9")]
    for run in runs:
        record = json.loads((out / "runs" / f"{run}.json").read_text())
        assert [e["step"] for e in record["evaluations"]] == [10, 20]
        lines = (out / "runs" / f"{run}.csv").read_text().splitlines()
        assert lines[0].startswith("step,loss,train_accuracy,test_loss,test_accuracy,sparsity")
        assert any(col.startswith("sparsity/") for col in lines[0].split(","))
        assert len(lines) == 3

    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 5
    by_run = {r["run"]: r for r in summary["runs"]}
    assert by_run["dense_seed0"]["kernel_sparsity"] < 1e-3  # (a few biases of dead units stay 0)
    for method in ("one_shot", "gradual"):
        for s in (0.5, 0.9):
            row = by_run[f"{method}_s{s}_seed0"]
            assert row["kernel_sparsity"] == pytest.approx(s, abs=1e-3)
            assert s - 0.01 < row["sparsity"] <= row["kernel_sparsity"]
            assert 0.0 <= row["test_accuracy"] <= 1.0
    # Some learning happens even in 20 steps.
    assert by_run["dense_seed0"]["test_accuracy"] > 0.5
    assert len((out / "summary.csv").read_text().splitlines()) == 6
