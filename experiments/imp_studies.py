"""Four studies of iterative pruning on LeNet-300-100 / MNIST, one per ``config.study``.

* ``"ap"``: the dynamic dead neuron rate (DNR, `jaxprune.analysis.dead_neuron_rate`) against
  sparsity, for lottery-ticket IMP with and without Activate-while-Pruning
  (``jaxprune.imp(activate_while_pruning=...)``, Liu et al. 2023). The DNR of the hidden ReLUs is
  measured every ``ap.dnr_every`` steps on ``ap.dnr_examples`` training images, and averaged over
  each cycle (the *dynamic* rate, during optimisation) beside its value at the cycle's end.
* ``"pq"``: SAP (``jaxprune.imp(rate=jaxprune.pq_rate(p, q))``, Diao et al. 2023) against the
  lottery ticket's fixed 20% per cycle: accuracy, sparsity reached and PQ index at every cycle.
* ``"early_bird"``: early-bird tickets (You et al. 2020, `jaxprune.early_bird.EarlyBird`). A dense
  run records, at the start of every epoch, the global magnitude masks at each ``early_bird.ratios``
  and when each set of masks emerges (its newest masks within ``threshold`` of the four before).
  Then, per ratio, three sparse runs with the masks fixed: the early-bird ticket and the ticket of
  the end of dense training, both rewound to the initialisation and trained for the whole
  schedule, and "EB train" (the authors' efficient training: the early-bird ticket fine-tuned from
  its epoch's weights for the rest of the schedule).
* ``"double_descent"``: sparse double descent (He et al. 2022). Symmetric label noise on a
  ``double_descent.train_examples`` subset of the training set (`experiments.data.with_label_noise`),
  lottery-ticket IMP (global magnitude, 20% per round, output layer unpruned) to 99.9%; per round
  the test accuracy, the accuracy on the noisy training labels and the learning distance
  ``||w_end - w_start||_2`` of the round (`jaxprune.analysis.learning_distance`).

Every run is trained by one jitted program (`experiments.train.make_train_fn`) in chunks between
measurements, on the batches of `experiments.data.batch_indices` (seeded per run). A run's record
is written to ``runs/<run>.json`` when it ends; a rerun of the same command reports finished runs of
the same config (`experiments.config.fingerprint`) without training them. Writes ``summary.json``,
``summary.csv``, ``summary.md`` (the tables), ``<study>.png`` and ``log.txt`` under
``config.output_dir``. The config sets ``experiment = "lottery"`` (the CLI's runner of IMP
experiments, which hands configs with a ``study`` to this module).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import jaxprune
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import evaluation, optimizers, outputs, plots, runner, train

Config = ml_collections.ConfigDict
STUDIES = ("ap", "pq", "early_bird", "double_descent")


# ============================================================================ configs


def base_config(study: str) -> Config:
  """The fields every study config shares (``experiments/configs/mnist_{ap,pq,early_bird,
  double_descent}.py`` add their group): LeNet-300-100 on MNIST, batch 128, global pruning, SGD
  with momentum 0.9 and a cosine decay from 0.05 to 1% of it over each cycle, seeds 0 and 1."""
  config = ml_collections.ConfigDict()
  config.experiment = "lottery"  # the CLI's IMP runner; it hands configs with a study on
  config.study = study
  config.model = "lenet300_100"
  config.dataset = "mnist"
  config.data_dir = None  # None: $TFDS_DATA_DIR, then ../shared/tensorflow_datasets, ...
  config.cache_dir = None
  config.output_dir = f"results/mnist_{study}"
  config.batch_size = 128
  config.eval_batch_size = 2000
  config.distribution = "global"

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.05
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 0.0
  config.optimizer.schedule = "cosine"
  config.optimizer.min_lr_fraction = 0.01
  config.optimizer.warmup_steps = 0
  config.optimizer.decay_boundaries = (0.5, 0.75)
  config.optimizer.decay_factor = 0.1

  config.seeds = (0, 1)
  config.resume = True  # finished runs (runs/<run>.json of the same config) are not retrained
  config.progress = True
  config.plots = True
  return config


# ============================================================================ shared machinery


class Trainer:
  """One run: its training state, its compiled step and the position in its batches.

  Args:
      model: the Flax model.
      tx: the run's transformation.
      seed: the run's seed (initialisation and batch order).
      images, labels: the training split on the device.
      batch_size: examples per step.
      capacity: the most steps one call of the compiled program takes.
      params: initial params instead of the seed's (the optimizer state is built for them).
  """

  def __init__(
    self,
    model: nn.Module,
    tx: optax.GradientTransformation,
    seed: int,
    images: jax.Array,
    labels: jax.Array,
    batch_size: int,
    capacity: int,
    params: Any = None,
  ):
    state = train.init_state(model, tx, seed, tuple(images.shape[1:]))
    if params is not None:
      state = state._replace(params=params, opt_state=tx.init(params))
    self.state = state
    self.seed, self.images, self.labels = int(seed), images, labels
    self.batch_size, self.capacity = int(batch_size), int(capacity)
    self.position = (0, 0)
    self.step = 0
    self.program = jax.jit(train.make_train_fn(model, tx))

  def advance(self, steps: int) -> None:
    """Trains ``steps`` more steps."""
    while steps > 0:
      n = min(int(steps), self.capacity)
      idx = np.zeros((self.capacity, self.batch_size), np.int32)
      idx[:n], self.position = data_lib.batch_indices(
        len(self.labels), self.batch_size, seed=self.seed, position=self.position, count=n
      )
      self.state = self.program(self.state, idx, np.int32(n), self.images, self.labels)
      self.step += n
      steps -= n

  @property
  def masks(self) -> Any:
    return jaxprune.get_masks(self.state.opt_state)


_EVAL: dict[tuple, Callable] = {}


def accuracy(model: nn.Module, params: Any, split: evaluation.TestData) -> float:
  """The accuracy of ``params`` on a padded split."""
  key = (repr(model), split.batch_size)
  if key not in _EVAL:
    _EVAL[key] = jax.jit(evaluation.make_eval_fn(model, split.batch_size))
  correct, _ = _EVAL[key](params, {}, split.images, split.labels, split.valid)
  return int(correct) / split.size


def hidden_pre_activations(model: nn.Module) -> Callable:
  """``(params, x) -> {layer: pre-activation}`` of the Dense layers that feed a ReLU (every one but
  the last), read with Flax's ``capture_intermediates``."""

  def fn(params, x):
    _, state = model.apply(
      {"params": params}, x, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    layers = sorted(
      (k for k in state["intermediates"] if k.startswith("Dense_")), key=lambda k: int(k[6:])
    )
    return {k: state["intermediates"][k]["__call__"][0] for k in layers[:-1]}

  return jax.jit(fn)


def kernel_sparsity(masks: Any) -> float:
  """The fraction of pruned entries over the masked leaves."""
  return float(jaxprune.sparsity_summary(masks).sparsity)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std())


