"""DropNet's node-pruning curve (Tan & Motani 2020) on an MLP (``experiments/configs/mnist_dropnet.py``).

Per seed and method: train the dense network for ``cycle_steps``, then ``cycles`` times: remove
``fraction`` (20%) of the remaining hidden units, rewind the survivors to their initial weights
(``rewind=True``, as the paper; ``False`` keeps training the trained ones) and train
``cycle_steps`` again. The units removed are physically cut out (`jaxprune.structured.slim`, then
`jaxprune.structured.resize_module`), so every cycle trains a smaller MLP. Methods:

* ``dropnet``: the units of lowest mean |post-activation| over ``calibration_batches`` training
  batches, one threshold over all layers (the paper's "min");
* ``dropnet_layer``: the same, every layer losing ``fraction`` of its own units ("min_layer");
* ``random``: random units, one threshold over all layers (the paper's random baseline).

Every cycle records the test accuracy and the fraction of hidden units left; outputs under
``output_dir``: ``runs/<method>_s<seed>.json``, ``summary.csv``, ``summary.md`` and
``dropnet.png`` (accuracy against the units left, mean and standard deviation over seeds).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments import config as config_lib
from experiments import models
from experiments import structured as st
from jaxprune import structured
from jaxprune.structured import importance

METHODS = ("dropnet", "dropnet_layer", "random")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a DropNet config.

  Args:
      config: the config.

  Raises:
      ValueError: for an unknown method or model, a fraction outside (0, 1), counts below 1.
  """
  unknown = [m for m in config.methods if m not in METHODS]
  if unknown:
    raise ValueError(f"dropnet: unknown methods {unknown}; valid: {', '.join(METHODS)}")
  if not 0.0 < float(config.fraction) < 1.0:
    raise ValueError(f"dropnet: fraction must lie in (0, 1), got {config.fraction}")
  for name in ("cycles", "cycle_steps", "calibration_batches", "batch_size"):
    if int(config[name]) < 1:
      raise ValueError(f"dropnet: {name} must be at least 1, got {config[name]}")
  models.get_model(config.model, 10)


