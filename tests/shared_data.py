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