def cell(values: Sequence[float], percent: bool = True, digits: int = 2) -> str:
  """``mean ± std`` (one value: the value) of ``values``, in % with ``percent``."""
  if not len(values):
    return ""
  m, s = mean_std(values)
  k = 100.0 if percent else 1.0
  return f"{k * m:.{digits}f}" if len(values) == 1 else f"{k * m:.{digits}f} ± {k * s:.{digits}f}"


def sgd(lr: Any, momentum: Optional[float], weight_decay: float) -> optax.GradientTransformation:
  """SGD (with momentum if given) with decoupled-from-nothing L2 weight decay added to the
  gradients, as PyTorch's ``SGD(weight_decay=...)`` does."""
  tx = optax.sgd(lr, momentum=momentum or None)
  return optax.chain(optax.add_decayed_weights(weight_decay), tx) if weight_decay else tx


def cycle_learning_rate(opt: Config, steps: int) -> optax.Schedule:
  """The config's schedule over one cycle (restarted by ``reset_optimizer``)."""
  return optimizers.make_learning_rate(opt, steps)


class Runs:
  """The finished-run records of an experiment directory, keyed by run name."""

  def __init__(self, out_dir: Path, fingerprint: str, resume: bool, log: Callable):
    self.dir = out_dir / "runs"
    self.dir.mkdir(parents=True, exist_ok=True)
    self.fingerprint, self.resume, self.log = fingerprint, resume, log

  def get(self, name: str) -> Optional[dict]:
    path = self.dir / f"{name}.json"
    if not (self.resume and path.exists()):
      return None
    record = json.loads(path.read_text())
    if record.get("fingerprint") != self.fingerprint:
      return None
    self.log(f"==> {name}: already finished ({path}); reported without training")
    return record

  def put(self, record: dict) -> dict:
    record["fingerprint"] = self.fingerprint
    (self.dir / f"{record['name']}.json").write_text(json.dumps(record, indent=1))
    return record


def _bar(config: Config, total: int, desc: str):
  if not config.get("progress", True):
    return None
  from tqdm import tqdm

  return tqdm(total=total, desc=desc[:50], position=1, leave=False, unit="step", dynamic_ncols=True)


def _remaining_axis(ax, remaining_percent: Sequence[float]) -> None:
  ax.set_xscale("log")
  ax.invert_xaxis()
  ticks = [100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1]
  lo = min(remaining_percent)
  ax.set_xticks([t for t in ticks if t >= lo * 0.9])
  ax.set_xticklabels([f"{t:g}%" for t in ticks if t >= lo * 0.9])
  ax.minorticks_off()
  ax.set_xlabel("weights remaining (log scale)")
  ax.grid(True, alpha=0.3)


# ============================================================================ IMP runs (AP, PQ, DD)


def imp_run(
  config: Config,
  model: nn.Module,
  name: str,
  tx: optax.GradientTransformation,
  seed: int,
  images: jax.Array,
  labels: jax.Array,
  cycles: int,
  cycle_steps: int,
  measure_every: int,
  measure: Callable[[Trainer, int, bool], dict],
  log: Callable,
) -> dict:
  """Trains one ``jaxprune.imp`` run of ``cycles + 1`` cycles, calling ``measure(trainer, cycle,
  at_end)`` every ``measure_every`` steps and at each cycle's end; returns its record."""
  trainer = Trainer(
    model, tx, seed, images, labels, int(config.batch_size), min(measure_every, cycle_steps)
  )
  start = time.perf_counter()
  rows, points = [], []
  bar = _bar(config, (cycles + 1) * cycle_steps, name)
  for cycle in range(cycles + 1):
    done = 0
    while done < cycle_steps:
      n = min(measure_every, cycle_steps - done)
      trainer.advance(n)
      done += n
      if bar is not None:
        bar.update(n)
      point = measure(trainer, cycle, done == cycle_steps)
      point.update(cycle=cycle, step=trainer.step)
      points.append(point)
    info = jaxprune.get_cycle(trainer.state.opt_state)
    assert int(info.cycle) == cycle and bool(info.at_end), (name, cycle)
    row = dict(points[-1])
    row["sparsity"] = kernel_sparsity(trainer.masks)
    row["remaining"] = 1.0 - row["sparsity"]
    row["pruned_fraction"] = float(info.pruned_fraction)
    rows.append(row)
    log(
      f"[{name}] cycle {cycle:>2d}: {100 * row['remaining']:6.2f}% remaining, test acc "
      f"{row['test_accuracy']:.4f}"
      + "".join(
        f", {k} {row[k]:.4f}"
        for k in ("dnr", "train_accuracy", "pq_1_2", "learning_distance")
        if k in row
      )
    )
  if bar is not None:
    bar.close()
  return {
    "name": name,
    "seed": int(seed),
    "cycles": rows,
    "points": points,
    "train_time_s": time.perf_counter() - start,
  }


