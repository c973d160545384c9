"""One process of the two-process sweep of tests/test_experiments.py (not a test module itself).

Usage: python sweep_worker.py PROCESS_ID NUM_PROCESSES PORT CLI_ARGS...

Each process has 4 CPU devices. The sweep given by CLI_ARGS runs through ``python -m experiments``'
command line with ``--distributed`` twice in this process: stopped after the checkpoint of step 10
(``stop_after_step``), then resumed to the end. Prints ``exit <first> <second>``: the exit codes.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

from experiments import cli  # noqa: E402

pid, nproc, port = sys.argv[1:4]
argv = [
  *sys.argv[4:],
  "--distributed",
  "--coordinator",
  f"localhost:{port}",
  "--num_processes",
  nproc,
  "--process_id",
  pid,
]
first = cli.main([*argv, "--set", "stop_after_step=10"])
second = cli.main(argv)
print(f"exit {first} {second}", flush=True)
