"""i-SpaSP (Wolfe & Kyrillidis 2021) against L1 and random structured pruning on MNIST MLPs.

Per model (``two_layer``: 784-500-10; ``lenet300_100``) and seed: train the dense network, then
for each fraction of hidden units removed (the same in every hidden layer) and each method, choose
the units to keep and remove them physically (`jaxprune.structured.slim` on the groups that
`jaxprune.structured.dependency_groups` reads off the model):

* ``ispasp``: `jaxprune.structured.ispasp` on ``calibration`` training images, ``iterations``
  iterations per layer, the layers in order (each reading the earlier ones pruned);
* ``l1``: the L1 norm of each unit's weights in every member of its group (its kernel column and
  bias, the next kernel's row), per layer (`jaxprune.structured.importance.magnitude`);
* ``random``: uniformly random units (`jaxprune.structured.importance.random`).

The slimmed network is evaluated as it is (its test error, and the output residual i-SpaSP
minimises: ``||f_S(x) - f(x)||^2 / ||f(x)||^2`` of the logits on 2,000 test images), then after
fine-tuning ``finetune_steps`` updates.
Outputs: ``runs/``, ``summary.md``, ``summary.csv``, ``ispasp.png``.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import config as config_lib
from experiments import loops, models, plots
from experiments import structured as st
from jaxprune import structured
from jaxprune.structured import importance

METHODS = ("ispasp", "l1", "random")
MODELS = {"two_layer": (500,), "lenet300_100": (300, 100)}


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks an i-SpaSP config.

  Raises:
    ValueError: for an unknown method or model, or a ratio outside [0, 1).
  """
  unknown = [m for m in config.methods if m not in METHODS]
  if unknown:
    raise ValueError(f"ispasp: unknown methods {unknown}; valid: {', '.join(METHODS)}")
  bad = [m for m in config.networks if m not in MODELS]
  if bad:
    raise ValueError(f"ispasp: unknown models {bad}; valid: {', '.join(MODELS)}")
  for r in config.ratios:
    if not 0.0 <= float(r) < 1.0:
      raise ValueError(f"ispasp: ratios must be in [0, 1), got {r}")


def _sgd(config, lr: float, steps: int) -> optax.GradientTransformation:
  return optax.sgd(optax.cosine_decay_schedule(lr, steps), momentum=float(config.momentum))


def _keeps(method, fn, variables, groups, ratio, calibration, config, seed) -> list:
  if method == "ispasp":
    return structured.ispasp(
      fn, variables, groups, ratio, calibration, iterations=int(config.iterations)
    )
  if method == "l1":
    scores = importance.magnitude(variables, groups, p=1)
  else:
    scores = importance.random(groups, seed)
  return [np.asarray(k) for k in importance.select(groups, scores, ratio, normalize=None)]


