"""Speed of one vmapped 3-seed run against 3 sequential runs of the same config.

Run from the repository root::

    python -m benchmarks.vmap_seeds                 # 3 seeds of gradual pruning to 90%
    python -m benchmarks.vmap_seeds --steps 200 --repeats 3 --method dense
    python -m benchmarks.vmap_seeds --over sparsities   # 3 sparsities of one seed instead
    python -m benchmarks.vmap_seeds --out           # also write benchmarks/results/vmap_seeds.json

Both modes train the runs of the main job's config (``experiments/configs/mnist_lenet300.py``:
LeNet-300-100 on MNIST, batch 128, SGD with momentum, global magnitude pruning) with the
step count reduced to ``--steps`` (evaluations at every third of it, one checkpoint at the
end), through `experiments.train.train_runs`, i.e. exactly what ``python -m experiments``
does for a group of runs:

* ``sequential``: ``train_runs`` once per run, one after another (one compiled program,
  reused by every run);
* ``vmapped``: ``train_runs`` once for all the runs, as one ``jax.vmap``-ped program over
  their stacked states (each run with its own initialisation, data order and sparsity).

The first round of each mode includes its compilation and is reported separately ("cold";
the process's one-time costs and the evaluation programs are paid before, by one-step dense
runs).
Then ``--repeats`` rounds alternate the two modes (sequential, vmapped, in a shuffled order
per round); a round's speedup is its sequential time over its vmapped time, and the
reported speedup is the median over rounds (with the min-max range), measured in the same
process so that load changes on a shared machine affect both. Finally the per-run results
of the two modes are compared (bitwise, else the largest relative difference).

MNIST must be prepared (``../shared/tensorflow_datasets`` or ``--data_dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax

from experiments import config as config_lib
from experiments import data as data_lib
from experiments import evaluation, methods, models, train

RESULTS = Path(__file__).resolve().parent / "results" / "vmap_seeds.json"


def _parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    prog="python -m benchmarks.vmap_seeds", description=__doc__.split("\n\n")[0]
  )
  p.add_argument("--steps", type=int, default=300, help="training steps per run (300)")
  p.add_argument("--runs", type=int, default=3, help="number of runs (3)")
  p.add_argument(
    "--over",
    choices=("seeds", "sparsities"),
    default="seeds",
    help="what the runs differ in (seeds)",
  )
  p.add_argument(
    "--method", choices=list(methods.METHODS), default="gradual", help="pruning method (gradual)"
  )
  p.add_argument(
    "--sparsity", type=float, default=0.9, help="target sparsity with --over seeds (0.9)"
  )
  p.add_argument("--repeats", type=int, default=3, help="warm rounds (3)")
  p.add_argument("--data_dir", default=None, help="TFDS data directory")
  p.add_argument(
    "--out",
    nargs="?",
    const=str(RESULTS),
    default=None,
    help=f"write the results as JSON (default path: {RESULTS})",
  )
  return p.parse_args(argv)


def _config(args: argparse.Namespace, output_dir: str):
  config = config_lib.load_config("mnist_lenet300")
  with config.unlocked():
    config.num_train_steps = int(args.steps)
    config.eval_every = max(1, int(args.steps) // 3)
    config.checkpoint_every = 0  # only the final checkpoint
    config.methods = (args.method,)
    config.progress = False
    config.resume = False
    config.output_dir = output_dir
    if args.data_dir:
      config.data_dir = args.data_dir
  return config


def _specs(args: argparse.Namespace) -> list[train.RunSpec]:
  sparsity = 0.0 if args.method == "dense" else float(args.sparsity)
  if args.over == "seeds":
    return [train.RunSpec(args.method, sparsity, seed) for seed in range(args.runs)]
  if args.method == "dense":
    raise SystemExit("--over sparsities needs a pruning method")
  sparsities = (0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.5, 0.7)[: args.runs]
  return [train.RunSpec(args.method, s, 0) for s in sparsities]


def _time(fn) -> tuple[float, list[dict]]:
  t = time.perf_counter()
  records = fn()
  return time.perf_counter() - t, records


def _compare(seq: list[dict], vm: list[dict]) -> dict:
  """Bitwise equality of the evaluations, else the largest relative difference."""
  keys = ("loss", "train_accuracy", "test_loss", "test_accuracy", "sparsity")
  worst, identical = 0.0, True
  for a, b in zip(seq, vm):
    for x, y in zip(a["evaluations"], b["evaluations"]):
      for k in keys:
        if x[k] != y[k]:
          identical = False
          worst = max(worst, abs(x[k] - y[k]) / max(abs(x[k]), 1e-12))
  return {"identical": identical, "max_relative_difference": worst}


def main(argv=None) -> int:
  """Runs the benchmark and prints the speedup.

  Args:
      argv: command-line arguments (default: ``sys.argv[1:]``).

  Returns:
      The exit code.
  """
  args = _parse_args(argv)
  specs = _specs(args)
  tmp = tempfile.mkdtemp(prefix="vmap_seeds_")
  try:
    return _run(args, specs, tmp)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, specs: list[train.RunSpec], tmp: str) -> int:
  config = _config(args, tmp)
  data_dir = data_lib.resolve_data_dir(config.data_dir)
  dataset = data_lib.load_dataset(config.dataset, data_dir=data_dir, progress=False)
  data = train.prepare_data(dataset, int(config.eval_batch_size))
  model = models.get_model(config.model, dataset.num_classes)
  shapes = jax.eval_shape(
    lambda k: model.init(k, jax.numpy.zeros((1, *dataset.image_shape)), train=False),
    jax.random.PRNGKey(0),
  )
  macs = evaluation.model_macs(model, shapes, dataset.image_shape)
  quiet = lambda line: None  # noqa: E731

  def train_runs(config, runs, out, vmap):
    return train.train_runs(
      config,
      dataset,
      runs,
      methods.setups(config, model, runs, dataset),
      data=data,
      mac_counts=macs,
      output_dir=out,
      vmap=vmap,
      log=quiet,
    )

  def sequential(tag):
    out = Path(tmp) / f"seq_{tag}"
    return [r for spec in specs for r in train_runs(config, [spec], out, vmap=False)]

  def vmapped(tag):
    return train_runs(config, specs, Path(tmp) / f"vmap_{tag}", vmap=True)

  names = ", ".join(s.name for s in specs)
  print(
    f"{len(specs)} runs ({names}), {args.steps} steps of batch {config.batch_size}, "
    f"{config.model}; jax {jax.__version__} on {jax.default_backend()} "
    f"({os.cpu_count()} CPUs, {platform.processor() or platform.machine()})",
    file=sys.stderr,
  )
  # One-time costs of the process (eager model init, orbax set-up) and the evaluation
  # programs (shared by all methods), so that each mode's cold time is its training
  # program's compilation plus its runs: one-step dense runs, sequential and vmapped.
  warm_config = _config(args, tmp)
  with warm_config.unlocked():
    warm_config.num_train_steps = 1
    warm_config.methods = ("dense",)
  dense = [train.RunSpec("dense", 0.0, i) for i in range(len(specs))]
  for group in (dense[:1], dense):
    train_runs(warm_config, group, Path(tmp) / "warmup", vmap=len(group) > 1)
  cold_seq, seq_records = _time(lambda: sequential("cold"))
  print(f"cold sequential: {cold_seq:.2f}s (compile included)", file=sys.stderr)
  cold_vm, vm_records = _time(lambda: vmapped("cold"))
  print(f"cold vmapped:    {cold_vm:.2f}s (compile included)", file=sys.stderr)

  rounds = []
  rng = random.Random(0)
  for r in range(args.repeats):
    order = ["sequential", "vmapped"]
    rng.shuffle(order)
    times = {}
    for mode in order:
      fn = sequential if mode == "sequential" else vmapped
      times[mode], _ = _time(lambda: fn(r))
    rounds.append(times)
    print(
      f"round {r}: sequential {times['sequential']:.2f}s, vmapped "
      f"{times['vmapped']:.2f}s, speedup "
      f"{times['sequential'] / times['vmapped']:.2f}x",
      file=sys.stderr,
    )

  ratios = [t["sequential"] / t["vmapped"] for t in rounds]
  seq_med = statistics.median(t["sequential"] for t in rounds)
  vm_med = statistics.median(t["vmapped"] for t in rounds)
  agreement = _compare(seq_records, vm_records)
  result = {
    "runs": [s.name for s in specs],
    "over": args.over,
    "steps": args.steps,
    "batch_size": int(config.batch_size),
    "model": config.model,
    "cold_sequential_s": cold_seq,
    "cold_vmapped_s": cold_vm,
    "cold_speedup": cold_seq / cold_vm,
    "sequential_s": seq_med,
    "vmapped_s": vm_med,
    "speedup": statistics.median(ratios) if ratios else None,
    "speedup_range": [min(ratios), max(ratios)] if ratios else None,
    "rounds": rounds,
    "agreement": agreement,
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "cpus": os.cpu_count(),
  }
  print()
  print(
    f"{len(specs)} runs differing in {args.over}, {args.method}, {args.steps} steps each "
    f"({jax.default_backend()}, {os.cpu_count()} CPUs):"
  )
  print(f"{'':<22} {'sequential':>11} {'vmapped':>9} {'speedup':>8}")
  print(
    f"{'cold (with compile)':<22} {cold_seq:>10.2f}s {cold_vm:>8.2f}s {cold_seq / cold_vm:>7.2f}x"
  )
  if ratios:
    print(
      f"{'warm (median of ' + str(len(ratios)) + ')':<22} {seq_med:>10.2f}s "
      f"{vm_med:>8.2f}s {statistics.median(ratios):>7.2f}x "
      f"(range {min(ratios):.2f}-{max(ratios):.2f}x)"
    )
  if agreement["identical"]:
    print("per-run evaluations: bitwise identical between the two modes")
  else:
    print(
      "per-run evaluations differ between the two modes by at most "
      f"{agreement['max_relative_difference']:.2e} (relative)"
    )
  if args.out:
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
