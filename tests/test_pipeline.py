"""The grain pipeline streams the in-memory path's batches, restarts from its state, and splits each
global batch among processes."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds
from shared_data import require_mnist

from experiments import data as data_lib
from experiments import pipeline

BATCH, SEED = 64, 3
PER_EPOCH = 60_000 // BATCH  # 937 full batches; the last 32 examples of each epoch are dropped


@pytest.fixture(scope="module")
def mnist_dir():
  return str(require_mnist())


def stream(mnist_dir, **kwargs):
  kwargs = {"batch_size": BATCH, "seed": SEED, "threads": 2, "prefetch": 2, **kwargs}
  return pipeline.train_stream("mnist", data_dir=mnist_dir, **kwargs)


def expected(mnist_dir, position, count):
  """The in-memory path's batches, decoded independently (tfds' own image decoding)."""
  source = tfds.data_source("mnist", split="train", data_dir=mnist_dir, download=False)
  indices, after = data_lib.batch_indices(
    len(source), BATCH, seed=SEED, position=position, count=count
  )
  mean, std = data_lib.NORMALIZATION["mnist"]
  out = []
  for idx in indices:
    records = [source[int(i)] for i in idx]
    images = np.stack([r["image"] for r in records])
    out.append((data_lib.normalize(images, mean, std), np.array([r["label"] for r in records])))
  return out, after


def test_batches_equal_the_in_memory_order_across_an_epoch_end(mnist_dir):
  position = (2, PER_EPOCH - 2)
  s = stream(mnist_dir, position=position)
  got = [next(s) for _ in range(4)]
  want, after = expected(mnist_dir, position, 4)
  for (x, y), (wx, wy) in zip(got, want):
    assert x.shape == (BATCH, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(x, wx)
    np.testing.assert_array_equal(y, wy)
  assert s.position(4) == after == (3, 2)


def test_state_restores_the_same_continuation(mnist_dir):
  s = stream(mnist_dir, position=(0, 5))
  for _ in range(2):
    next(s)
  state = s.get_state()
  rest = [next(s) for _ in range(3)]
  resumed = stream(mnist_dir, position=(0, 5))
  resumed.set_state(state)
  for (x, y), (rx, ry) in zip(rest, [next(resumed) for _ in range(3)]):
    np.testing.assert_array_equal(x, rx)
    np.testing.assert_array_equal(y, ry)
  # A position is a restart point too: 2 batches after (0, 5) is (0, 7).
  np.testing.assert_array_equal(next(stream(mnist_dir, position=(0, 7)))[1], rest[0][1])
  with pytest.raises(ValueError, match="starting at batch 5, this one starts at batch 0"):
    stream(mnist_dir).set_state(state)


def test_each_process_reads_its_rows_of_the_global_batch(mnist_dir):
  [(x, y)], _ = expected(mnist_dir, (1, 0), 1)
  parts = [
    next(stream(mnist_dir, position=(1, 0), process_index=p, process_count=4)) for p in range(4)
  ]
  assert all(px.shape == (BATCH // 4, 28, 28, 1) for px, _ in parts)
  np.testing.assert_array_equal(np.concatenate([px for px, _ in parts]), x)
  np.testing.assert_array_equal(np.concatenate([py for _, py in parts]), y)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"batch_size": 60, "process_count": 7, "process_index": 0}, "60 does not split among 7"),
    ({"process_count": 2, "process_index": 2}, r"process_index 2 is not in \[0, 2\)"),
    ({"position": (0, PER_EPOCH)}, r"position \(0, 937\) is outside an epoch of 937 batches"),
    ({"position": (-1, 0)}, "outside an epoch"),
  ],
)
def test_bad_arguments_name_the_value(mnist_dir, kwargs, match):
  with pytest.raises(ValueError, match=match):
    stream(mnist_dir, **kwargs)
