"""jaxprune type-checks: mypy, with the settings of pyproject.toml's [tool.mypy], finds no error."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_mypy():
  # What is checked (`files = ["jaxprune"]`) and how are pyproject.toml's. A first run analyses jax
  # too (about 40 s); later runs reuse mypy's cache (.mypy_cache/, which mypy keeps out of git).
  result = subprocess.run(
    [sys.executable, "-m", "mypy", "--config-file", "pyproject.toml"],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert "Success: no issues found" in result.stdout, result.stdout