# ---------------------------------------------------------------------------- AP


def ap_tx(config: Config, with_ap: bool) -> optax.GradientTransformation:
  """Lottery-ticket IMP of ``config.ap``, with or without AP."""
  c = config.ap
  opt = config.optimizer
  inner = sgd(
    cycle_learning_rate(opt, int(c.cycle_steps)),
    opt.get("momentum", None),
    float(opt.get("weight_decay", 0.0)),
  )
  return jaxprune.imp(
    rate=float(c.rate),
    cycles=int(c.cycles),
    cycle_steps=int(c.cycle_steps),
    distribution=str(config.distribution),
    rewind="init",
    reset_optimizer=True,
    activate_while_pruning=float(c.activate_while_pruning) if with_ap else None,
    inner=inner,
  )


def run_ap(config: Config, experiment: runner.Experiment, runs: Runs) -> dict:
  """The AP / DNR study (see the module docstring)."""
  c, model, log = config.ap, experiment.model, experiment.log
  ds = experiment.dataset
  images, labels = experiment.data.train_images, experiment.data.train_labels
  rng = np.random.default_rng(int(c.dnr_seed))
  dnr_x = jnp.asarray(
    ds.train.images[np.sort(rng.permutation(len(ds.train))[: int(c.dnr_examples)])]
  )
  capture = hidden_pre_activations(model)
  test = experiment.data.test

  def measure(trainer: Trainer, cycle: int, at_end: bool) -> dict:
    rate = jaxprune.analysis.dead_neuron_rate(capture(trainer.state.params, dnr_x))
    point = {
      "dnr": rate.total,
      "dnr_layers": rate.leaves,
      "dead_units": sum(rate.dead_units.values()),
    }
    if at_end:
      point["test_accuracy"] = accuracy(model, trainer.state.params, test)
    return point

  records = []
  methods = [("imp", False), ("imp_ap", True)]
  for seed in config.seeds:
    for method, with_ap in methods:
      name = f"{method}_seed{seed}"
      record = runs.get(name)
      if record is None:
        record = imp_run(
          config, model, name, ap_tx(config, with_ap), int(seed), images, labels,
          int(c.cycles), int(c.cycle_steps), int(c.dnr_every), measure, log,
        )  # fmt: skip
        for row in record["cycles"]:
          mine = [p["dnr"] for p in record["points"] if p["cycle"] == row["cycle"]]
          row["dnr_mean"], row["dnr_end"] = float(np.mean(mine)), mine[-1]
        record.update(method=method, seed=int(seed))
        runs.put(record)
      records.append(record)
      if experiment.bar is not None:
        experiment.bar.update(1)
  rows = [
    {
      "method": r["method"],
      "seed": r["seed"],
      **{k: v for k, v in row.items() if k != "dnr_layers"},
    }
    for r in records
    for row in r["cycles"]
  ]
  cycles = int(c.cycles) + 1
  by = lambda m, k, key: [row[key] for row in rows if row["method"] == m and row["cycle"] == k]
  lines = [
    f"Test accuracy (%) at the end of each cycle and dynamic DNR (%, the hidden ReLUs' zero "
    f"outputs on {int(c.dnr_examples):,} training images, averaged over the cycle's "
    f"{int(c.cycle_steps) // int(c.dnr_every)} measurements), mean ± std over "
    f"{len(config.seeds)} seeds:",
    "",
    "| cycle | weights remaining | IMP: test acc | IMP + AP: test acc | IMP: DNR | IMP + AP: DNR "
    "| IMP: DNR at end | IMP + AP: DNR at end |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for k in range(cycles):
    rem = np.mean(by("imp", k, "remaining"))
    lines.append(
      f"| {k} | {100 * rem:.1f}% | {cell(by('imp', k, 'test_accuracy'))} | "
      f"{cell(by('imp_ap', k, 'test_accuracy'))} | {cell(by('imp', k, 'dnr_mean'), digits=1)} | "
      f"{cell(by('imp_ap', k, 'dnr_mean'), digits=1)} | {cell(by('imp', k, 'dnr_end'), digits=1)} "
      f"| {cell(by('imp_ap', k, 'dnr_end'), digits=1)} |"
    )
  if config.get("plots", True):
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (method, label) in enumerate([("imp", "IMP (lottery ticket)"), ("imp_ap", "IMP + AP")]):
      rem = [100 * np.mean(by(method, k, "remaining")) for k in range(cycles)]
      for ax, key in zip(axes, ("test_accuracy", "dnr_mean")):
        m = np.array([np.mean(by(method, k, key)) for k in range(cycles)]) * 100
        s = np.array([np.std(by(method, k, key)) for k in range(cycles)]) * 100
        ax.plot(rem, m, "o-", color=f"C{i}", label=label, markersize=3)
        ax.fill_between(rem, m - s, m + s, color=f"C{i}", alpha=0.2)
    for ax, ylabel in zip(axes, ("test accuracy (%)", "dynamic DNR (%)")):
      _remaining_axis(ax, rem)
      ax.set_ylabel(ylabel)
      ax.legend(fontsize=8)
    axes[0].set_title("LeNet-300-100 / MNIST: accuracy at each cycle's end")
    axes[1].set_title("dead hidden ReLU outputs, mean over each cycle")
    plots.save(plt, fig, experiment.out_dir / "ap.png")
  return {"rows": rows, "tables": "\n".join(lines), "records": records}


# ---------------------------------------------------------------------------- PQ


def pq_methods(config: Config) -> list[tuple[str, Any]]:
  """``(name, rate)`` of the PQ study: the lottery ticket's fixed rate and SAP's settings."""
  c = config.pq
  out: list[tuple[str, Any]] = [("lt", float(c.lt_rate))]
  for p, q in c.pq_settings:
    out.append((f"sap_p{p:g}_q{q:g}", jaxprune.pq_rate(float(p), float(q), eta=float(c.eta),
                                                       gamma=float(c.gamma), beta=float(c.beta))))  # fmt: skip
  return out


def run_pq(config: Config, experiment: runner.Experiment, runs: Runs) -> dict:
  """The SAP / PQ-index study (see the module docstring)."""
  c, model, log = config.pq, experiment.model, experiment.log
  images, labels = experiment.data.train_images, experiment.data.train_labels
  test = experiment.data.test
  opt = config.optimizer

  def measure(trainer: Trainer, cycle: int, at_end: bool) -> dict:
    if not at_end:
      return {}
    params, masks = trainer.state.params, trainer.masks
    return {
      "test_accuracy": accuracy(model, params, test),
      "pq_1_2": jaxprune.analysis.pq_index(params, 1.0, 2.0, masks=masks).total,
      "pq_0.5_1": jaxprune.analysis.pq_index(params, 0.5, 1.0, masks=masks).total,
    }

  records = []
  for seed in config.seeds:
    for method, rate in pq_methods(config):
      name = f"{method}_seed{seed}"
      record = runs.get(name)
      if record is None:
        tx = jaxprune.imp(
          rate=rate,
          cycles=int(c.cycles),
          cycle_steps=int(c.cycle_steps),
          distribution=str(config.distribution),
          rewind="init",
          reset_optimizer=True,
          inner=sgd(
            cycle_learning_rate(opt, int(c.cycle_steps)),
            opt.get("momentum", None),
            float(opt.get("weight_decay", 0.0)),
          ),
        )
        record = imp_run(
          config, model, name, tx, int(seed), images, labels, int(c.cycles),
          int(c.cycle_steps), int(c.cycle_steps), measure, log,
        )  # fmt: skip
        record.update(method=method, seed=int(seed))
        runs.put(record)
      records.append(record)
      if experiment.bar is not None:
        experiment.bar.update(1)
  rows = [{"method": r["method"], "seed": r["seed"], **row} for r in records for row in r["cycles"]]
  names = [m for m, _ in pq_methods(config)]
  cycles = int(c.cycles) + 1
  by = lambda m, k, key: [row[key] for row in rows if row["method"] == m and row["cycle"] == k]
  label = {"lt": "LT (20% per cycle)"}
  label.update({m: f"SAP (p={m.split('_')[1][1:]}, q={m.split('_')[2][1:]})" for m in names[1:]})
  head = " | ".join(f"{label[m]}: remaining | test acc" for m in names)
  lines = [
    f"Weights remaining (%) and test accuracy (%) at the end of each cycle, mean ± std over "
    f"{len(config.seeds)} seeds:",
    "",
    f"| cycle | {head} |",
    "|---|" + "---|---|" * len(names),
  ]
  for k in range(cycles):
    cells = " | ".join(
      f"{cell(by(m, k, 'remaining'), digits=1)} | {cell(by(m, k, 'test_accuracy'))}" for m in names
    )
    lines.append(f"| {k} | {cells} |")
  lines += [
    "",
    "PQ index I(1, 2) of the kept weights at the end of each cycle (mean over seeds):",
    "",
    "| cycle | " + " | ".join(label[m] for m in names) + " |",
    "|---|" + "---|" * len(names),
  ]
  for k in range(cycles):
    lines.append(
      f"| {k} | " + " | ".join(f"{np.mean(by(m, k, 'pq_1_2')):.4f}" for m in names) + " |"
    )
  if config.get("plots", True):
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    all_rem = []
    for i, m in enumerate(names):
      rem = [100 * np.mean(by(m, k, "remaining")) for k in range(cycles)]
      all_rem += rem
      acc = [100 * np.mean(by(m, k, "test_accuracy")) for k in range(cycles)]
      err = [100 * np.std(by(m, k, "test_accuracy")) for k in range(cycles)]
      axes[0].errorbar(rem, acc, yerr=err, fmt="o-", color=f"C{i}", label=label[m], markersize=3)
      axes[1].plot(range(cycles), rem, "o-", color=f"C{i}", label=label[m], markersize=3)
      axes[2].plot(rem, [np.mean(by(m, k, "pq_1_2")) for k in range(cycles)], "o-",
                   color=f"C{i}", label=label[m], markersize=3)  # fmt: skip
    _remaining_axis(axes[0], all_rem)
    _remaining_axis(axes[2], all_rem)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("cycle (prunes so far)")
    axes[1].set_ylabel("weights remaining (%)")
    axes[1].grid(True, alpha=0.3)
    axes[2].set_ylabel("PQ index I(1, 2) of the kept weights")
    axes[0].set_title("accuracy at each cycle's end")
    axes[1].set_title("how fast each method prunes")
    axes[2].set_title("sparsity of the trained weights")
    for ax in axes:
      ax.legend(fontsize=8)
    plots.save(plt, fig, experiment.out_dir / "pq.png")
  return {"rows": rows, "tables": "\n".join(lines), "records": records}


# ---------------------------------------------------------------------------- double descent


def run_double_descent(config: Config, experiment: runner.Experiment, runs: Runs) -> dict:
  """The sparse double-descent study (see the module docstring)."""
  c, model, log = config.double_descent, experiment.model, experiment.log
  ds = experiment.dataset
  test = experiment.data.test
  subset = np.sort(
    np.random.default_rng(int(c.subset_seed)).permutation(len(ds.train))[: int(c.train_examples)]
  )
  clean = data_lib.Split(ds.train.images[subset], ds.train.labels[subset])
  images = jnp.asarray(clean.images)
  opt = config.optimizer
  records = []
  for noise in c.noise:
    base = data_lib.Dataset(ds.name, ds.version, clean, ds.test, ds.num_classes, ds.mean, ds.std)
    noisy = data_lib.with_label_noise(base, float(noise), seed=int(c.noise_seed))
    labels = jnp.asarray(noisy.train.labels)
    train_noisy = evaluation.prepare_test_data(noisy.train, int(config.eval_batch_size))
    train_clean = evaluation.prepare_test_data(clean, int(config.eval_batch_size))
    flipped = float(np.mean(noisy.train.labels != clean.labels))
    for seed in config.seeds:
      name = f"noise{float(noise):g}_seed{seed}"
      record = runs.get(name)
      if record is None:
        tx = jaxprune.imp(
          rate=float(c.rate),
          cycles=int(c.rounds),
          cycle_steps=int(c.round_steps),
          distribution="global",
          prune=str(c.prune),
          rewind="init",
          reset_optimizer=True,
          inner=sgd(
            cycle_learning_rate(opt, int(c.round_steps)),
            opt.get("momentum", None),
            float(opt.get("weight_decay", 0.0)),
          ),
        )
        init = train.init_state(model, tx, int(seed), ds.image_shape).params

        def measure(trainer: Trainer, cycle: int, at_end: bool, init=init) -> dict:
          if not at_end:
            return {}
          params = trainer.state.params
          # The round started from the initialisation with this round's masks (rewound).
          start = jaxprune.apply_masks(init, trainer.masks)
          return {
            "test_accuracy": accuracy(model, params, test),
            "train_accuracy": accuracy(model, params, train_noisy),
            "train_clean_accuracy": accuracy(model, params, train_clean),
            "learning_distance": jaxprune.analysis.learning_distance(params, start).total,
          }

        record = imp_run(
          config, model, name, tx, int(seed), images, labels, int(c.rounds),
          int(c.round_steps), int(c.round_steps), measure, log,
        )  # fmt: skip
        record.update(noise=float(noise), seed=int(seed), flipped=flipped)
        runs.put(record)
      records.append(record)
      if experiment.bar is not None:
        experiment.bar.update(1)
  rows = [{"noise": r["noise"], "seed": r["seed"], **row} for r in records for row in r["cycles"]]
  noises = [float(n) for n in c.noise]
  rounds = int(c.rounds) + 1
  by = lambda n, k, key: [row[key] for row in rows if row["noise"] == n and row["cycle"] == k]
  head = " | ".join(
    f"{100 * n:g}% noise: test acc | train acc (noisy labels) | learning distance" for n in noises
  )
  lines = [
    f"Per round (IMP, {100 * float(c.rate):g}% of the hidden weights per round, output layer "
    f"unpruned, rewound to init; {int(c.train_examples):,} training images with symmetric label "
    f"noise), at the round's end, {'mean ± std over ' if len(config.seeds) > 1 else ''}"
    f"{len(config.seeds)} seed(s):",
    "",
    f"| round | hidden weights remaining | {head} |",
    "|---|---|" + "---|---|---|" * len(noises),
  ]
  for k in range(rounds):
    rem = np.mean(by(noises[0], k, "remaining"))
    cells = " | ".join(
      f"{cell(by(n, k, 'test_accuracy'))} | {cell(by(n, k, 'train_accuracy'))} | "
      f"{cell(by(n, k, 'learning_distance'), percent=False, digits=1)}"
      for n in noises
    )
    lines.append(f"| {k} | {100 * rem:.2f}% | {cells} |")
  if config.get("plots", True):
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    all_rem = []
    for i, n in enumerate(noises):
      rem = [100 * np.mean(by(n, k, "remaining")) for k in range(rounds)]
      all_rem += rem
      for ax, key, scale in zip(
        axes, ("test_accuracy", "train_accuracy", "learning_distance"), (100, 100, 1)
      ):
        v = [scale * np.mean(by(n, k, key)) for k in range(rounds)]
        ax.plot(rem, v, "o-", color=f"C{i}", label=f"{100 * n:g}% label noise", markersize=3)
    for ax, ylabel in zip(
      axes, ("test accuracy (%)", "train accuracy on the noisy labels (%)", "learning distance")
    ):
      _remaining_axis(ax, all_rem)
      ax.set_ylabel(ylabel)
      ax.legend(fontsize=8)
    axes[0].set_title("test accuracy (clean test set)")
    axes[1].set_title("fit of the noisy training labels")
    axes[2].set_title("||w_end - w_start||_2 of each round")
    plots.save(plt, fig, experiment.out_dir / "double_descent.png")
  return {"rows": rows, "tables": "\n".join(lines), "records": records}


# ---------------------------------------------------------------------------- early bird


def run_early_bird(config: Config, experiment: runner.Experiment, runs: Runs) -> dict:
  """The early-bird study (see the module docstring)."""
  c, model, log = config.early_bird, experiment.model, experiment.log
  images, labels = experiment.data.train_images, experiment.data.train_labels
  test = experiment.data.test
  per_epoch = data_lib.batches_per_epoch(len(labels), int(config.batch_size))
  per_draw = per_epoch // int(c.draws_per_epoch)
  epochs = int(c.epochs)
  draws = epochs * int(c.draws_per_epoch)
  total = draws * per_draw
  schedule = optimizers.make_learning_rate(config.optimizer, total)
  opt = config.optimizer
  wd, momentum = float(opt.get("weight_decay", 0.0)), opt.get("momentum", None)
  ratios = [float(r) for r in c.ratios]
  tracker = jaxprune.early_bird.EarlyBird(window=int(c.window), threshold=float(c.threshold))
  at_epoch = lambda draw: draw / int(c.draws_per_epoch)
  records = []
  for seed in config.seeds:
    name = f"dense_seed{seed}"
    masks_dir = experiment.out_dir / "masks" / name
    search = runs.get(name)
    if search is None:
      start = time.perf_counter()
      trainer = Trainer(
        model, sgd(schedule, momentum, wd), int(seed), images, labels,
        int(config.batch_size), per_draw,
      )  # fmt: skip
      init = trainer.state.params
      states = {r: tracker.init() for r in ratios}
      history: dict[float, list] = {r: [] for r in ratios}
      found: dict[str, int] = {}
      snapshots: dict[int, Any] = {}
      draw_rows = []
      bar = _bar(config, total, name)
      for draw in range(draws + 1):
        # As the authors' main.py: the masks of the weights at the start of each interval.
        params = trainer.state.params
        row: dict[str, Any] = {"draw": draw, "epoch": at_epoch(draw)}
        for r in ratios:
          masks = jaxprune.prune(params, r, distribution="global")
          history[r].append(masks)
          states[r] = tracker.update(states[r], masks)
          row[f"max_distance_{r:g}"] = max(states[r].distances)
          if states[r].emerged and f"{r:g}" not in found:
            found[f"{r:g}"] = draw
            snapshots[draw] = params
        if draw % int(c.draws_per_epoch) == 0:
          row["test_accuracy"] = accuracy(model, params, test)
          log(
            f"[{name}] epoch {row['epoch']:>4.1f}: test acc {row['test_accuracy']:.4f}, largest "
            "mask distance "
            + ", ".join(f"p={r:g}: {row[f'max_distance_{r:g}']:.3f}" for r in ratios)
          )
        draw_rows.append(row)
        if draw < draws:
          trainer.advance(per_draw)
          if bar is not None:
            bar.update(per_draw)
      if bar is not None:
        bar.close()
      distance = {
        f"{r:g}": [
          [jaxprune.early_bird.mask_distance(a, b) for b in history[r][:: int(c.draws_per_epoch)]]
          for a in history[r][:: int(c.draws_per_epoch)]
        ]
        for r in ratios
      }
      masks_dir.mkdir(parents=True, exist_ok=True)
      for r in ratios:
        for key, draw in (("eb", found.get(f"{r:g}")), ("end", draws)):
          if draw is not None:
            arrays = jaxprune.masks.host_arrays(history[r][draw])
            np.savez_compressed(masks_dir / f"{key}_{r:g}.npz", **arrays)
      for draw, params in snapshots.items():
        arrays = jaxprune.masks.host_arrays(params)
        np.savez_compressed(masks_dir / f"params_draw{draw}.npz", **arrays)
      np.savez_compressed(masks_dir / "params_init.npz", **jaxprune.masks.host_arrays(init))
      search = runs.put(
        {
          "name": name,
          "seed": int(seed),
          "draws": draw_rows,
          "emerged_at_draw": found,
          "distance_matrix_epochs": distance,
          "final_accuracy": accuracy(model, trainer.state.params, test),
          "train_time_s": time.perf_counter() - start,
        }
      )
    records.append(search)
    if experiment.bar is not None:
      experiment.bar.update(1)
    like = train.init_state(model, optax.sgd(0.0), int(seed), tuple(images.shape[1:])).params

    def load(path: Path, like=like) -> Any:
      with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
      paths, treedef = jax.tree_util.tree_flatten_with_path(like)
      return jax.tree.unflatten(
        treedef, [arrays.get(jaxprune.leaves.path_str(p)) for p, _ in paths]
      )

    for r in ratios:
      eb = search["emerged_at_draw"].get(f"{r:g}")
      tickets = [("end_rewind", draws, 0)]
      if eb is not None:
        tickets = [("eb_rewind", eb, 0), ("end_rewind", draws, 0), ("eb_train", eb, eb)]
      for kind, drawn, offset in tickets:
        name = f"{kind}_p{r:g}_seed{seed}"
        record = runs.get(name)
        if record is None:
          start = time.perf_counter()
          masks = load(masks_dir / f"{'end' if kind == 'end_rewind' else 'eb'}_{r:g}.npz")
          masks = jax.tree.map(lambda m: jnp.asarray(m, bool), masks)
          source = "params_init.npz" if offset == 0 else f"params_draw{drawn}.npz"
          params = jaxprune.apply_masks(load(masks_dir / source), masks)
          skip = offset * per_draw
          shifted = lambda step, skip=skip: schedule(step + skip)
          tx = jaxprune.static_sparse(masks=masks, inner=sgd(shifted, momentum, wd))
          trainer = Trainer(
            model, tx, int(seed), images, labels, int(config.batch_size), per_draw, params=params
          )
          # The batches the dense run would have read from there on.
          trainer.position = data_lib.data_position(skip, len(labels), int(config.batch_size))
          steps = total - skip
          bar = _bar(config, steps, name)
          trainer.advance(steps)
          if bar is not None:
            bar.update(steps)
            bar.close()
          record = runs.put(
            {
              "name": name,
              "kind": kind,
              "ratio": r,
              "seed": int(seed),
              "drawn_at_epoch": at_epoch(drawn),
              "trained_epochs": (total - skip) / per_epoch,
              "test_accuracy": accuracy(model, trainer.state.params, test),
              "sparsity": kernel_sparsity(trainer.masks),
              "train_time_s": time.perf_counter() - start,
            }
          )
          log(
            f"[{name}] drawn at epoch {at_epoch(drawn):g}, trained {record['trained_epochs']:g} "
            f"epochs: test acc {record['test_accuracy']:.4f}"
          )
        records.append(record)
  searches = [r for r in records if r["name"].startswith("dense_")]
  tickets = [r for r in records if not r["name"].startswith("dense_")]
  rows = [
    {k: t[k] for k in ("kind", "ratio", "seed", "drawn_at_epoch", "test_accuracy")} for t in tickets
  ]
  dense = [s["final_accuracy"] for s in searches]
  lines = [
    f"Dense LeNet-300-100, {epochs} epochs: test accuracy {cell(dense)}% ({len(searches)} "
    f"seeds). Masks drawn {int(c.draws_per_epoch)} times per epoch; early-bird point (in epochs: "
    f"the masks of the weights after that much training, within {float(c.threshold):g} of the "
    f"{int(c.window) - 1} masks drawn before) and test accuracy (%) of the tickets, mean ± std "
    "over seeds:",
    "",
    "| pruned | EB point, epochs (per seed) | EB ticket, rewound to init | end-of-training ticket, "
    "rewound to init | EB train (fine-tuned from the EB point) | training cost of EB train "
    "(dense = 100%) |",
    "|---|---|---|---|---|---|",
  ]
  for r in ratios:
    ebs = [s["emerged_at_draw"].get(f"{r:g}") for s in searches]
    get = lambda kind: [
      t["test_accuracy"] for t in tickets if t["kind"] == kind and t["ratio"] == r
    ]
    # EB train: dense until the EB point, then the rest with a (1 - r) fraction of the weights.
    cost = [(at_epoch(e) + (epochs - at_epoch(e)) * (1 - r)) / epochs for e in ebs if e is not None]
    lines.append(
      f"| {100 * r:g}% | {', '.join('-' if e is None else f'{at_epoch(e):.2f}' for e in ebs)} | "
      f"{cell(get('eb_rewind'))} | {cell(get('end_rewind'))} | {cell(get('eb_train'))} | "
      f"{cell(cost, digits=0)}% |"
    )
  if config.get("plots", True):
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    s0 = searches[0]
    for i, r in enumerate(ratios):
      rows0 = s0["draws"][int(c.window) - 1 :]
      axes[0].plot([row["epoch"] for row in rows0], [row[f"max_distance_{r:g}"] for row in rows0],
                   "o-", color=f"C{i}", label=f"p = {100 * r:g}%", markersize=2)  # fmt: skip
      eb = s0["emerged_at_draw"].get(f"{r:g}")
      if eb is not None:
        axes[0].axvline(at_epoch(eb), color=f"C{i}", linestyle=":", linewidth=1)
    axes[0].axhline(float(c.threshold), color="k", linestyle="--", linewidth=1)
    axes[0].set_xlabel("epoch (masks of the weights after that much training)")
    axes[0].set_ylabel(f"largest distance to the {int(c.window) - 1} masks before")
    axes[0].set_title(f"seed {s0['seed']}: the early-bird criterion (dotted: emerged)")
    axes[0].grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    matrix = np.asarray(s0["distance_matrix_epochs"][f"{ratios[-1]:g}"])
    im = axes[1].imshow(matrix, cmap="viridis_r", origin="lower")
    fig.colorbar(im, ax=axes[1])
    axes[1].set_title(f"mask distance between epochs, p = {100 * ratios[-1]:g}%")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("epoch")
    width = 0.25
    kinds = [
      ("eb_rewind", "EB ticket (rewound)"),
      ("end_rewind", "end ticket (rewound)"),
      ("eb_train", "EB train (fine-tuned)"),
    ]
    for j, (kind, label) in enumerate(kinds):
      vals = [
        [t["test_accuracy"] for t in tickets if t["kind"] == kind and t["ratio"] == r]
        for r in ratios
      ]
      m = [100 * np.mean(v) if v else np.nan for v in vals]
      s = [100 * np.std(v) if v else 0 for v in vals]
      axes[2].bar(np.arange(len(ratios)) + (j - 1) * width, m, width, yerr=s, label=label)
    axes[2].axhline(100 * np.mean(dense), color="k", linestyle="--", linewidth=1, label="dense")
    axes[2].set_xticks(range(len(ratios)))
    axes[2].set_xticklabels([f"{100 * r:g}% pruned" for r in ratios])
    accs = [100 * t["test_accuracy"] for t in tickets] + [100 * d for d in dense]
    axes[2].set_ylim(max(min(accs) - 0.5, 0), max(accs) + 0.3)
    axes[2].set_ylabel("test accuracy (%)")
    axes[2].set_title("tickets after training")
    axes[2].legend(fontsize=8, loc="lower left")
    plots.save(plt, fig, experiment.out_dir / "early_bird.png")
  return {"rows": rows, "tables": "\n".join(lines), "records": records}


# ============================================================================ the runner


def validate(config: Config) -> None:
  """Checks a study config.

  Args:
      config: the config (``study`` in `STUDIES` and its group).

  Raises:
      ValueError: for an unknown study, a missing group, or a bad setting.
  """
  study = config.get("study", None)
  if study not in STUDIES:
    raise ValueError(f"study must be one of {STUDIES}, got {study!r}")
  group = config.get(study, None)
  if group is None:
    raise ValueError(f"the study {study!r} needs the config group {study!r}")
  if study in ("ap", "pq"):
    if int(group.cycles) < 1 or int(group.cycle_steps) < 1:
      raise ValueError(f"{study}.cycles and {study}.cycle_steps must be >= 1")
  if study == "ap":
    ap_tx(config, True)  # a bad rate or AP share fails here
    if int(group.cycle_steps) % int(group.dnr_every):
      raise ValueError(
        f"ap.dnr_every ({group.dnr_every}) must divide ap.cycle_steps ({group.cycle_steps})"
      )
  if study == "pq":
    pq_methods(config)
  if study == "double_descent":
    for n in group.noise:
      if not 0 <= float(n) <= 1:
        raise ValueError(f"double_descent.noise must lie in [0, 1], got {n}")
    if int(group.train_examples) < int(config.batch_size):
      raise ValueError("double_descent.train_examples must hold at least one batch")
  if study == "early_bird":
    jaxprune.early_bird.EarlyBird(int(group.window), float(group.threshold)).init()
    if int(group.draws_per_epoch) < 1:
      raise ValueError("early_bird.draws_per_epoch must be >= 1")
    for r in group.ratios:
      if not 0 < float(r) < 1:
        raise ValueError(f"early_bird.ratios must lie in (0, 1), got {r}")


def total_runs(config: Config) -> int:
  seeds = len(config.seeds)
  study = config.study
  if study == "ap":
    return 2 * seeds
  if study == "pq":
    return len(pq_methods(config)) * seeds
  if study == "double_descent":
    return len(config.double_descent.noise) * seeds
  return seeds


STUDY_RUNNERS = {
  "ap": run_ap,
  "pq": run_pq,
  "double_descent": run_double_descent,
  "early_bird": run_early_bird,
}


def run(config: Config) -> dict[str, Any]:
  """Runs the study of ``config`` and writes its outputs.

  Args:
      config: a study config (``experiments/configs/mnist_ap.py``, ``mnist_pq.py``,
          ``mnist_early_bird.py``, ``mnist_double_descent.py``).

  Returns:
      ``rows``, ``tables`` (markdown), ``records``, ``wall_time_s`` and ``output_dir``.

  Raises:
      ValueError: for a bad config.
      FileNotFoundError: if the dataset is not prepared.
  """
  validate(config)
  study = str(config.study)
  with runner.start(config, study, total_runs(config)) as experiment:
    log = experiment.log
    log(
      f"Study {study!r}: {config.model} on {config.dataset}, seeds {list(config.seeds)}, "
      f"jax backend {jax.default_backend()}"
    )
    runs = Runs(
      experiment.out_dir,
      config_lib.fingerprint(config),
      bool(config.get("resume", True)),
      log,
    )
    result = STUDY_RUNNERS[study](config, experiment, runs)
    out = experiment.out_dir
    with open(out / "summary.json", "w") as f:
      json.dump({"study": study, "rows": result["rows"], "wall_time_s": experiment.elapsed()},
                f, indent=1, default=float)  # fmt: skip
    if result["rows"]:
      keys = list(dict.fromkeys(k for row in result["rows"] for k in row))
      flat = [
        {k: row.get(k, "") for k in keys if not isinstance(row.get(k), dict)}
        for row in result["rows"]
      ]
      outputs.write_rows(flat, out / "summary.csv")
    (out / "summary.md").write_text(result["tables"] + "\n")
    log("")
    log(result["tables"])
    wall = experiment.finish(
      f"summary.{{json,csv,md}}, {study}.png and runs/" if config.get("plots", True) else "summary"
    )
    return {**result, "wall_time_s": wall, "output_dir": str(out)}
