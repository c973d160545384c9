"""Where the tests find the MNIST that is prepared for tfds beside the checkout."""

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "tensorflow_datasets"


def require_mnist() -> Path:
  """The prepared data directory; fails (never skips) when MNIST is missing, so a run without the
  data cannot pass with its data tests unexecuted."""
  if not (DATA_DIR / "mnist").is_dir():
    pytest.fail(
      f"MNIST is not prepared in {DATA_DIR}: the tests read it from "
      "../shared/tensorflow_datasets beside the checkout (see the README there)."
    )
  return DATA_DIR


def tiny_image_data(n: int = 256, seed: int = 0):
  """A separable two-class problem of 12x12 images (class 1: the left half brighter), ``n``
  training and 128 test images, as `experiments.structured`'s data (for the runners' tests)."""
  import jax.numpy as jnp
  import numpy as np

  from experiments import structured as st

  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n + 128, 12, 12, 1)).astype(np.float32)
  y = (x[:, :, :6].mean((1, 2, 3)) > x[:, :, 6:].mean((1, 2, 3))).astype(np.int32)
  x[:, :, :6] += 0.5 * (2 * y[:, None, None, None] - 1)
  return st._Data(
    jnp.asarray(x[:n]), jnp.asarray(y[:n]), jnp.asarray(x[n:]), jnp.asarray(y[n:]), num_classes=2
  )
