"""What a sweep writes: per-run JSON/CSV, the summary JSON/CSV, the table and the log.

Under ``config.output_dir``:

* ``runs/<run>.json`` / ``runs/<run>.csv``: every evaluation of the run (step, epoch, mean
  training loss and accuracy since the previous evaluation, test loss and accuracy, total
  and kernel sparsity, ShrinkBench compression ratio and theoretical speedup, and the
  sparsity of every parameter leaf); the JSON also holds the final metrics. A run whose
  JSON is present (with the same config fingerprint) is finished: a rerun reports it
  without training it again.
* ``summary.json`` / ``summary.csv``: one row per run, plus (in the JSON) the mean and
  standard deviation over seeds per (method, target sparsity) and the published points.
* ``summary.md``: the same aggregate and the published points as markdown tables, for
  pruning at initialisation the layer collapse of the masks (`format_collapse`), and for the
  methods that learn their sparsity one row per run with the sparsity it reached
  (`format_learned`).
* ``collapse.csv``: for pruning at initialisation, one row per run (`collapse_rows`).
* ``log.txt``: the lines printed during the sweep and the final table.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO

import numpy as np

EVAL_COLUMNS = [
  "step",
  "epoch",
  "loss",
  "train_accuracy",
  "test_loss",
  "test_accuracy",
  "sparsity",
  "kernel_sparsity",
  "compression_ratio",
  "theoretical_speedup",
]

SUMMARY_COLUMNS = [
  "method",
  "target_sparsity",
  "seed",
  "test_accuracy",
  "test_error",
  "best_test_accuracy",
  "sparsity",
  "kernel_sparsity",
  "compression_ratio",
  "theoretical_speedup",
  "zeros",
  "size",
  "final_step",
  "train_time_s",
  "run",
]


class Log:
  """Prints lines (through tqdm when bars are shown) and appends them to a file.

  Args:
      path: the log file (appended to).
      use_tqdm: print with ``tqdm.write`` so that progress bars stay intact.
      quiet: neither print nor write (the processes other than 0 of a multi-host run).
  """

  def __init__(self, path: Path, use_tqdm: bool, quiet: bool = False):
    self.path = path
    self.use_tqdm = use_tqdm
    self.file: Optional[TextIO] = None
    if not quiet:
      path.parent.mkdir(parents=True, exist_ok=True)
      self.file = open(path, "a")

  def __call__(self, line: str = "") -> None:
    if self.file is None:
      return
    if self.use_tqdm:
      from tqdm import tqdm

      tqdm.write(line)
    else:
      print(line, flush=True)
    self.file.write(line + "\n")
    self.file.flush()

  def close(self) -> None:
    if self.file is not None:
      self.file.close()


def write_run(record: dict, out_dir: Path) -> None:
  """Writes ``runs/<run>.json`` (everything) and ``runs/<run>.csv`` (the evaluations).

  Args:
      record: a record from `experiments.train.train_runs`.
      out_dir: the sweep's output directory.
  """
  runs = out_dir / "runs"
  runs.mkdir(parents=True, exist_ok=True)
  leaf_names = list(record["evaluations"][0]["leaf_sparsity"]) if record["evaluations"] else []
  with open(runs / f"{record['name']}.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(EVAL_COLUMNS + [f"sparsity/{leaf}" for leaf in leaf_names])
    for e in record["evaluations"]:
      w.writerow([e[c] for c in EVAL_COLUMNS] + [e["leaf_sparsity"][k] for k in leaf_names])
  # The JSON last, written whole then renamed: its presence marks the run as finished.
  tmp = runs / f".{record['name']}.json.tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2)
  tmp.replace(runs / f"{record['name']}.json")


def read_finished_run(out_dir: Path, name: str, fingerprint: str) -> Optional[dict]:
  """The record of a finished run, if ``runs/<name>.json`` was written by this config.

  Args:
      out_dir: the sweep's output directory.
      name: the run's name.
      fingerprint: `experiments.config.fingerprint` of the current config.

  Returns:
      The record, or None if the run has no (complete, matching) record.
  """
  path = out_dir / "runs" / f"{name}.json"
  if not path.is_file():
    return None
  try:
    record = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  if record.get("fingerprint") != fingerprint or "final" not in record:
    return None
  return record


def summary_rows(records: Sequence[dict]) -> list[dict]:
  """One row per run with its final metrics (`SUMMARY_COLUMNS`).

  Args:
      records: run records.

  Returns:
      The rows.
  """
  rows = []
  for r in records:
    f = r["final"]
    rows.append(
      {
        "method": r["method"],
        "target_sparsity": r["target_sparsity"],
        "seed": r["seed"],
        "test_accuracy": f["test_accuracy"],
        "test_error": f["test_error"],
        "best_test_accuracy": f["best_test_accuracy"],
        "sparsity": f["sparsity"],
        "kernel_sparsity": f["kernel_sparsity"],
        "compression_ratio": f["compression_ratio"],
        "theoretical_speedup": f["theoretical_speedup"],
        "zeros": f["zeros"],
        "size": f["size"],
        "final_step": f["step"],
        "train_time_s": r["train_time_s"],
        "run": r["name"],
      }
    )
  return rows


def aggregate(rows: Sequence[dict]) -> list[dict]:
  """Mean (and standard deviation of the accuracy over seeds) per (method, sparsity).

  Args:
      rows: `summary_rows`.

  Returns:
      One dict per (method, target sparsity), in the order of first appearance.
  """
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault((row["method"], row["target_sparsity"]), []).append(row)
  out = []
  for (method, target), rs in groups.items():
    acc = np.array([r["test_accuracy"] for r in rs])

    def mean(key, rs=rs):
      return float(np.mean([r[key] for r in rs]))

    out.append(
      {
        "method": method,
        "target_sparsity": target,
        "seeds": len(rs),
        "test_accuracy": float(acc.mean()),
        "test_accuracy_std": float(acc.std()),
        "test_error": round(float(1 - acc.mean()), 12),
        "sparsity": mean("sparsity"),
        "kernel_sparsity": mean("kernel_sparsity"),
        "compression_ratio": mean("compression_ratio"),
        "theoretical_speedup": mean("theoretical_speedup"),
      }
    )
  return out


def _ratio(x: float) -> str:
  return "inf" if math.isinf(x) else f"{x:.2f}x"


def format_table(agg: Sequence[dict]) -> str:
  """The aggregate as a fixed-width table.

  Args:
      agg: `aggregate` rows.

  Returns:
      The table (no trailing newline).
  """
  multi = any(a["seeds"] > 1 for a in agg)
  w = max([10] + [len(a["method"]) for a in agg])
  header = (
    f"{'method':<{w}} {'target':>7} {'measured (kernels)':>19} {'measured (all)':>15} "
    f"{'compression':>12} {'speedup':>8} {'test acc':>9} {'test err':>9}"
    + (f" {'± std':>7} {'seeds':>5}" if multi else "")
  )
  lines = [header, "-" * len(header)]
  for a in agg:
    line = (
      f"{a['method']:<{w}} {a['target_sparsity']:>7.1%} {a['kernel_sparsity']:>19.2%} "
      f"{a['sparsity']:>15.2%} {_ratio(a['compression_ratio']):>12} "
      f"{_ratio(a['theoretical_speedup']):>8} {a['test_accuracy']:>9.2%} "
      f"{a['test_error']:>9.2%}"
    )
    if multi:
      line += f" {a['test_accuracy_std']:>7.2%} {a['seeds']:>5d}"
    lines.append(line)
  return "\n".join(lines)


def published_points(config: Any) -> list[dict]:
  """The published results of ``config.published``, validated.

  Each entry is a dict with ``label``, ``sparsity`` (fraction of pruned weights in
  ``[0, 1)``; 0 for a dense reference) and ``accuracy`` or ``error`` in percent, and
  optionally ``source``.

  Args:
      config: the config (``published`` may be absent).

  Returns:
      Dicts with ``label``, ``sparsity``, ``accuracy`` (percent) and ``source``.

  Raises:
      ValueError: for an entry without a label, sparsity or accuracy/error, or with
          values out of range (accuracy and error are percentages, not fractions).
  """
  points = []
  for i, entry in enumerate(config.get("published", None) or ()):
    entry = dict(entry)
    if "label" not in entry or "sparsity" not in entry:
      raise ValueError(f"published[{i}] needs a label and a sparsity: {entry}")
    if "accuracy" in entry:
      accuracy = float(entry["accuracy"])
    elif "error" in entry:
      accuracy = 100.0 - float(entry["error"])
    else:
      raise ValueError(f"published[{i}] needs an accuracy or an error (in %): {entry}")
    sparsity = float(entry["sparsity"])
    if not 0.0 <= sparsity < 1.0:
      raise ValueError(f"published[{i}]: sparsity must be in [0, 1), got {sparsity}")
    if not 1.0 < accuracy <= 100.0:
      raise ValueError(
        f"published[{i}]: accuracy {accuracy} is not a percentage in "
        "(1, 100]; give accuracy or error in percent"
      )
    points.append(
      {
        "label": str(entry["label"]),
        "sparsity": sparsity,
        "accuracy": accuracy,
        "source": str(entry.get("source", "")),
      }
    )
  return points


def format_published(points: Sequence[dict]) -> str:
  """The published points as lines (empty string when there are none).

  Args:
      points: `published_points`.

  Returns:
      The lines.
  """
  if not points:
    return ""
  lines = ["Published results (config.published):"]
  for p in points:
    lines.append(
      f"  {p['label']:<40} sparsity {p['sparsity']:>6.1%}  test acc "
      f"{p['accuracy'] / 100:>7.2%}  test err {1 - p['accuracy'] / 100:>6.2%}"
      + (f"  [{p['source']}]" if p["source"] else "")
    )
  return "\n".join(lines)


def _percent(x: float) -> str:
  return f"{100 * x:.2f}%"


def format_markdown(agg: Sequence[dict], published: Sequence[dict] = ()) -> str:
  """The aggregate (and the published points) as markdown tables.

  The first table has one row per (method, target sparsity); the second, when several
  methods share target sparsities, the test error (mean ± standard deviation over seeds)
  with the methods as rows and the sparsities as columns; the last lists the published
  results.

  Args:
      agg: `aggregate` rows.
      published: `published_points`.

  Returns:
      The markdown (no trailing newline).
  """
  lines = [
    "| method | target sparsity | sparsity (kernels) | compression | theoretical speedup "
    "| test accuracy | test error | ± std | seeds |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for a in agg:
    lines.append(
      f"| {a['method']} | {a['target_sparsity']:.1%} | {a['kernel_sparsity']:.2%} | "
      f"{_ratio(a['compression_ratio'])} | {_ratio(a['theoretical_speedup'])} | "
      f"{_percent(a['test_accuracy'])} | {_percent(a['test_error'])} | "
      f"{_percent(a['test_accuracy_std'])} | {a['seeds']} |"
    )
  targets = sorted({a["target_sparsity"] for a in agg if a["method"] != "dense"})
  methods = list(dict.fromkeys(a["method"] for a in agg))
  if len(methods) > 1 and targets:
    by_key = {(a["method"], a["target_sparsity"]): a for a in agg}
    lines += [
      "",
      "Test error (mean ± std over seeds):",
      "",
      "| method | " + " | ".join(f"{100 * t:g}%" for t in targets) + " |",
      "|---|" + "---|" * len(targets),
    ]
    for m in methods:
      if m == "dense":
        a = next(x for x in agg if x["method"] == m)
        cells = [f"{_percent(a['test_error'])} ± {_percent(a['test_accuracy_std'])} (dense)"] + [
          ""
        ] * (len(targets) - 1)
      else:
        cells = [
          f"{_percent(by_key[m, t]['test_error'])} ± {_percent(by_key[m, t]['test_accuracy_std'])}"
          if (m, t) in by_key
          else ""
          for t in targets
        ]
      lines.append(f"| {m} | " + " | ".join(cells) + " |")
  if published:
    lines += ["", "| published | sparsity | test error | source |", "|---|---|---|---|"]
    for p in published:
      lines.append(
        f"| {p['label']} | {p['sparsity']:.1%} | {100 - p['accuracy']:.2f}% | {p['source']} |"
      )
  return "\n".join(lines)


def write_rows(rows: Sequence[dict], path: Path) -> None:
  """Writes dict rows as a CSV file (the columns of the first row).

  Args:
      rows: the rows.
      path: the CSV file.
  """
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
    w.writeheader()
    w.writerows(rows)


def write_summary(records: Sequence[dict], out_dir: Path, meta: dict) -> list[dict]:
  """Writes ``summary.json`` (rows, aggregate, ``meta``) and ``summary.csv`` (rows).

  Args:
      records: the run records.
      out_dir: the sweep's output directory.
      meta: extra fields for the JSON (model, dataset, MACs, published points, ...).

  Returns:
      The `aggregate`.
  """
  rows = summary_rows(records)
  agg = aggregate(rows)
  with open(out_dir / "summary.json", "w") as f:
    json.dump({**meta, "runs": rows, "aggregate": agg}, f, indent=2)
  with open(out_dir / "summary.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
    w.writeheader()
    w.writerows(rows)
  return agg


def collapse_rows(records: Sequence[dict]) -> list[dict]:
  """One row per pruning-at-initialisation run: its collapse report, flattened.

  Args:
      records: run records (those without ``at_init`` are skipped).

  Returns:
      Rows with ``method``, ``target_sparsity``, ``seed``, ``collapsed``, ``connected``,
      ``empty_leaves``, ``kept/<leaf>``, ``dead_outputs/<leaf>`` and ``test_accuracy``.
  """
  rows = []
  for r in records:
    info = r.get("at_init")
    if info is None:
      continue
    row = {
      "method": r["method"],
      "target_sparsity": r["target_sparsity"],
      "seed": r["seed"],
      "collapsed": info["collapsed"],
      "connected": info["connected"],
      "empty_leaves": ";".join(info["empty_leaves"]),
      "test_accuracy": r["final"]["test_accuracy"],
    }
    row.update({f"kept/{k}": v for k, v in info["kept"].items()})
    row.update({f"dead_outputs/{k}": v for k, v in info["dead_outputs"].items()})
    rows.append(row)
  return rows


def format_collapse(rows: Sequence[dict]) -> str:
  """Markdown: per (method, sparsity), the seeds whose masks collapse and the kept weights.

  Args:
      rows: `collapse_rows`.

  Returns:
      The table (no trailing newline), or "" without rows.
  """
  if not rows:
    return ""
  leaves = [k[len("kept/") :] for k in rows[0] if k.startswith("kept/")]
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault((row["method"], row["target_sparsity"]), []).append(row)
  lines = [
    "Layer collapse of the masks at initialisation (jaxprune.collapse.layer_collapse; "
    "kept weights per kernel and units left without input, mean over seeds):",
    "",
    "| method | sparsity | collapsed (seeds) | "
    + " | ".join(f"kept {k}" for k in leaves)
    + " | dead units |",
    "|---|---|---|" + "---|" * len(leaves) + "---|",
  ]
  for (method, target), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    collapsed = sum(r["collapsed"] for r in rs)
    kept = [f"{np.mean([r[f'kept/{k}'] for r in rs]):,.0f}" for k in leaves]
    dead = {
      k[len("dead_outputs/") :]: np.mean([r[k] for r in rs])
      for k in rs[0]
      if k.startswith("dead_outputs/")
    }
    dead_text = ", ".join(f"{k.split('/')[0]}: {v:.3g}" for k, v in dead.items() if v) or "0"
    lines.append(
      f"| {method} | {target:.1%} | {collapsed}/{len(rs)} | "
      + " | ".join(kept)
      + f" | {dead_text} |"
    )
  return "\n".join(lines)


def format_learned(records: Sequence[dict]) -> str:
  """Markdown: one row per run of a method that learns its sparsity (a record with
  ``regularization``), with the regularisation, the sparsity it reached and its test error.

  Args:
      records: run records (those without ``regularization`` are skipped).

  Returns:
      The table (no trailing newline), or "" without such runs.
  """
  rows = [r for r in records if "regularization" in r]
  if not rows:
    return ""
  lines = [
    "Methods that learn their sparsity (the target only picks the regularisation; one row per "
    "run, the sparsity it reached):",
    "",
    "| method | target | seed | regularisation | sparsity (kernels) | test error |",
    "|---|---|---|---|---|---|",
  ]
  for r in sorted(rows, key=lambda r: (r["method"], r["target_sparsity"], r["seed"])):
    f = r["final"]
    lines.append(
      f"| {r['method']} | {r['target_sparsity']:.1%} | {r['seed']} | {r['regularization']:g} | "
      f"{f['kernel_sparsity']:.2%} | {_percent(f['test_error'])} |"
    )
  return "\n".join(lines)
