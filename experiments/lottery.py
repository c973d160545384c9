"""The lottery-ticket experiment: winning tickets against random reinitialisation.

Frankle & Carbin (2019, "The lottery ticket hypothesis", Sec. 2 and Figs. 3-4) on
LeNet-300-100 / MNIST, in two phases, each trained by `experiments.train.train_runs`:

1. **Tickets.** One ``jaxprune.imp`` run per seed (`ticket_tx`):
   ``lottery.rounds + 1`` rounds of ``lottery.round_steps`` steps. Round 0 trains the dense
   network; the first update of round ``r >= 1`` removes ``lottery.rate`` (20%) of the
   remaining weights of each hidden kernel and ``lottery.output_rate`` (10%) of the output
   kernel by magnitude (layer-wise), rewinds the kept weights to their initial values and
   restarts the optimizer (Adam, 1.2e-3). The masks of every round are written at its end
   to ``masks/ticket_seed<s>/cycle_<r>.npz``.
2. **Random reinitialisation** (the paper's control). For every seed and round ``r >= 1``
   (or the rounds in ``reinit_rounds``): the ticket's round-``r`` masks, fixed
   (``jaxprune.static_sparse(masks=...)``), on a fresh random initialisation drawn from
   `reinit_seed` (never a ticket's seed), trained for ``lottery.round_steps`` steps with the
   same optimizer and the same data order as the ticket.

Every run is evaluated every ``eval_every`` steps and at the end of each round on the test set
and on ``validation_size`` examples held out of the training set (5,000 in the paper; the
runs train on the rest). Per round and seed: the weights remaining (measured from the
masks), the test accuracy at the end of the round, and the early-stopping iteration (the
evaluation of minimum validation loss in the round) with the test accuracy there.

Writes, under ``output_dir``: ``runs/`` (every evaluation of every run), ``masks/``,
``checkpoints/``, ``summary.json`` (rows per method, round and seed; their aggregate over
seeds: mean, std, min, max; the per-cycle sparsity of the masks), ``summary.csv`` (the rows),
``cycle_sparsity.csv``, ``summary.md`` (the tables), ``lottery.png`` and ``log.txt``.

A config with a ``study`` field is one of the IMP studies of `experiments.imp_studies` (AP and the
dead neuron rate, SAP and the PQ index, early-bird tickets, sparse double descent): `validate` and
`run` hand it over. Importing this module also registers the sweep methods ``imp_silo`` and
``imp_allr`` (`experiments.retraining_methods`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

import jaxprune
from experiments import (
  imp_studies,
  methods,
  optimizers,
  outputs,
  plots,
  retraining_methods,
  runner,
  train,
)
from experiments.train import RunSpec

# SILO and ALLR join the sweep's IMP retraining methods (experiments/configs/mnist_imp_retraining).
retraining_methods.register()

METRICS = ("final_accuracy", "early_stop_iteration", "early_stop_accuracy")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the lottery fields of a config.

  Args:
      config: the config.

  Raises:
      ValueError: for a bad rate, round count or length, reinit round, validation size,
          optimizer, schedule or ``data_pipeline``, or a reinit seed that equals a ticket's seed.
          A config with a ``study`` is checked by `experiments.imp_studies.validate`.
  """
  if config.get("study", None) is not None:
    imp_studies.validate(config)
    return
  lt = config.lottery
  for name in ("rate", "output_rate"):
    if not 0.0 < float(lt[name]) < 1.0:
      raise ValueError(f"lottery.{name} must lie in (0, 1), got {lt[name]}")
  if int(lt.rounds) < 1 or int(lt.round_steps) < 1:
    raise ValueError(
      f"lottery.rounds and lottery.round_steps must be >= 1, got {lt.rounds} and {lt.round_steps}"
    )
  bad = [r for r in reinit_rounds(config) if not 1 <= r <= int(lt.rounds)]
  if bad:
    raise ValueError(f"reinit_rounds must lie in 1..{lt.rounds}, got {bad}")
  if int(config.get("validation_size", 0)) < 0:
    raise ValueError(f"validation_size must be >= 0, got {config.validation_size}")
  train.data_pipeline(config)
  seeds = {int(s) for s in config.seeds}
  clash = [(s, r) for s in seeds for r in reinit_rounds(config) if reinit_seed(s, r) in seeds]
  if clash:
    raise ValueError(f"the reinit seeds of (seed, round) {clash} equal a ticket's seed")
  ticket_tx(config)  # a bad optimizer or schedule


