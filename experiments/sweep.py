"""The sweep: every (method, target sparsity, seed) of a config, grouped into vmapped programs.

``run(config)`` loads the dataset, counts the model's multiply-adds once, then trains the
runs of `sweep_plan` in groups (`run_groups`): with ``config.vmap_seeds`` the seeds of a
(method, sparsity) are one ``jax.vmap``-ped program, with ``config.vmap_sparsities`` also the
sparsities of a method (their target sparsity is a hyperparameter in the optimizer state, so
their shapes agree). Each run of a group starts from its own seed's initialisation and reads
its own seed's batches, so it computes what its sequential run computes (bit for bit on
the CPU for seeds; sparsities agree to float32 rounding, see the tests).

A run whose ``runs/<run>.json`` was written by the same config is reported without
training; a group with checkpoints resumes from them (`experiments.train.train_runs`).
Everything written is listed in `experiments.outputs` and `experiments.plots`.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from experiments import config as config_lib
from experiments import distributed, methods, outputs, plots, runner, train
from experiments.train import RunSpec


def sweep_plan(config: ml_collections.ConfigDict) -> list[tuple[str, float, int]]:
  """Every run of the sweep, as ``(method, target sparsity, seed)``, seed-major.

  Args:
      config: the config (``methods``, ``sparsities``, ``seeds``).

  Returns:
      The runs; the dense baseline appears once per seed with sparsity 0, a method with its
      own sparsities (`experiments.methods.Method.sparsities`: N:M) at those.

  Raises:
      ValueError: for an unknown method, a method without its config group, or a sparsity
          outside ``(0, 1)``.
  """
  methods.validate(config)

  def targets(method: str) -> tuple:
    own = methods.METHODS[method].sparsities
    return tuple(own(config)) if own is not None else tuple(config.sparsities)

  own = [methods.METHODS[m].sparsities for m in config.methods]
  for s in [*config.sparsities, *(s for f in own if f is not None for s in f(config))]:
    if not 0.0 < float(s) < 1.0:
      raise ValueError(f"sparsities must lie in (0, 1), got {s}")
  plan = []
  for seed in config.seeds:
    for method in config.methods:
      if methods.METHODS[method].sparse:
        plan.extend((method, float(s), int(seed)) for s in targets(method))
      else:
        plan.append((method, 0.0, int(seed)))
  return plan


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a sweep config before anything is trained.

  Args:
      config: the config.

  Raises:
      ValueError: for a bad method, sparsity, optimizer, schedule, method setting (e.g. IMP
          cycles), published point, ``data_pipeline`` or a
          ``batch_size`` that does not split over the devices (``data_parallel``).
  """
  train.data_pipeline(config)
  distributed.data_parallel(config)  # (batch_size must split over the devices)
  for method, sparsity, seed in sweep_plan(config):
    methods.METHODS[method].make_tx(config, sparsity, seed)
  outputs.published_points(config)


