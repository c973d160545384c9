"""Test configuration: eight simulated CPU devices (so sharding is tested everywhere) and strict JAX."""

import os

# Must happen before JAX initialises its backends.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()
# The tests run tiny arrays through many programs, so XLA's compile time dominates them: without
# LLVM's optimisation passes the suite compiles about 30% faster (measured on tests/test_engine.py:
# 97 s -> 67 s). Results are the same (no fast-math either way); only the generated code is slower,
# which the tiny arrays do not feel. Subprocesses the tests start inherit the flag. Set the level
# in XLA_FLAGS yourself to test with optimised code.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

import jax  # noqa: E402

# Strict, the way equinox tests: implicit rank promotion raises, and warnings jaxprune issues
# (jaxprune.checks.JaxpruneWarning) are errors unless a test expects them (pyproject.toml). Strict
# dtype promotion is not set: optax's own Adam (bias correction `decay ** count`) fails under it.
jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402
from shared_data import require_mnist  # noqa: E402


@pytest.fixture
def mnist_required():
  """Use as ``@pytest.mark.usefixtures("mnist_required")`` on tests that read the prepared MNIST."""
  return require_mnist()