def reinit_rounds(config: ml_collections.ConfigDict) -> list[int]:
  """The rounds whose tickets are also trained from a random reinitialisation.

  Args:
      config: the config (``reinit_rounds``: empty for every round; ``lottery.reinit``
          False for none).

  Returns:
      The rounds, ascending.
  """
  if not config.lottery.get("reinit", True):
    return []
  chosen = [int(r) for r in (config.get("reinit_rounds", ()) or ())]
  return sorted(set(chosen)) if chosen else list(range(1, int(config.lottery.rounds) + 1))


def reinit_seed(seed: int, round_: int) -> int:
  """The seed of the fresh initialisation of the control of ticket ``seed``, round ``round_``.

  Distinct for every (seed, round) and, for seeds below 10,000, from every ticket's seed.

  Args:
      seed: the ticket's seed.
      round_: the round.

  Returns:
      The seed passed to `experiments.train.init_state`.
  """
  return 10_000 * (int(seed) + 1) + int(round_)


def phase_config(config: ml_collections.ConfigDict, num_steps: int) -> ml_collections.ConfigDict:
  """The config of one phase: ``config`` with ``num_train_steps`` set to ``num_steps``."""
  phase = ml_collections.ConfigDict(config.to_dict())
  phase.num_train_steps = int(num_steps)
  return phase


def ticket_specs(config: ml_collections.ConfigDict) -> list[RunSpec]:
  """The ticket runs, one per seed."""
  return [RunSpec("ticket", 0.0, int(s), tag="") for s in config.seeds]


def reinit_specs(config: ml_collections.ConfigDict, round_: int) -> list[RunSpec]:
  """The reinitialisation runs of ``round_``, one per seed (``sparsity``: the planned one)."""
  planned = planned_sparsity(config, round_)
  return [RunSpec("reinit", planned, int(s), tag=f"r{round_:02d}") for s in config.seeds]


def planned_sparsity(
  config: ml_collections.ConfigDict, round_: int, sizes: Optional[dict[str, int]] = None
) -> float:
  """The kernels' sparsity after ``round_`` prunes: per leaf ``round((1 - (1 - p)^r) n)``.

  Args:
      config: the config.
      round_: the round.
      sizes: kernel sizes by leaf name (default: LeNet-300-100's).

  Returns:
      The fraction of kernel weights pruned.
  """
  lt = config.lottery
  sizes = sizes or {
    "Dense_0/kernel": 784 * 300,
    "Dense_1/kernel": 300 * 100,
    "Dense_2/kernel": 100 * 10,
  }
  zeros = 0
  for name, n in sizes.items():
    rate = float(lt.output_rate) if name == lt.output_layer else float(lt.rate)
    zeros += round((1.0 - (1.0 - rate) ** round_) * n)
  return zeros / sum(sizes.values())