def prune_cycle(module, variables, init, method, config, data, seed, x):
  """One DropNet cut: ``(module, trained variables, init variables)`` of the smaller network."""
  fn = lambda v, x: module.apply(v, x, train=False)
  groups = structured.dependency_groups(fn, variables, x)
  q = float(config.fraction)
  if method == "random":
    keeps = importance.select(
      groups, importance.random(groups, seed), q, scope="global", normalize=None
    )
  else:
    scores = st.dropnet_scores(module, variables, groups, data, config, seed)
    scope = "global" if method == "dropnet" else "per_group"
    keeps = importance.select(groups, scores, q, scope=scope, normalize=None)
  bar = bool(config.progress)
  small, small_fn = structured.slim(fn, variables, groups, keeps, progress_bar=bar)
  small_init, _ = structured.slim(fn, init, groups, keeps, progress_bar=bar)
  resized = structured.resize_module(
    module, small, x, like=small_fn, train=False, rtol=1e-3, atol=1e-4
  )
  return resized, st._fresh(small), st._fresh(small_init)


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs the DropNet curve of ``config`` and writes its outputs.

  Args:
      config: a DropNet config (``experiments/configs/mnist_dropnet.py``).

  Returns:
      ``records`` (one per method and seed), ``rows`` (the summary), ``wall_time_s`` and
      ``output_dir``.

  Raises:
      ValueError: for a bad config.
      FileNotFoundError: if the dataset is not prepared.
  """
  validate(config)
  start = time.time()
  out = Path(config.output_dir)
  (out / "runs").mkdir(parents=True, exist_ok=True)
  (out / "config.json").write_text(config.to_json_best_effort(indent=1))
  fingerprint = config_lib.fingerprint(config)
  data = st._load(config)
  model = models.get_model(config.model, data.num_classes)
  x = data.test_x[:64]
  records = []
  for seed in config.seeds:
    seed = int(seed)
    for method in config.methods:
      path = out / "runs" / f"{method}_s{seed}.json"
      if path.exists() and json.loads(path.read_text()).get("fingerprint") == fingerprint:
        records.append(json.loads(path.read_text()))
        continue
      init = st._fresh(model.init(jax.random.key(seed), data.train_x[:2], train=False))
      total = None
      module, variables, start_vars = model, None, init
      curve = []
      for cycle in range(int(config.cycles) + 1):
        if cycle:
          module, variables, small_init = prune_cycle(
            module, variables, start_vars, method, config, data, seed + cycle, x
          )
          start_vars = small_init if config.rewind else variables
        variables = st.train(
          module,
          start_vars,
          data,
          steps=int(config.cycle_steps),
          lr=float(config.learning_rate),
          seed=seed * 1000 + cycle,
          config=config,
          desc=f"{method} s{seed} cycle {cycle}",
        )
        if not config.rewind:
          start_vars = variables
        units = sum(
          int(np.shape(variables["params"][k]["kernel"])[-1]) for k in variables["params"]
        )
        units -= data.num_classes  # the output layer's units are not pruned
        total = total or units
        acc = st.accuracy(module, variables, data)
        curve.append(
          {"cycle": cycle, "units": units, "units_left": units / total, "test_accuracy": acc}
        )
        st.tqdm_write(
          f"{method} s{seed} cycle {cycle}: {units} units ({100 * units / total:.1f}%), acc {100 * acc:.2f}%"
        )
      record = {"method": method, "seed": seed, "curve": curve, "fingerprint": fingerprint}
      path.write_text(json.dumps(record, indent=1))
      records.append(record)
  rows = summarize(records)
  write_outputs(rows, out, config)
  return {
    "records": records,
    "rows": rows,
    "wall_time_s": time.time() - start,
    "output_dir": str(out),
  }


def summarize(records) -> list[dict]:
  """Mean and standard deviation over seeds of each method's accuracy at every cycle."""
  rows = []
  for method in dict.fromkeys(r["method"] for r in records):
    runs = [r["curve"] for r in records if r["method"] == method]
    for cycle in range(min(len(c) for c in runs)):
      acc = [c[cycle]["test_accuracy"] for c in runs]
      left = [c[cycle]["units_left"] for c in runs]
      rows.append(
        {
          "method": method,
          "cycle": cycle,
          "units_left": float(np.mean(left)),
          "test_accuracy": float(np.mean(acc)),
          "test_accuracy_std": float(np.std(acc)),
          "seeds": len(runs),
        }
      )
  return rows


def write_outputs(rows, out: Path, config) -> None:
  with open(out / "summary.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  methods = list(dict.fromkeys(r["method"] for r in rows))
  cycles = sorted({r["cycle"] for r in rows})
  head = (
    "| cycle | units left | " + " | ".join(methods) + " |\n|---|---|" + "---|" * len(methods) + "\n"
  )
  lines = []
  for c in cycles:
    cells = []
    for m in methods:
      r = next(r for r in rows if r["method"] == m and r["cycle"] == c)
      cells.append(f"{100 * r['test_accuracy']:.2f} ± {100 * r['test_accuracy_std']:.2f}")
    left = next(r for r in rows if r["cycle"] == c)["units_left"]
    lines.append(f"| {c} | {100 * left:.1f}% | " + " | ".join(cells) + " |")
  table = head + "\n".join(lines) + "\n"
  (out / "summary.md").write_text(
    f"# DropNet node pruning, {config.model} on {config.dataset}\n\n{config.cycle_steps} steps per "
    f"cycle, {config.fraction:.0%} of the units removed per cycle, rewind={config.rewind}, seeds "
    f"{list(config.seeds)}. Test accuracy (%), mean ± std over seeds.\n\n" + table
  )
  print(table)
  if not config.plots:
    return
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for m in methods:
    pts = [r for r in rows if r["method"] == m]
    ax.errorbar(
      [100 * r["units_left"] for r in pts],
      [100 * r["test_accuracy"] for r in pts],
      yerr=[100 * r["test_accuracy_std"] for r in pts],
      marker="o",
      capsize=2,
      label=m,
    )
  ax.set_xscale("log")
  ax.invert_xaxis()
  ax.set_xlabel("hidden units left (%)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"DropNet node pruning: {config.model} on {config.dataset}")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(out / "dropnet.png", dpi=120)
  plt.close(fig)
