"""experiments.model_selection: the checkpoint rules and the validation-chosen hyperparameter."""

from __future__ import annotations

import json

import pytest

from experiments import model_selection


def record(method, sparsity, seed, tests, vals=None, name=None):
  evals = []
  for i, t in enumerate(tests):
    e = {"step": 100 * (i + 1), "test_accuracy": t}
    if vals is not None:
      e["validation_accuracy"] = vals[i]
    evals.append(e)
  return {
    "name": name or f"{method}_s{sparsity}_seed{seed}",
    "method": method,
    "target_sparsity": sparsity,
    "seed": seed,
    "evaluations": evals,
  }


def write_dir(path, records, lr):
  (path / "runs").mkdir(parents=True)
  for r in records:
    (path / "runs" / f"{r['name']}.json").write_text(json.dumps(r))
  (path / "config.json").write_text(json.dumps({"optimizer": {"learning_rate": lr}}))
  return path


def test_checkpoint_errors_follow_each_rule():
  r = record("snip", 0.95, 0, [0.90, 0.97, 0.96, 0.95], vals=[0.91, 0.98, 0.98, 0.97])
  e = model_selection.checkpoint_errors(r, last=3)
  assert e["last"] == pytest.approx(0.05)
  assert e["best_of_last"] == pytest.approx(0.03)  # max of 0.97, 0.96, 0.95
  # Ties on validation go to the later evaluation (step 300: test 0.96).
  assert e["best_validation"] == pytest.approx(0.04)
  assert e["best_validation_step"] == 300
  assert "best_validation" not in model_selection.checkpoint_errors(record("d", 0, 0, [0.9]))
  with pytest.raises(ValueError, match="last must be >= 1, got 0"):
    model_selection.checkpoint_errors(r, last=0)
  with pytest.raises(ValueError, match="no evaluations"):
    model_selection.checkpoint_errors(record("d", 0, 0, []))


def test_summaries_average_over_seeds():
  rows = model_selection.summarize_checkpoints(
    [record("m", 0.9, 0, [0.97, 0.98]), record("m", 0.9, 1, [0.99, 0.96])], last=2
  )
  (row,) = rows
  assert row["seeds"] == 2
  assert row["last"] == pytest.approx(0.03) and row["last_std"] == pytest.approx(0.01)
  assert row["best_of_last"] == pytest.approx(0.015)
  assert "best_validation" not in row
  table = model_selection.format_checkpoints(rows, 2)
  assert "| m | 90% | 3.00% ± 1.00% | 1.50% ± 0.50% |" in table


def test_sweep_chooses_the_best_validation_accuracy_per_method_and_sparsity(tmp_path):
  a = write_dir(
    tmp_path / "a",
    [
      record("gradual", 0.9, 0, [0.97], vals=[0.975]),
      record("gradual", 0.95, 0, [0.96], vals=[0.96]),  # its file sorts before 0.9's
      record("imp", 0.9, 0, [0.96], vals=[0.990]),
    ],
    0.05,
  )
  b = write_dir(
    tmp_path / "b",
    [
      record("gradual", 0.9, 0, [0.95], vals=[0.980]),  # better validation, worse test
      record("gradual", 0.95, 0, [0.94], vals=[0.95]),
      record("imp", 0.9, 0, [0.99], vals=[0.970]),
    ],
    0.1,
  )
  rows, chosen = model_selection.select([a, b], "optimizer.learning_rate")
  assert len(rows) == 6
  assert [(c["method"], c["target_sparsity"]) for c in chosen] == [
    ("gradual", 0.9),
    ("gradual", 0.95),
    ("imp", 0.9),
  ]
  by = {c["method"]: c for c in chosen if c["target_sparsity"] == 0.9}
  assert by["gradual"]["value"] == 0.1 and by["gradual"]["test_error"] == pytest.approx(0.05)
  assert by["imp"]["value"] == 0.05 and by["imp"]["test_error"] == pytest.approx(0.04)
  out = tmp_path / "out"
  assert (
    model_selection.main(
      ["sweep", str(a), str(b), "--field", "optimizer.learning_rate", "--output_dir", str(out)]
    )
    == 0
  )
  text = (out / "selection.md").read_text()
  assert "| gradual | 90% |" in text and "0.1: **5.00% ± 0.00%**" in text
  assert (out / "selection.png").stat().st_size > 0
  assert json.loads((out / "selection.json").read_text())["chosen"][1]["value"] == 0.05


def test_sweep_rejects_bad_input(tmp_path):
  a = write_dir(tmp_path / "a", [record("g", 0.9, 0, [0.9], vals=[0.9])], 0.05)
  same = write_dir(tmp_path / "same", [record("g", 0.9, 0, [0.9], vals=[0.9])], 0.05)
  noval = write_dir(tmp_path / "noval", [record("g", 0.9, 0, [0.9])], 0.2)
  seeds = write_dir(tmp_path / "seeds", [record("g", 0.9, 1, [0.9], vals=[0.9])], 0.3)
  with pytest.raises(ValueError, match="at least two output directories, got 1"):
    model_selection.select([a], "optimizer.learning_rate")
  with pytest.raises(ValueError, match="optimizer.learning_rate repeats"):
    model_selection.select([a, same], "optimizer.learning_rate")
  with pytest.raises(ValueError, match="has no validation accuracy"):
    model_selection.select([a, noval], "optimizer.learning_rate")
  with pytest.raises(ValueError, match="the seeds differ between values"):
    model_selection.select([a, seeds], "optimizer.learning_rate")
  with pytest.raises(KeyError, match="no field 'optimizer.momentum'"):
    model_selection.select([a, seeds], "optimizer.momentum")
  with pytest.raises(FileNotFoundError, match="no finished runs"):
    model_selection.read_runs(tmp_path)
