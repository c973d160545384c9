"""The command line of ``python -m experiments``: config, overrides, and the exit codes.

Exit codes: 0 when the sweep finished, 2 for a bad config or a missing dataset, 3 when
``stop_after_step`` stopped the sweep (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import ml_collections

from experiments import config as config_lib
from experiments import distributed, dropnet, lottery, models, oneshot, structured, sweep, train
from experiments import ispasp as ispasp_runner
from experiments import lrpet as lrpet_runner
from experiments import sup_tickets as sup_tickets_runner

EXIT_STOPPED = 3
# The runners, by ``config.experiment``: each has ``validate(config)`` and ``run(config)``.
EXPERIMENTS = {
  "sweep": sweep,
  "lottery": lottery,
  "structured": structured,
  "dropnet": dropnet,
  "oneshot": oneshot,
  "sup_tickets": sup_tickets_runner,
  "lrpet": lrpet_runner,
  "ispasp": ispasp_runner,
}


def build_parser() -> argparse.ArgumentParser:
  """The argument parser (``--config.FIELD=VALUE`` overrides are parsed by `parse_args`).

  Returns:
      The parser.
  """
  p = argparse.ArgumentParser(
    prog="python -m experiments",
    description="Pruning experiments (jaxprune): a sweep of methods (dense, one-shot, "
    "gradual, IMP with retraining schedules, dynamic sparse training, pruning at "
    "initialisation) over sparsities and seeds, or the "
    "lottery-ticket experiment (--config mnist_lth). "
    "Any config field can be overridden with --config.FIELD=VALUE or "
    "--set FIELD=VALUE (dotted for nested fields, e.g. "
    "--config.optimizer.learning_rate=0.1; lists as 0.8,0.9). A rerun of "
    "the same command resumes from the checkpoints in OUTPUT_DIR/checkpoints "
    "and reports finished runs without training them again "
    "(--set resume=false starts over).",
  )
  p.add_argument(
    "--config",
    default=None,
    help=f"config file (.py with get_config()) or a name in "
    f"experiments/configs (default: {config_lib.DEFAULT_CONFIG})",
  )
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="FIELD=VALUE",
    help="override a config field (repeatable)",
  )
  p.add_argument("--data_dir", default=None, help="TFDS data directory (config.data_dir)")
  p.add_argument("--cache_dir", default=None, help="decoded-array cache (config.cache_dir)")
  p.add_argument("--output_dir", default=None, help="where results go (config.output_dir)")
  p.add_argument("--no_progress", action="store_true", help="no tqdm progress bars")
  p.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
  p.add_argument(
    "--distributed",
    action="store_true",
    help="one process of a multi-host run: joins the others (jax.distributed.initialize; "
    "detected on TPU pods and SLURM, else give the three flags below) and trains the sweep "
    "data-parallel over the devices of all processes; start the same command on every host",
  )
  p.add_argument("--coordinator", default=None, help="with --distributed: HOST:PORT of process 0")
  p.add_argument("--num_processes", type=int, default=None, help="with --distributed")
  p.add_argument("--process_id", type=int, default=None, help="with --distributed")
  return p


def parse_args(
  argv: Optional[Sequence[str]] = None,
) -> tuple[argparse.Namespace, ml_collections.ConfigDict]:
  """Parses the command line into ``(args, config)`` with every override applied.

  Args:
      argv: the arguments (default: ``sys.argv[1:]``).

  Returns:
      The parsed flags and the config.

  Raises:
      SystemExit: for an unknown flag or field, or a value of the wrong type.
  """
  parser = build_parser()
  args, rest = parser.parse_known_args(argv)
  overrides: list[tuple[str, str]] = []
  i = 0
  while i < len(rest):
    token = rest[i]
    if not token.startswith("--config."):
      parser.error(f"unrecognized argument {token!r}")
    key = token[len("--config.") :]
    if "=" in key:
      key, value = key.split("=", 1)
    elif i + 1 < len(rest):
      i += 1
      value = rest[i]
    else:
      parser.error(f"{token} needs a value")
    overrides.append((key, value))
    i += 1
  for item in args.set:
    if "=" not in item:
      parser.error(f"--set expects FIELD=VALUE, got {item!r}")
    key, value = item.split("=", 1)
    overrides.append((key.strip(), value))
  try:
    config = config_lib.load_config(args.config)
  except (FileNotFoundError, ValueError) as e:
    parser.error(str(e))
  try:
    for key, value in overrides:
      config_lib.apply_override(config, key, value)
  except (KeyError, ValueError) as e:
    parser.error(str(e.args[0]) if e.args else str(e))
  with config.unlocked():
    if args.data_dir is not None:
      config.data_dir = args.data_dir
    if args.cache_dir is not None:
      config.cache_dir = args.cache_dir
    if args.output_dir is not None:
      config.output_dir = args.output_dir
    if args.no_progress:
      config.progress = False
  return args, config


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs ``python -m experiments``.

  Args:
      argv: the arguments (default: ``sys.argv[1:]``).

  Returns:
      The exit code (0, 2 or `EXIT_STOPPED`).
  """
  args, config = parse_args(argv)
  if args.print_config:
    print(config)
    return 0
  if args.distributed:
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  experiment = config.get("experiment", "sweep")
  module = EXPERIMENTS.get(experiment)
  try:  # fail fast on a bad method, model, optimizer, schedule or published point
    if module is None:
      raise ValueError(f"Unknown experiment {experiment!r} ({', '.join(EXPERIMENTS)})")
    if experiment != "sweep" and distributed.requested(config):
      raise ValueError(
        f"data_parallel (and --distributed) train the sweep only; experiment {experiment!r} "
        "runs on one device of one process (set data_parallel=false)"
      )
    module.validate(config)
    for name in config.get("models", None) or (config.model,):
      models.get_model(name, 10)
    if "eval_every" in config or "checkpoint_every" in config:
      config_lib.checkpoint_interval(config)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    module.run(config)
  except FileNotFoundError as e:  # the dataset is not prepared
    print(f"error: {e}", file=sys.stderr)
    return 2
  except train.StopRequested as e:
    if distributed.is_main():  # (every process of a multi-host run stops alike)
      print(
        f"stopped after step {e.args[0]} (stop_after_step); rerun the same command to resume",
        file=sys.stderr,
      )
    return EXIT_STOPPED
  return 0