def _seed(config, data, name: str, seed: int) -> list[dict]:
  model = models.LeNet300100(num_classes=data.num_classes, hidden=MODELS[name])
  fn = lambda v, x: model.apply(v, x)  # noqa: E731
  n, bs, bar = int(config.num_train_steps), int(config.batch_size), bool(config.progress)
  variables = model.init(jax.random.key(seed), data.train_x[:1])
  variables, _ = loops.fit(
    fn, variables, _sgd(config, float(config.lr), n), data, steps=n, batch_size=bs, seed=seed,
    desc=f"{name} s{seed} dense", enabled=bar,
  )  # fmt: skip
  dense_acc = loops.accuracy(fn, variables, data)
  rng = np.random.default_rng(seed)
  calibration = data.train_x[
    jnp.asarray(rng.permutation(len(data.train_y))[: int(config.calibration)])
  ]
  groups = structured.dependency_groups(fn, variables, calibration[:8])
  out = [{"model": name, "seed": seed, "method": "dense", "ratio": 0.0, "accuracy": dense_acc}]
  for ratio in [float(r) for r in config.ratios]:
    for method in config.methods:
      t = time.time()
      keeps = _keeps(method, fn, variables, groups, ratio, calibration, config, seed)
      seconds = time.time() - t
      small, small_fn = structured.slim(fn, variables, groups, keeps)
      apply = jax.jit(small_fn)
      before = loops.accuracy(apply, small, data)
      # What i-SpaSP minimises: the distance of the pruned network's outputs to the dense ones.
      x = data.test_x[:2000]
      dense_out = fn(variables, x)
      residual = float(jnp.sum((apply(small, x) - dense_out) ** 2) / jnp.sum(dense_out**2))
      small, _ = loops.fit(
        apply, small, _sgd(config, float(config.finetune_lr), int(config.finetune_steps)), data,
        steps=int(config.finetune_steps), batch_size=bs, seed=seed + 1000,
        desc=f"{name} s{seed} {method} {ratio:g}", enabled=bar,
      )  # fmt: skip
      after = loops.accuracy(apply, small, data)
      out.append(
        {
          "model": name,
          "seed": seed,
          "method": method,
          "ratio": ratio,
          "units": [int(k.sum()) for k in keeps],
          "accuracy_pruned": before,
          "output_residual": residual,
          "accuracy": after,
          "selection_seconds": seconds,
        }
      )
      st.tqdm_write(
        f"{name} s{seed} {method} {ratio:g}: units {out[-1]['units']}, error "
        f"{100 * (1 - before):.2f}% pruned, {100 * (1 - after):.2f}% fine-tuned"
      )
  return out


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs the i-SpaSP experiment of ``config`` and writes its outputs.

  Returns:
    ``records``, ``rows``, ``wall_time_s`` and ``output_dir``.
  """
  validate(config)
  start = time.time()
  out = Path(config.output_dir)
  (out / "runs").mkdir(parents=True, exist_ok=True)
  (out / "config.json").write_text(config.to_json_best_effort(indent=1))
  fingerprint = config_lib.fingerprint(config)
  data = loops.load(config)
  records = []
  for name in config.networks:
    for seed in config.seeds:
      path = out / "runs" / f"{name}_s{int(seed)}.json"
      record = loops.cached(path, fingerprint)
      if record is None:
        record = {"fingerprint": fingerprint, "rows": _seed(config, data, name, int(seed))}
        path.write_text(json.dumps(record, indent=1))
      records += record["rows"]
  rows = write_outputs(records, out, config, time.time() - start)
  return {
    "records": records,
    "rows": rows,
    "wall_time_s": time.time() - start,
    "output_dir": str(out),
  }


def write_outputs(records, out: Path, config, wall: float) -> list[dict]:
  """``summary.csv``, ``summary.md`` and ``ispasp.png``; returns the rows."""
  rows = []
  for name in dict.fromkeys(r["model"] for r in records):
    for method in ("dense",) + tuple(config.methods):
      for ratio in dict.fromkeys(r["ratio"] for r in records if r["method"] == method):
        rs = [r for r in records if (r["model"], r["method"], r["ratio"]) == (name, method, ratio)]
        if not rs:
          continue
        rows.append(
          {
            "model": name,
            "method": method,
            "ratio": ratio,
            "units": rs[0].get("units"),
            "error": [1 - r["accuracy"] for r in rs],
            "error_pruned": [1 - r.get("accuracy_pruned", r["accuracy"]) for r in rs],
            "seconds": float(np.mean([r.get("selection_seconds", 0.0) for r in rs])),
            "residual": [r.get("output_residual", 0.0) for r in rs],
          }
        )
  with open(out / "summary.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(
      ["model", "method", "ratio", "units", "residual", "err_pruned", "err_finetuned", "seconds"]
    )
    for r in rows:
      w.writerow([
        r["model"], r["method"], r["ratio"], r["units"], f"{np.mean(r['residual']):.4f}",
        f"{100 * np.mean(r['error_pruned']):.3f}",
        f"{100 * np.mean(r['error']):.3f}", f"{r['seconds']:.2f}",
      ])  # fmt: skip
  parts = []
  for name in dict.fromkeys(r["model"] for r in rows):
    ratios = [x for x in dict.fromkeys(r["ratio"] for r in rows if r["model"] == name) if x > 0]
    dense = next(r for r in rows if r["model"] == name and r["method"] == "dense")
    body = []
    for ratio in ratios:
      cells = [
        f"{ratio:.0%}",
        str(next(r["units"] for r in rows if r["ratio"] == ratio and r["model"] == name)),
      ]
      for method in config.methods:
        r = next(r for r in rows if (r["model"], r["method"], r["ratio"]) == (name, method, ratio))
        cells.append(f"{np.mean(r['residual']):.3f}")
      for key in ("error_pruned", "error"):
        means = {
          r["method"]: np.mean(r[key]) for r in rows if r["model"] == name and r["ratio"] == ratio
        }
        best = min(means.values())
        for method in config.methods:
          r = next(
            r for r in rows if (r["model"], r["method"], r["ratio"]) == (name, method, ratio)
          )
          cell = loops.mean_std(r[key])
          cells.append(f"**{cell}**" if means[method] == best else cell)
      body.append(cells)
    header = ["removed", "units kept"] + [f"{m}, output residual" for m in config.methods]
    header += [f"{m}, pruned" for m in config.methods] + [
      f"{m}, fine-tuned" for m in config.methods
    ]
    parts.append(
      f"## {name} (dense: {loops.mean_std(dense['error'])})\n\n"
      + loops.markdown_table(header, body)
    )
  text = "\n".join(parts)
  (out / "summary.md").write_text(
    f"# i-SpaSP on {config.dataset}\n\nTest error, mean ± std over seeds {list(config.seeds)}; "
    f"fine-tuning {config.finetune_steps} updates; {wall:.0f} s.\n\n" + text
  )
  print(text)
  if config.plots:
    _plot(rows, out / "ispasp.png", config)
  return rows


def _plot(rows, path: Path, config) -> None:
  plt = plots.pyplot()

  names = list(dict.fromkeys(r["model"] for r in rows))
  fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
  for ax, name in zip(axes[0], names):
    for i, method in enumerate(config.methods):
      pts = [r for r in rows if r["model"] == name and r["method"] == method]
      kept = [100 * (1 - r["ratio"]) for r in pts]
      for key, ls, label in (("error_pruned", ":", "pruned"), ("error", "-", "fine-tuned")):
        ax.errorbar(
          kept, [100 * np.mean(r[key]) for r in pts], yerr=[100 * np.std(r[key]) for r in pts],
          ls=ls, marker="o", capsize=2, color=f"C{i}", label=f"{method}, {label}",
        )  # fmt: skip
    dense = next(r for r in rows if r["model"] == name and r["method"] == "dense")
    ax.axhline(100 * np.mean(dense["error"]), color="k", ls="--", label="dense")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("hidden units kept (%)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{name} on {config.dataset}")
    ax.grid(alpha=0.3, which="both")
  axes[0][0].legend(fontsize=7)
  plots.save(plt, fig, path)
