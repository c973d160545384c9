"""Choices made after a sweep: which evaluation of a run, and which hyperparameter of a sweep.

Two commands over finished runs (``runs/<run>.json`` under an output directory):

``python -m experiments.model_selection checkpoints DIR [--last K]``
    For every (method, sparsity), the test error over seeds (mean ± std, as in ``summary.md``)
    by three rules: the last evaluation (what the runners report), the evaluation with the
    best validation accuracy (the honest choice when a validation split is held out), and
    the best test accuracy among the last ``K`` evaluations (the rule of SNIP's ``test.py``,
    which reports the maximum over the checkpoints TF's ``Saver`` keeps: it chooses on the
    test set, so it is optimistic).

``python -m experiments.model_selection sweep DIR... --field optimizer.learning_rate [--output_dir OUT]``
    One output directory per value of a config field (read from each ``config.json``): for every
    (method, sparsity) the value with the best mean validation accuracy at the end of training,
    and the test error of that value. With ``--output_dir``: ``selection.{md,json}`` and
    ``selection.png`` (the chosen runs' test error against sparsity, beside every value's).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from experiments import plots


def read_runs(out_dir: Path | str) -> list[dict]:
  """The finished run records of an output directory (``runs/*.json``), sorted by name.

  Raises:
      FileNotFoundError: if the directory has no finished runs.
  """
  files = sorted(Path(out_dir).glob("runs/*.json"))
  if not files:
    raise FileNotFoundError(f"{out_dir}: no finished runs (runs/*.json)")
  return [json.loads(f.read_text()) for f in files]


def checkpoint_errors(record: dict, last: int = 5) -> dict[str, float]:
  """A run's test error by the three rules of this module.

  Args:
      record: a run record (its ``evaluations``, each with ``step`` and ``test_accuracy``, and
          ``validation_accuracy`` where the run held out a validation split).
      last: how many of the last evaluations the best-of-last rule looks at.

  Returns:
      ``last`` (the last evaluation's test error), ``best_of_last`` (1 - the best test accuracy
      of the last ``last`` evaluations) and, with validation, ``best_validation`` (the test error
      of the evaluation with the best validation accuracy; the later one on ties), with
      ``best_validation_step``.

  Raises:
      ValueError: for ``last < 1`` or a run without evaluations.
  """
  if last < 1:
    raise ValueError(f"last must be >= 1, got {last}")
  evals = sorted(record.get("evaluations") or [], key=lambda e: e["step"])
  if not evals:
    raise ValueError(f"run {record.get('name')!r} has no evaluations")
  out = {
    "last": 1.0 - evals[-1]["test_accuracy"],
    "best_of_last": 1.0 - max(e["test_accuracy"] for e in evals[-last:]),
  }
  if all("validation_accuracy" in e for e in evals):
    best = max(range(len(evals)), key=lambda i: (evals[i]["validation_accuracy"], i))
    out["best_validation"] = 1.0 - evals[best]["test_accuracy"]
    out["best_validation_step"] = evals[best]["step"]
  return out


def _groups(records: Sequence[dict]) -> dict[tuple[str, float], list[dict]]:
  groups: dict[tuple[str, float], list[dict]] = {}
  for r in records:
    groups.setdefault((r["method"], float(r["target_sparsity"])), []).append(r)
  return groups


def summarize_checkpoints(records: Sequence[dict], last: int = 5) -> list[dict]:
  """Mean and std over seeds of `checkpoint_errors`, per (method, sparsity).

  Args:
      records: run records.
      last: as in `checkpoint_errors`.

  Returns:
      One row per (method, sparsity), in order of first appearance: ``method``,
      ``target_sparsity``, ``seeds``, and ``<rule>`` / ``<rule>_std`` for every rule all its
      runs have.
  """
  rows = []
  for (method, sparsity), runs in _groups(records).items():
    errors = [checkpoint_errors(r, last) for r in runs]
    row: dict[str, Any] = {"method": method, "target_sparsity": sparsity, "seeds": len(runs)}
    for rule in ("last", "best_validation", "best_of_last"):
      if all(rule in e for e in errors):
        values = np.array([e[rule] for e in errors])
        row[rule], row[rule + "_std"] = float(values.mean()), float(values.std())
    rows.append(row)
  return rows


def _pm(mean: float, std: float) -> str:
  return f"{100 * mean:.2f}% ± {100 * std:.2f}%"


def format_checkpoints(rows: Sequence[dict], last: int) -> str:
  """`summarize_checkpoints` as a markdown table."""
  rules = [
    ("last", "last evaluation"),
    ("best_validation", "best validation accuracy"),
    ("best_of_last", f"best test accuracy of the last {last}"),
  ]
  present = [(k, t) for k, t in rules if any(k in r for r in rows)]
  lines = [
    "| method | sparsity | " + " | ".join(t for _, t in present) + " |",
    "|---|---|" + "---|" * len(present),
  ]
  for r in rows:
    cells = [_pm(r[k], r[k + "_std"]) if k in r else "" for k, _ in present]
    lines.append(f"| {r['method']} | {r['target_sparsity']:.0%} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def config_field(out_dir: Path | str, field: str) -> Any:
  """The value of a dotted ``field`` in ``out_dir/config.json``.

  Raises:
      KeyError: naming the field and the file, if it is not there.
  """
  path = Path(out_dir) / "config.json"
  value: Any = json.loads(path.read_text())
  for part in field.split("."):
    if not isinstance(value, dict) or part not in value:
      raise KeyError(f"{path}: no field {field!r}")
    value = value[part]
  return value


def select(dirs: Sequence[Path | str], field: str) -> tuple[list[dict], list[dict]]:
  """Per (method, sparsity), the value of ``field`` with the best mean final validation accuracy.

  Args:
      dirs: output directories, one per value of ``field`` (a config field, dotted).
      field: the swept field.

  Returns:
      ``(all_rows, chosen)``: one row per (method, sparsity, value) with ``value``, ``seeds``,
      ``validation_accuracy`` (mean), ``test_error`` and ``test_error_std``; and one row per
      (method, sparsity) for the value chosen (the first directory's on ties), by method (in
      order of first appearance) and sparsity.

  Raises:
      ValueError: for fewer than two directories, two directories with the same value, a run
          without a final validation accuracy, or a (method, sparsity) whose seeds differ
          between values.
  """
  if len(dirs) < 2:
    raise ValueError(f"a sweep needs at least two output directories, got {len(dirs)}")
  values = [config_field(d, field) for d in dirs]
  if len({json.dumps(v) for v in values}) != len(values):
    raise ValueError(f"{field} repeats among {list(map(str, dirs))}: {values}")
  rows = []
  for out_dir, value in zip(dirs, values):
    for (method, sparsity), runs in _groups(read_runs(out_dir)).items():
      val, test = [], []
      for r in runs:
        final = r["evaluations"][-1] if r.get("evaluations") else {}
        if "validation_accuracy" not in final:
          raise ValueError(
            f"{out_dir}: run {r['name']!r} has no validation accuracy (set validation_size)"
          )
        val.append(final["validation_accuracy"])
        test.append(1.0 - final["test_accuracy"])
      rows.append(
        {
          "method": method,
          "target_sparsity": sparsity,
          "value": value,
          "seeds": sorted(int(r["seed"]) for r in runs),
          "validation_accuracy": float(np.mean(val)),
          "test_error": float(np.mean(test)),
          "test_error_std": float(np.std(test)),
        }
      )
  chosen = []
  order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
  keys = sorted(
    dict.fromkeys((r["method"], r["target_sparsity"]) for r in rows),
    key=lambda k: (order[k[0]], k[1]),
  )
  for key in keys:
    group = [r for r in rows if (r["method"], r["target_sparsity"]) == key]
    if any(r["seeds"] != group[0]["seeds"] for r in group):
      raise ValueError(
        f"{key}: the seeds differ between values: {[(r['value'], r['seeds']) for r in group]}"
      )
    best = max(range(len(group)), key=lambda i: (group[i]["validation_accuracy"], -i))
    chosen.append(group[best])
  return rows, chosen


def format_selection(rows: Sequence[dict], chosen: Sequence[dict], field: str) -> str:
  """`select`'s result as a markdown table: every value's validation accuracy and test error,
  the chosen one in bold."""
  values = list(dict.fromkeys(json.dumps(r["value"]) for r in rows))
  lines = [
    "| method | sparsity | " + " | ".join(f"{field}={v}" for v in values) + " | chosen |",
    "|---|---|" + "---|" * (len(values) + 1),
  ]
  for c in chosen:
    cells = []
    for v in values:
      match = [
        r
        for r in rows
        if (r["method"], r["target_sparsity"]) == (c["method"], c["target_sparsity"])
        and json.dumps(r["value"]) == v
      ]
      if not match:
        cells.append("")
        continue
      r = match[0]
      text = f"val {100 * r['validation_accuracy']:.2f}%, test err {_pm(r['test_error'], r['test_error_std'])}"
      cells.append(f"**{text}**" if r is c else text)
    lines.append(
      f"| {c['method']} | {c['target_sparsity']:.0%} | "
      + " | ".join(cells)
      + f" | {json.dumps(c['value'])}: **{_pm(c['test_error'], c['test_error_std'])}** |"
    )
  return "\n".join(lines)


def plot_selection(rows: Sequence[dict], chosen: Sequence[dict], field: str, path: Path) -> None:
  """Test error against sparsity: the chosen value per method (solid, with the seeds' std) and
  every value (faint)."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  methods = list(dict.fromkeys(c["method"] for c in chosen))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, method in enumerate(methods):
    color = colors[i % len(colors)]
    sparse = [c for c in chosen if c["method"] == method and c["target_sparsity"] > 0]
    if not sparse:  # dense: a horizontal line
      c = next(c for c in chosen if c["method"] == method)
      ax.axhline(100 * c["test_error"], color=color, ls="--", label=f"{method} ({c['value']})")
      continue
    xs = [100 * (1 - c["target_sparsity"]) for c in sparse]
    ax.errorbar(
      xs,
      [100 * c["test_error"] for c in sparse],
      yerr=[100 * c["test_error_std"] for c in sparse],
      color=color,
      marker="o",
      capsize=3,
      label=f"{method} (tuned {field})",
    )
    for value in dict.fromkeys(json.dumps(r["value"]) for r in rows):
      mine = sorted(
        (
          r
          for r in rows
          if r["method"] == method and json.dumps(r["value"]) == value and r["target_sparsity"] > 0
        ),
        key=lambda r: r["target_sparsity"],
      )
      ax.plot(
        [100 * (1 - r["target_sparsity"]) for r in mine],
        [100 * r["test_error"] for r in mine],
        color=color,
        alpha=0.25,
        lw=1,
      )
  ax.set_xscale("log")
  ticks = sorted({100 * (1 - c["target_sparsity"]) for c in chosen if c["target_sparsity"] > 0})
  ax.set_xticks(ticks)
  ax.set_xticklabels([f"{t:g}%" for t in ticks])
  ax.minorticks_off()
  ax.invert_xaxis()
  ax.set_xlabel("weights remaining (faint: every value of the sweep)")
  ax.set_ylabel("test error (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  plots.save(plt, fig, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m experiments.model_selection", description=__doc__.split("\n\n")[0]
  )
  sub = parser.add_subparsers(dest="command", required=True)
  c = sub.add_parser(
    "checkpoints", help="test error by the last, validation and best-of-last rules"
  )
  c.add_argument("dir")
  c.add_argument("--last", type=int, default=5)
  s = sub.add_parser("sweep", help="choose a config field's value by validation accuracy")
  s.add_argument("dirs", nargs="+")
  s.add_argument("--field", required=True)
  s.add_argument("--output_dir", default=None)
  args = parser.parse_args(argv)
  if args.command == "checkpoints":
    print(format_checkpoints(summarize_checkpoints(read_runs(args.dir), args.last), args.last))
    return 0
  rows, chosen = select(args.dirs, args.field)
  table = format_selection(rows, chosen, args.field)
  print(table)
  if args.output_dir:
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.md").write_text(table + "\n")
    (out / "selection.json").write_text(json.dumps({"rows": rows, "chosen": chosen}, indent=1))
    plot_selection(rows, chosen, args.field, out / "selection.png")
    print(f"wrote {out / 'selection.md'}, selection.json, selection.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
