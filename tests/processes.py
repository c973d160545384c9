"""Launching the worker processes of the multi-process tests (two CPU processes on localhost)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_workers(worker: Path, *args: str, processes: int = 2, timeout: float = 600) -> list[str]:
  """Runs ``python WORKER PROCESS_ID PROCESSES PORT *args`` once per process and waits for all.

  Each worker sets its own ``XLA_FLAGS`` (its device count) and joins the others through
  ``jax.distributed`` on a free localhost port; the repository root is on its ``PYTHONPATH``.

  Returns:
    Every process's output (stdout and stderr), in process order.

  Raises:
    AssertionError: if a process exits with an error (its output's end is in the message).
  """
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the worker sets its own
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])  # experiments/
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [
    subprocess.Popen(
      [sys.executable, str(worker), str(i), str(processes), str(port), *args],
      env=env,
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(processes)
  ]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=timeout)[0])
  finally:
    for p in procs:
      p.kill()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"
  return outputs