def ticket_tx(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Frankle & Carbin's lottery-ticket IMP of ``config.lottery``.

  ``lottery.rounds`` prunes of ``lottery.round_steps`` steps each after a dense round of the
  same length; layer-wise (each kernel loses ``lottery.rate`` of its remaining weights per
  round, the output layer ``lottery.output_rate``), then the kept weights are rewound to their
  initial values and the optimizer (``config.optimizer``, Adam in the paper) restarts.

  Args:
      config: the config with a ``lottery`` group.

  Returns:
      The transformation.
  """
  lt = config.lottery
  steps = int(lt.round_steps)
  return jaxprune.imp(
    rate=float(lt.rate),
    cycles=int(lt.rounds),
    cycle_steps=steps,
    distribution="uniform",
    leaf_rates={str(lt.output_layer): float(lt.output_rate)},
    rewind="init",
    reset_optimizer=True,
    inner=optimizers.make_optimizer(config.optimizer, steps),
  )


def reinit_setup(
  config: ml_collections.ConfigDict, model: nn.Module, spec: RunSpec, masks: Any, image_shape: tuple
) -> train.RunSetup:
  """One random-reinitialisation run: a ticket's masks, fixed, on a fresh initialisation.

  Args:
      config: the config.
      model: the Flax model.
      spec: the run (``seed`` is the ticket's; ``tag`` ``r<round>``).
      masks: the ticket's masks of that round (a tree like the params, None elsewhere).
      image_shape: the shape of one input.

  Returns:
      `experiments.methods.masked_setup` of the config's optimizer, initialised from
      `reinit_seed`.
  """
  inner = optimizers.make_optimizer(config.optimizer, int(config.lottery.round_steps))
  return methods.masked_setup(
    model, masks, inner, reinit_seed(spec.seed, int(spec.tag[1:])), image_shape
  )


# ============================================================================ results


def _round_row(
  method: str,
  round_: int,
  seed: int,
  remaining: float,
  evals: Sequence[dict],
  offset: int,
  run: str,
) -> dict:
  """One row: the end-of-round and early-stopping metrics of ``evals`` (one round)."""
  best = min(evals, key=lambda e: (e.get("validation_loss", e["test_loss"]), e["step"]))
  last = evals[-1]
  return {
    "method": method,
    "round": round_,
    "seed": seed,
    "remaining": remaining,
    "final_accuracy": last["test_accuracy"],
    "early_stop_iteration": best["step"] - offset,
    "early_stop_accuracy": best["test_accuracy"],
    "early_stop_validation_loss": best.get("validation_loss", best["test_loss"]),
    "final_validation_loss": last.get("validation_loss", last["test_loss"]),
    "run": run,
  }


def ticket_rows(record: dict, config: ml_collections.ConfigDict) -> list[dict]:
  """The per-round rows of a ticket run.

  Args:
      record: the run's record (`experiments.train.train_runs`).
      config: the config.

  Returns:
      One row per round (0 = dense).

  Raises:
      ValueError: if a round has no evaluation at its end.
  """
  steps = int(config.lottery.round_steps)
  rows = []
  for r in range(int(config.lottery.rounds) + 1):
    evals = [e for e in record["evaluations"] if r * steps < e["step"] <= (r + 1) * steps]
    if (
      not evals
      or evals[-1]["step"] != (r + 1) * steps
      or not evals[-1]["cycle_end"]
      or evals[-1]["cycle"] != r
    ):
      raise ValueError(f"{record['name']}: no evaluation at the end of round {r}")
    rows.append(
      _round_row(
        "ticket",
        r,
        record["seed"],
        1.0 - evals[-1]["mask_sparsity"],
        evals,
        r * steps,
        record["name"],
      )
    )
  return rows


def aggregate(rows: Sequence[dict]) -> list[dict]:
  """Mean, standard deviation, min and max over seeds per (method, round).

  Args:
      rows: the per-seed rows.

  Returns:
      One dict per (method, round), in the order of first appearance.
  """
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault((row["method"], row["round"]), []).append(row)
  out = []
  for (method, round_), rs in groups.items():
    entry = {
      "method": method,
      "round": round_,
      "seeds": len(rs),
      "remaining": float(np.mean([r["remaining"] for r in rs])),
    }
    for key in METRICS:
      v = np.array([r[key] for r in rs], np.float64)
      entry.update(
        {
          f"{key}_mean": float(v.mean()),
          f"{key}_std": float(v.std()),
          f"{key}_min": float(v.min()),
          f"{key}_max": float(v.max()),
        }
      )
    out.append(entry)
  return out


def cycle_sparsity(
  out_dir: Path, records: Sequence[dict], config: ml_collections.ConfigDict
) -> list[dict]:
  """The sparsity of the ticket masks at the end of every round, read from the mask files.

  Args:
      out_dir: the output directory.
      records: the ticket records.
      config: the config.

  Returns:
      One row per round: ``round``, ``zeros`` and ``sparsity`` per leaf, ``total_zeros``,
      ``total_size``, ``sparsity`` (all pruned leaves), ``planned`` (from
      `planned_sparsity`), ``identical_across_seeds`` (the zero counts agree).
  """
  rows = []
  for r in range(int(config.lottery.rounds) + 1):
    per_seed = []
    for record in records:
      with np.load(out_dir / "masks" / record["name"] / f"cycle_{r:02d}.npz") as f:
        per_seed.append({k: (int(f[k].size - f[k].sum()), int(f[k].size)) for k in sorted(f.files)})
    first = per_seed[0]
    sizes = {k: n for k, (_, n) in first.items()}
    zeros = sum(z for z, _ in first.values())
    rows.append(
      {
        "round": r,
        "zeros": {k: z for k, (z, _) in first.items()},
        "leaf_sparsity": {k: z / n for k, (z, n) in first.items()},
        "total_zeros": zeros,
        "total_size": sum(sizes.values()),
        "sparsity": zeros / sum(sizes.values()),
        "planned": planned_sparsity(config, r, sizes),
        "identical_across_seeds": all(p == first for p in per_seed[1:]),
      }
    )
  return rows


def _cell(a: Optional[dict], key: str, percent: bool) -> str:
  if a is None:
    return ""
  if percent:
    return (
      f"{100 * a[f'{key}_mean']:.2f} ± {100 * a[f'{key}_std']:.2f} "
      f"[{100 * a[f'{key}_min']:.2f}, {100 * a[f'{key}_max']:.2f}]"
    )
  return f"{a[f'{key}_mean']:.0f} [{a[f'{key}_min']:.0f}, {a[f'{key}_max']:.0f}]"


def format_tables(agg: Sequence[dict], sparsity_rows: Sequence[dict]) -> str:
  """The results and the per-cycle sparsity as markdown tables.

  Args:
      agg: `aggregate` rows.
      sparsity_rows: `cycle_sparsity` rows.

  Returns:
      The markdown (no trailing newline).
  """
  by = {(a["method"], a["round"]): a for a in agg}
  seeds = max(a["seeds"] for a in agg)
  lines = [
    f"Test accuracy (%) at the end of each round and at early stopping (minimum validation "
    f"loss), mean ± std [min, max] over {seeds} seed(s); early-stopping iteration mean "
    "[min, max]:",
    "",
    "| round | weights remaining | ticket: end of round | reinit: end of round "
    "| ticket: early-stop iteration | ticket: accuracy there | reinit: early-stop "
    "iteration | reinit: accuracy there |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for round_ in sorted({a["round"] for a in agg}):
    t, r = by.get(("ticket", round_)), by.get(("reinit", round_))
    remaining = (t or r)["remaining"]
    lines.append(
      f"| {round_} | {100 * remaining:.1f}% | {_cell(t, 'final_accuracy', True)} | "
      f"{_cell(r, 'final_accuracy', True)} | {_cell(t, 'early_stop_iteration', False)} | "
      f"{_cell(t, 'early_stop_accuracy', True)} | "
      f"{_cell(r, 'early_stop_iteration', False)} | "
      f"{_cell(r, 'early_stop_accuracy', True)} |"
    )
  leaves = list(sparsity_rows[0]["zeros"]) if sparsity_rows else []
  lines += [
    "",
    "Sparsity of the ticket masks at the end of each round (pruned weights per "
    "leaf, measured from the masks):",
    "",
    "| round | " + " | ".join(leaves) + " | all kernels | planned | same in all seeds |",
    "|---|" + "---|" * (len(leaves) + 3),
  ]
  for row in sparsity_rows:
    cells = [f"{row['zeros'][k]:,} ({100 * row['leaf_sparsity'][k]:.2f}%)" for k in leaves]
    lines.append(
      f"| {row['round']} | "
      + " | ".join(cells)
      + f" | {100 * row['sparsity']:.2f}% | {100 * row['planned']:.2f}% | "
      f"{'yes' if row['identical_across_seeds'] else 'NO'} |"
    )
  return "\n".join(lines)


# ============================================================================ the run


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs the lottery-ticket experiment of ``config`` and writes its outputs.

  Args:
      config: a lottery config (``experiments/configs/mnist_lth.py``).

  Returns:
      ``rows``, ``aggregate``, ``cycle_sparsity``, ``tickets`` and ``reinits`` (the run
      records), ``wall_time_s`` and ``output_dir``.

  Raises:
      ValueError: for a bad config.
      FileNotFoundError: if the dataset is not prepared.
      experiments.train.StopRequested: after the checkpoint of ``config.stop_after_step``.

  A config with a ``study`` (AP, PQ, early-bird, sparse double descent) is run by
  `experiments.imp_studies.run` instead.
  """
  if config.get("study", None) is not None:
    return imp_studies.run(config)
  validate(config)
  lt = config.lottery
  steps, rounds = int(lt.round_steps), int(lt.rounds)
  chosen = reinit_rounds(config)
  vmap = bool(config.get("vmap_seeds", True))
  with runner.start(config, "lottery", len(config.seeds) * (1 + len(chosen))) as experiment:
    log, out_dir, model = experiment.log, experiment.out_dir, experiment.model
    image_shape = experiment.dataset.image_shape
    log(
      f"Lottery tickets: {config.model}, {rounds} rounds of {steps} steps after a dense "
      f"round (batch {config.batch_size}, {config.optimizer.name} "
      f"{config.optimizer.learning_rate}), pruning {lt.rate:.0%} per round "
      f"({lt.output_layer}: {lt.output_rate:.0%}), rewinding to init; random reinit of "
      f"rounds {chosen[0] if chosen else '-'}..{chosen[-1] if chosen else '-'}; seeds "
      f"{list(config.seeds)}; jax backend {jax.default_backend()}"
    )

    def ticket_setups(specs):
      tx = ticket_tx(config)
      return [train.RunSetup(tx, train.init_state(model, tx, s.seed, image_shape)) for s in specs]

    tickets = experiment.train(
      ticket_specs(config),
      ticket_setups,
      config=phase_config(config, (rounds + 1) * steps),
      vmap=vmap,
    )
    rows = [row for record in tickets for row in ticket_rows(record, config)]
    ticket_row = {(row["seed"], row["round"]): row for row in rows}
    ticket_dir = {record["seed"]: out_dir / "masks" / record["name"] for record in tickets}

    reinits = []
    for round_ in chosen:

      def reinit_setups(specs):
        return [
          reinit_setup(
            config,
            model,
            s,
            train.load_cycle_masks(ticket_dir[s.seed], round_, experiment.variables["params"]),
            image_shape,
          )
          for s in specs
        ]

      done = experiment.train(
        reinit_specs(config, round_), reinit_setups, config=phase_config(config, steps), vmap=vmap
      )
      for record in done:
        rows.append(
          _round_row(
            "reinit",
            round_,
            record["seed"],
            ticket_row[record["seed"], round_]["remaining"],
            record["evaluations"],
            0,
            record["name"],
          )
        )
      reinits += done
      ticket_acc = np.mean([ticket_row[r["seed"], round_]["final_accuracy"] for r in done])
      log(
        f"==> round {round_}: {100 * rows[-1]['remaining']:.1f}% of the weights "
        f"remain; mean test acc: ticket {ticket_acc:.4f}, reinit "
        f"{np.mean([r['final']['test_accuracy'] for r in done]):.4f}"
      )

    agg = aggregate(rows)
    sparsity_rows = cycle_sparsity(out_dir, tickets, config)
    summary = {
      "model": config.model,
      "dataset": config.dataset,
      "round_steps": steps,
      "rounds": rounds,
      "seeds": [int(s) for s in config.seeds],
      "wall_time_s": experiment.elapsed(),
      "rows": rows,
      "aggregate": agg,
      "cycle_sparsity": sparsity_rows,
    }
    with open(out_dir / "summary.json", "w") as f:
      json.dump(summary, f, indent=2)
    outputs.write_rows(rows, out_dir / "summary.csv")
    outputs.write_rows(
      [
        {
          "round": row["round"],
          **{f"zeros/{k}": v for k, v in row["zeros"].items()},
          **{f"sparsity/{k}": v for k, v in row["leaf_sparsity"].items()},
          "sparsity": row["sparsity"],
          "planned": row["planned"],
          "identical_across_seeds": row["identical_across_seeds"],
        }
        for row in sparsity_rows
      ],
      out_dir / "cycle_sparsity.csv",
    )
    tables = format_tables(agg, sparsity_rows)
    (out_dir / "summary.md").write_text(tables + "\n")
    title = (
      f"Lottery tickets, {config.model} on {config.dataset} ({steps} iterations per "
      f"round, {len(config.seeds)} seeds)"
    )
    if config.get("plots", True):
      dense = next((a for a in agg if a["method"] == "ticket" and a["round"] == 0), None)
      plots.plot_lottery(
        agg,
        out_dir / "lottery.png",
        title,
        dense_accuracy=None if dense is None else dense["final_accuracy_mean"],
      )
    log("")
    log(title + ":")
    log(tables)
    wall = experiment.finish(
      f"summary.{{json,csv,md}}, cycle_sparsity.csv, "
      f"{'lottery.png, ' if config.get('plots', True) else ''}runs/, masks/ and checkpoints/"
    )
    return {
      "rows": rows,
      "aggregate": agg,
      "cycle_sparsity": sparsity_rows,
      "tickets": tickets,
      "reinits": reinits,
      "wall_time_s": wall,
      "output_dir": str(out_dir),
    }
