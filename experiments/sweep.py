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

import time
from pathlib import Path
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from experiments import config as config_lib
from experiments import data as data_lib
from experiments import evaluation
from experiments import models
from experiments import outputs
from experiments import plots
from experiments import sparse_training
from experiments import train
from experiments.train import RunSpec, StopRequested  # noqa: F401  (re-exported)


# The last dataset loaded (and its device copies), reused by later sweeps in this process
# (tests, benchmarks): decoding is cached on disk, but normalising takes seconds too.
_LOADED: dict[tuple, Any] = {}


def _load(config: ml_collections.ConfigDict, data_dir: Optional[str],
          progress: bool) -> tuple[data_lib.Dataset, train.DeviceData]:
    """The dataset of ``config`` and its device copies, reused while the config agrees."""
    key = (config.dataset, data_dir, str(data_lib.resolve_cache_dir(config.get("cache_dir"))),
           int(config.eval_batch_size))
    if key not in _LOADED:
        _LOADED.clear()
        dataset = data_lib.load_dataset(config.dataset, data_dir=data_dir,
                                        cache_dir=config.get("cache_dir"), progress=progress)
        _LOADED[key] = (dataset, train.prepare_data(dataset, int(config.eval_batch_size)))
    return _LOADED[key]


def sweep_plan(config: ml_collections.ConfigDict) -> list[tuple[str, float, int]]:
    """Every run of the sweep, as ``(method, target sparsity, seed)``, seed-major.

    Args:
        config: the config (``methods``, ``sparsities``, ``seeds``).

    Returns:
        The runs; ``dense`` appears once per seed with sparsity 0.

    Raises:
        ValueError: for an unknown method or a sparsity outside ``(0, 1)``.
    """
    methods = list(config.methods)
    unknown = [m for m in methods if m not in config_lib.METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; valid methods: "
                         f"{', '.join(config_lib.METHODS)}")
    for group, names in (("dst", sparse_training.DST_METHODS),
                         ("at_init", sparse_training.AT_INIT_METHODS)):
        used = [m for m in methods if m in names]
        if used and config.get(group, None) is None:
            raise ValueError(f"the methods {used} need the config group {group!r}; see "
                             "experiments/configs/mnist_dst.py and mnist_at_init.py")
    for s in config.sparsities:
        if not 0.0 < float(s) < 1.0:
            raise ValueError(f"sparsities must lie in (0, 1), got {s}")
    plan = []
    for seed in config.seeds:
        for method in methods:
            if method == "dense":
                plan.append((method, 0.0, int(seed)))
            else:
                plan.extend((method, float(s), int(seed)) for s in config.sparsities)
    return plan


