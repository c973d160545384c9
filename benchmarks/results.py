"""Writing a benchmark's rows as JSON, with the versions and arguments that produced them."""

from __future__ import annotations

import argparse
import json
import os
import platform

import jax


def write_results(path: str, args: argparse.Namespace, rows: list[dict]) -> None:
  """Writes ``{"meta", "args", "rows"}`` to ``path`` (its directory is created)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  meta = {"jax": jax.__version__, "backend": jax.default_backend(), "machine": platform.machine()}
  with open(path, "w") as f:
    json.dump({"meta": meta, "args": vars(args), "rows": rows}, f, indent=1)
