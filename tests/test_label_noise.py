"""Symmetric label noise of the experiment data pipeline (He et al. 2022)."""

import numpy as np
import pytest

from experiments import data as data_lib


def test_noise_rate_and_uniform_other_classes():
  labels = np.arange(200_000) % 10
  noisy = data_lib.symmetric_label_noise(labels, 0.4, 10, seed=3)
  changed = noisy != labels
  assert noisy.dtype == np.int32 and labels.dtype != np.int32  # a new array
  assert abs(changed.mean() - 0.4) < 0.005
  # A flipped label is never its own class, and every other class is equally likely.
  offsets = (noisy[changed] - labels[changed]) % 10
  assert offsets.min() == 1 and offsets.max() == 9
  counts = np.bincount(offsets, minlength=10)[1:] / changed.sum()
  np.testing.assert_allclose(counts, 1 / 9, atol=0.006)
  np.testing.assert_array_equal(noisy, data_lib.symmetric_label_noise(labels, 0.4, 10, seed=3))
  assert (noisy != data_lib.symmetric_label_noise(labels, 0.4, 10, seed=4)).any()


def test_extremes_and_errors():
  labels = np.array([0, 1, 2, 3, 4])
  np.testing.assert_array_equal(data_lib.symmetric_label_noise(labels, 0.0, 5, 0), labels)
  assert (data_lib.symmetric_label_noise(labels, 1.0, 5, 0) != labels).all()
  with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], got 1.5"):
    data_lib.symmetric_label_noise(labels, 1.5, 5, 0)
  with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got \[0, 4\]"):
    data_lib.symmetric_label_noise(labels, 0.2, 3, 0)


def test_with_label_noise_changes_the_training_labels_only():
  train = data_lib.Split(np.zeros((1000, 2, 2, 1), np.float32), np.arange(1000) % 10)
  test = data_lib.Split(np.zeros((10, 2, 2, 1), np.float32), np.arange(10))
  dataset = data_lib.Dataset("toy", "1", train, test, 10, (0.0,), (1.0,))
  noisy = data_lib.with_label_noise(dataset, 0.2, seed=0)
  assert noisy.test is test and noisy.train.images is train.images
  assert 0.15 < (noisy.train.labels != train.labels).mean() < 0.25
  np.testing.assert_array_equal(train.labels, np.arange(1000) % 10)  # the original is unchanged
  assert data_lib.with_label_noise(dataset, 0.0, seed=0) is dataset
