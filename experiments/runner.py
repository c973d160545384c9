"""The scaffold of every experiment runner (`experiments.sweep`, `experiments.lottery`).

``with start(config, name, total_runs) as experiment:`` creates ``config.output_dir``, opens its
``log.txt`` (appended to) and writes ``config.json``; loads the dataset (holding
``config.validation_size`` training examples out for validation when the config has that field)
and puts it on the device (the training split only with ``data_pipeline="memory"``, the
default); builds the model and counts its multiply-adds; and shows a progress bar over the
experiment's runs. `Experiment.train` trains the runs of one method: a run whose
``runs/<run>.json`` was written by the same config is reported without training, the others are
trained by `experiments.train.train_runs` (which resumes them from their checkpoints) and their
records written (`experiments.outputs.write_run`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from experiments import config as config_lib
from experiments import data as data_lib
from experiments import distributed, evaluation, methods, models, outputs, train

# The last dataset loaded (and its device copies), reused by later experiments in this process
# (tests, benchmarks): decoding is cached on disk, but normalising takes seconds too.
_LOADED: dict[tuple, Any] = {}


def _load(
  config: ml_collections.ConfigDict, data_dir: Optional[str], progress: bool
) -> tuple[data_lib.Dataset, train.DeviceData]:
  """The dataset of ``config`` (less its validation split) and its device copies (with
  ``data_pipeline="grain"`` the training split stays on disk: its batches are streamed)."""
  validation = (int(config.get("validation_size", 0)), int(config.get("validation_seed", 0)))
  pipeline = train.data_pipeline(config)
  scaling = str(config.get("input_scaling", "standardize"))
  if scaling not in ("standardize", "unit"):
    raise ValueError(f"input_scaling must be 'standardize' or 'unit', got {scaling!r}")
  if scaling == "unit" and pipeline == "grain":
    raise ValueError("input_scaling='unit' needs data_pipeline='memory'")
  placement = distributed.data_parallel(config)
  key = (
    config.dataset,
    data_dir,
    str(data_lib.resolve_cache_dir(config.get("cache_dir"))),
    int(config.eval_batch_size),
    validation,
    pipeline,
    scaling,
    None if placement is None else placement.mesh,
  )
  if key not in _LOADED:
    _LOADED.clear()
    full = data_lib.load_dataset(
      config.dataset,
      data_dir=data_dir,
      cache_dir=config.get("cache_dir"),
      progress=progress,
      lazy_train=pipeline == "grain",
    )
    if scaling == "unit":
      full = data_lib.unit_scaled(full)
    dataset, held_out = data_lib.split_validation(full, *validation)
    _LOADED[key] = (
      dataset,
      train.prepare_data(dataset, int(config.eval_batch_size), held_out, placement),
    )
  return _LOADED[key]


@dataclasses.dataclass
class Experiment:
  """What the runs of an experiment share (yielded by `start`)."""

  config: ml_collections.ConfigDict
  out_dir: Path
  log: outputs.Log
  dataset: data_lib.Dataset
  data: train.DeviceData
  model: nn.Module
  variables: Any  # the shapes of the model's variables (``jax.eval_shape`` of its init)
  macs: dict[str, Any]  # `experiments.evaluation.model_macs`
  started: float
  bar: Any = None  # the tqdm bar over the runs

  def train(
    self,
    specs: Sequence[train.RunSpec],
    setups: Optional[Callable[[list[train.RunSpec]], list[train.RunSetup]]] = None,
    *,
    config: Optional[ml_collections.ConfigDict] = None,
    vmap: bool = True,
  ) -> list[dict]:
    """Trains the runs ``specs`` of one method, or reads the records of the finished ones.

    Args:
        specs: the runs.
        setups: ``runs -> setups`` of the runs left to train (default:
            `experiments.methods.setups`).
        config: the config they train with (default: the experiment's).
        vmap: the runs left are one vmapped program (else trained one by one).

    Returns:
        The records of ``specs``, in their order.

    Raises:
        experiments.train.StopRequested: after the checkpoint of ``stop_after_step``.
    """
    config = config or self.config
    setups = setups or (lambda runs: methods.setups(config, self.model, runs, self.dataset))
    fingerprint = config_lib.fingerprint(config)
    records, todo = {}, []
    for spec in specs:
      record = (
        outputs.read_finished_run(self.out_dir, spec.name, fingerprint)
        if config.get("resume", True)
        else None
      )
      if record is None:
        todo.append(spec)
        continue
      records[spec.name] = record
      self.log(
        f"==> {spec.name}: already finished ({self.out_dir}/runs/{spec.name}.json); "
        "reported without training"
      )
    for group in [todo] if vmap else [[spec] for spec in todo]:
      if not group:
        continue
      for record in train.train_runs(
        config,
        self.dataset,
        group,
        setups(group),
        data=self.data,
        mac_counts=self.macs,
        output_dir=self.out_dir,
        vmap=len(group) > 1,
        log=self.log,
      ):
        if distributed.is_main():
          outputs.write_run(record, self.out_dir)
        records[record["name"]] = record
    if self.bar is not None:
      self.bar.update(len(specs))
      if self.bar.n >= self.bar.total:  # the last runs: the tables print below the bar
        self.bar.close()
    return [records[spec.name] for spec in specs]

  def elapsed(self) -> float:
    """Seconds since the experiment started."""
    return time.perf_counter() - self.started

  def finish(self, written: str) -> float:
    """Logs what was written under the output directory, and the wall time.

    Args:
        written: the files, e.g. ``summary.{json,csv,md}, runs/ and checkpoints/``.

    Returns:
        The experiment's wall time in seconds.
    """
    wall = self.elapsed()
    self.log(f"\nWrote {self.out_dir}/{written} ({wall:.1f}s total)")
    return wall


@contextlib.contextmanager
def start(config: ml_collections.ConfigDict, name: str, total_runs: int) -> Iterator[Experiment]:
  """Starts an experiment: output directory, log, ``config.json``, data, model, progress bar.

  Args:
      config: the config.
      name: the progress bar's label.
      total_runs: the number of runs of the experiment (the bar's total).

  Yields:
      The `Experiment`; its log and progress bar are closed on exit.

  Raises:
      FileNotFoundError: if the dataset is not prepared.
  """
  out_dir = Path(config.output_dir).expanduser()
  main = distributed.is_main()  # (the other processes of a multi-host run write nothing)
  if main:
    out_dir.mkdir(parents=True, exist_ok=True)
  progress = bool(config.get("progress", True)) and main
  log = outputs.Log(out_dir / "log.txt", use_tqdm=progress, quiet=not main)
  bar = None
  try:
    started = time.perf_counter()
    if main:
      (out_dir / "config.json").write_text(config.to_json(indent=2))
    data_dir = data_lib.resolve_data_dir(config.data_dir)
    log(
      f"Loading {config.dataset} from {data_dir or 'the tfds default data_dir'} "
      f"(cache: {data_lib.resolve_cache_dir(config.get('cache_dir'))})"
    )
    t = time.perf_counter()
    dataset, data = _load(config, data_dir, progress)
    held_out = "" if data.validation is None else f"{data.validation.size} validation / "
    log(
      f"{dataset.name} {dataset.version}: {len(dataset.train)} train / {held_out}"
      f"{len(dataset.test)} test images of shape {dataset.image_shape}, "
      f"{dataset.num_classes} classes ({time.perf_counter() - t:.1f}s)"
    )
    model = models.get_model(config.model, dataset.num_classes)
    variables = jax.eval_shape(
      lambda k: model.init(k, jnp.zeros((1, *dataset.image_shape)), train=False),
      jax.random.PRNGKey(0),
    )
    macs = evaluation.model_macs(model, variables, dataset.image_shape)
    if progress:
      from tqdm import tqdm

      bar = tqdm(total=total_runs, desc=name, position=0, unit="run", dynamic_ncols=True)
    experiment = Experiment(
      config, out_dir, log, dataset, data, model, variables, macs, started, bar
    )
    yield experiment
  finally:
    if bar is not None:
      bar.close()
    log.close()
