"""Two processes on localhost form one mesh (CPU collectives over gloo): the pruners, the
summaries and the mask analysis work on arrays that span processes. The work of each process is
tests/multiprocess_worker.py; this test launches both and reads what they report."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("multiprocess_worker.py")
PROCESSES = 2


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_prune_like_one_device():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the worker sets its own
  env["JAX_PLATFORMS"] = "cpu"
  port = _free_port()
  procs = [
    subprocess.Popen(
      [sys.executable, str(WORKER), str(i), str(PROCESSES), str(port)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(PROCESSES)
  ]
  outputs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=400)
      outputs.append(out)
  finally:
    for p in procs:
      p.kill()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"
    reported = {tuple(line.split()[1:3]) for line in out.splitlines() if line.startswith("ok ")}
    assert reported == {
      (mode, name) for mode in ("auto", "explicit") for name in ("global_packed", "gradual_erk")
    }, out[-4000:]