def run_groups(config: ml_collections.ConfigDict) -> list[list[RunSpec]]:
    """The runs of `sweep_plan` grouped into the programs that train them.

    Args:
        config: the config; ``vmap_seeds`` groups the seeds of a (method, sparsity),
            ``vmap_sparsities`` the sparsities of a (method, seed), both together every run
            of a method.

    Returns:
        The groups, in method order; a group of one run is trained without vmap. The
        dynamic sparse methods (`experiments.sparse_training.DST_METHODS`) are never grouped.
    """
    by_seed = bool(config.get("vmap_seeds", True))
    by_sparsity = bool(config.get("vmap_sparsities", False))
    groups: dict[tuple, list[RunSpec]] = {}
    for method, sparsity, seed in sweep_plan(config):
        # A dynamic sparse method's sparsity and mask seed are constants of its transformation
        # (a vmapped program is built from the first run's): one run per program.
        alone = method in sparse_training.DST_METHODS
        key = (method,
               None if by_sparsity and not alone else sparsity,
               None if by_seed and not alone else seed)
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
    out_dir = Path(config.output_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = bool(config.get("progress", True))
    log = outputs.Log(out_dir / "log.txt", use_tqdm=progress)
    try:
        wall_start = time.perf_counter()
        with open(out_dir / "config.json", "w") as f:
            f.write(config.to_json(indent=2))
        data_dir = data_lib.resolve_data_dir(config.data_dir)
        log(f"Loading {config.dataset} from {data_dir or 'the tfds default data_dir'} "
            f"(cache: {data_lib.resolve_cache_dir(config.get('cache_dir'))})")
        t = time.perf_counter()
        dataset, data = _load(config, data_dir, progress)
        log(f"{dataset.name} {dataset.version}: {len(dataset.train)} train / "
            f"{len(dataset.test)} test images of shape {dataset.image_shape}, "
            f"{dataset.num_classes} classes ({time.perf_counter() - t:.1f}s)")

        model = models.get_model(config.model, dataset.num_classes)
        shapes = jax.eval_shape(
            lambda k: model.init(k, jax.numpy.zeros((1, *dataset.image_shape)), train=False),
            jax.random.PRNGKey(0))
        macs = evaluation.model_macs(model, shapes, dataset.image_shape)
        fingerprint = config_lib.fingerprint(config)
        log(f"Sweep: {len(plan)} runs of {config.model} ({macs['total']:,} multiply-adds per "
            f"example), {config.num_train_steps} steps each, in {len(groups)} program(s) "
            f"(vmap_seeds={bool(config.get('vmap_seeds', True))}, vmap_sparsities="
            f"{bool(config.get('vmap_sparsities', False))}); pruning steps "
            f"{train.prune_steps(config)}; config fingerprint {fingerprint}; "
            f"jax backend {jax.default_backend()}")

        records: dict[str, dict] = {}
        outer = None
        if progress:
            from tqdm import tqdm

            outer = tqdm(total=len(plan), desc="sweep", position=0, unit="run",
                         dynamic_ncols=True)
        resume = bool(config.get("resume", True))
        for group in groups:
            todo = []
            for spec in group:
                record = outputs.read_finished_run(out_dir, spec.name, fingerprint) \
                    if resume else None
                if record is None:
                    todo.append(spec)
                else:
                    records[spec.name] = record
                    log(f"==> {spec.name}: already finished ({out_dir}/runs/{spec.name}.json); "
                        "reported without training")
            if todo:
                vmap = bool(config.get("vmap_seeds", True)) or \
                    bool(config.get("vmap_sparsities", False))
                for r in train.train_runs(config, dataset, todo, data=data, mac_counts=macs,
                                          output_dir=out_dir, vmap=vmap, log=log):
                    outputs.write_run(r, out_dir)
                    records[r["name"]] = r
            for spec in group:
                f = records[spec.name]["final"]
                log(f"==> {spec.name}: test acc {f['test_accuracy']:.4f}, sparsity "
                    f"{f['sparsity']:.4f} (kernels {f['kernel_sparsity']:.4f}), compression "
                    f"{f['compression_ratio']:.2f}x, speedup {f['theoretical_speedup']:.2f}x, "
                    f"{records[spec.name]['train_time_s']:.1f}s"
                    + (f" (vmapped x{len(records[spec.name]['trained_with'])})"
                       if records[spec.name].get("vmapped") else ""))
            if outer is not None:
                outer.update(len(group))
        if outer is not None:
            outer.close()

        ordered = [records[RunSpec(*p).name] for p in plan]
        wall = time.perf_counter() - wall_start
        meta = {"model": config.model, "dataset": config.dataset,
                "num_train_steps": int(config.num_train_steps), "fingerprint": fingerprint,
                "macs_per_example": macs["total"], "macs_by_leaf": macs["by_leaf"],
                "published": published, "wall_time_s": wall}
        agg = outputs.write_summary(ordered, out_dir, meta)
        markdown = outputs.format_markdown(agg, published)
        collapse = sparse_training.collapse_rows(ordered)
        if collapse:  # pruning at initialisation: which masks collapse the network
            outputs.write_rows(collapse, out_dir / "collapse.csv")
            markdown += "\n\n" + sparse_training.format_collapse(collapse)
        (out_dir / "summary.md").write_text(markdown + "\n")
        title = f"{config.model} on {config.dataset}"
        error = bool(config.get("plot_error", False))
        png = "error_vs_sparsity.png" if error else "accuracy_vs_sparsity.png"
        imp_methods = [m for m in config.methods if m in train.IMP_SCHEDULES]
        if config.get("plots", True):
            plots.plot_accuracy_vs_sparsity(agg, out_dir / png, title, published, error=error)
            plots.plot_training_curves(ordered, out_dir / "training_curves.png", title)
            if imp_methods:
                png += ", learning_rates.png"
                plots.plot_learning_rates(
                    {m: train.method_learning_rate(m, config) for m in config.methods},
                    int(config.num_train_steps), out_dir / "learning_rates.png",
                    f"{title}: learning rates",
                    boundaries=list(np.cumsum(train.imp_cycle_steps(config))[:-1]))
        log("")
        log(f"Final test accuracy, {title} ({config.num_train_steps} steps, sparsity, "
            "compression ratio and theoretical speedup measured on the final parameters):")
        log(outputs.format_table(agg))
        if published:
            log(outputs.format_published(published))
        if collapse:
            log("")
            log(sparse_training.format_collapse(collapse))
        pngs = f"{png}, training_curves.png, " if config.get("plots", True) else ""
        log(f"\nWrote {out_dir}/summary.{{json,csv,md}}, {pngs}runs/ and checkpoints/ "
            f"({wall:.1f}s total)")
        return {"records": ordered, "aggregate": agg, "wall_time_s": wall,
                "output_dir": str(out_dir), "macs": macs, "published": published}
    finally:
        log.close()
