"""One of the two processes of tests/test_gpt_example.py's two-process run (not a test module).

Usage: python gpt_worker.py PROCESS_ID NUM_PROCESSES PORT

Each process has 4 CPU devices; together they form the example's 4 x 2 ``data x model`` mesh, and
each feeds its rows of every global batch. Process 0 prints one JSON line: the validation losses
and, per kernel, the number of weights kept and of exact zeros in the params.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, nproc, port = (int(a) for a in sys.argv[1:4])
jax.distributed.initialize(f"localhost:{port}", num_processes=nproc, process_id=pid)

import jax.numpy as jnp  # noqa: E402

import jaxprune  # noqa: E402
from experiments import gpt  # noqa: E402

result = gpt.train(gpt.CONFIGS["tiny"], methods=("pruned",), model_axis=2, progress=False)
run = result["runs"]["pruned"]
params = dict(jaxprune.leaves.named_leaves(run.params))
masks = dict(jaxprune.leaves.named_leaves(jaxprune.get_masks(run.state)))
report = {
  "mesh": dict(result["mesh"].shape),
  "val_loss": [h["val_loss"] for h in run.history],
  "kept": {k: int(jnp.sum(m)) for k, m in masks.items()},
  "zeros": {k: int(jnp.sum(params[k] == 0)) for k in masks},
}
if jax.process_index() == 0:
  print("report " + json.dumps(report), flush=True)
