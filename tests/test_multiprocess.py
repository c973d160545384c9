"""Two processes on localhost form one mesh (CPU collectives over gloo): the pruners, the
summaries and the mask analysis work on arrays that span processes. The work of each process is
tests/multiprocess_worker.py; this test launches both and reads what they report."""

from __future__ import annotations

from pathlib import Path

from processes import run_workers

WORKER = Path(__file__).with_name("multiprocess_worker.py")
PROCESSES = 2


def test_two_processes_prune_like_one_device():
  outputs = run_workers(WORKER, processes=PROCESSES, timeout=400)
  for out in outputs:
    reported = {tuple(line.split()[1:3]) for line in out.splitlines() if line.startswith("ok ")}
    assert reported == {
      (mode, name) for mode in ("auto", "explicit") for name in ("global_packed", "gradual_erk")
    }, out[-4000:]