def run_groups(config: ml_collections.ConfigDict) -> list[list[RunSpec]]:
  """The runs of `sweep_plan` grouped into the programs that train them.

  Args:
      config: the config; ``vmap_seeds`` groups the seeds of a (method, sparsity),
          ``vmap_sparsities`` the sparsities of a (method, seed), both together every run
          of a method.

  Returns:
      The groups, in method order; a group of one run is trained without vmap. The runs of
      a method that does not stack (`experiments.methods.Method.stacks`) are never grouped.
  """
  by_seed = bool(config.get("vmap_seeds", True))
  by_sparsity = bool(config.get("vmap_sparsities", False))
  groups: dict[tuple, list[RunSpec]] = {}
  for method, sparsity, seed in sweep_plan(config):
    stacks = methods.METHODS[method].stacks
    key = (
      method,
      None if by_sparsity and stacks else sparsity,
      None if by_seed and stacks else seed,
    )
    groups.setdefault(key, []).append(RunSpec(method, sparsity, seed))
  order = {m: i for i, m in enumerate(config.methods)}
  return sorted(groups.values(), key=lambda g: order[g[0].method])


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs the whole sweep described by ``config`` and writes its outputs.

  Args:
      config: the config.

  Returns:
      ``records`` (one per run, in `sweep_plan` order), ``aggregate``, ``wall_time_s``,
      ``output_dir``, ``macs`` and ``published``.

  Raises:
      FileNotFoundError: if the dataset is not prepared.
      ValueError: for a bad method, sparsity or published point.
      experiments.train.StopRequested: after the checkpoint of ``config.stop_after_step``.
  """
  plan = sweep_plan(config)
  groups = run_groups(config)
  published = outputs.published_points(config)
  cycles = [
    methods.METHODS[m].cycle_steps(config)
    for m in config.methods
    if methods.METHODS[m].cycle_steps is not None
  ]
  with runner.start(config, "sweep", len(plan)) as experiment:
    log, out_dir, macs = experiment.log, experiment.out_dir, experiment.macs
    fingerprint = config_lib.fingerprint(config)
    log(
      f"Sweep: {len(plan)} runs of {config.model} ({macs['total']:,} multiply-adds per "
      f"example), {config.num_train_steps} steps each, in {len(groups)} program(s) "
      f"(vmap_seeds={bool(config.get('vmap_seeds', True))}, vmap_sparsities="
      f"{bool(config.get('vmap_sparsities', False))}); pruning steps "
      f"{methods.prune_steps(config)}{f', IMP cycles {cycles[0]}' if cycles else ''}; "
      f"config fingerprint {fingerprint}; jax backend {jax.default_backend()}"
    )
    records: dict[str, dict] = {}
    for group in groups:
      for spec, record in zip(group, experiment.train(group)):
        records[spec.name] = record
        f = record["final"]
        log(
          f"==> {spec.name}: test acc {f['test_accuracy']:.4f}, sparsity "
          f"{f['sparsity']:.4f} (kernels {f['kernel_sparsity']:.4f}), compression "
          f"{f['compression_ratio']:.2f}x, speedup {f['theoretical_speedup']:.2f}x, "
          f"{record['train_time_s']:.1f}s"
          + (f" (vmapped x{len(record['trained_with'])})" if record.get("vmapped") else "")
        )

    ordered = [records[RunSpec(*p).name] for p in plan]
    meta = {
      "model": config.model,
      "dataset": config.dataset,
      "num_train_steps": int(config.num_train_steps),
      "fingerprint": fingerprint,
      "macs_per_example": macs["total"],
      "macs_by_leaf": macs["by_leaf"],
      "published": published,
      "wall_time_s": experiment.elapsed(),
    }
    main = distributed.is_main()  # (the other processes of a multi-host run write nothing)
    if main:
      agg = outputs.write_summary(ordered, out_dir, meta)
    else:
      agg = outputs.aggregate(outputs.summary_rows(ordered))
    markdown = outputs.format_markdown(agg, published)
    collapse = outputs.collapse_rows(ordered)
    if collapse:  # pruning at initialisation: which masks collapse the network
      if main:
        outputs.write_rows(collapse, out_dir / "collapse.csv")
      markdown += "\n\n" + outputs.format_collapse(collapse)
    learned = outputs.format_learned(ordered)
    if learned:  # methods that learn their sparsity: the sparsity of every run
      markdown += "\n\n" + learned
    if main:
      (out_dir / "summary.md").write_text(markdown + "\n")
    title = f"{config.model} on {config.dataset}"
    error = bool(config.get("plot_error", False))
    png = "error_vs_sparsity.png" if error else "accuracy_vs_sparsity.png"
    if config.get("plots", True) and main:
      plots.plot_accuracy_vs_sparsity(agg, out_dir / png, title, published, error=error)
      plots.plot_training_curves(ordered, out_dir / "training_curves.png", title)
      if cycles:  # IMP: its retraining schedules, its prunes dotted
        png += ", learning_rates.png"
        plots.plot_learning_rates(
          {m: methods.METHODS[m].learning_rate(config) for m in config.methods},
          int(config.num_train_steps),
          out_dir / "learning_rates.png",
          f"{title}: learning rates",
          boundaries=list(np.cumsum(cycles[0])[:-1]),
        )
    log("")
    log(
      f"Final test accuracy, {title} ({config.num_train_steps} steps, sparsity, "
      "compression ratio and theoretical speedup measured on the final parameters):"
    )
    log(outputs.format_table(agg))
    if published:
      log(outputs.format_published(published))
    if collapse:
      log("")
      log(outputs.format_collapse(collapse))
    if learned:
      log("")
      log(learned)
    pngs = f"{png}, training_curves.png, " if config.get("plots", True) else ""
    wall = experiment.finish(f"summary.{{json,csv,md}}, {pngs}runs/ and checkpoints/")
    return {
      "records": ordered,
      "aggregate": agg,
      "wall_time_s": wall,
      "output_dir": str(out_dir),
      "macs": macs,
      "published": published,
    }
