"""Sup-tickets (Yin et al. 2022) against the single final ticket, LeNet-300-100 / MNIST.

Per method (``rigl``, ``granet``), sparsity and seed, two runs of ``num_train_steps`` updates each,
from the same initialisation and data order:

* the Sup-tickets run (`jaxprune.sup_tickets`): the main phase (``num_train_steps - cycles *
  cycle_steps`` updates) is the method with the step learning rate (``lr`` divided by 10 at 50%
  and 75% of the phase); then ``cycles`` cycles of ``cycle_steps`` updates, each starting with a
  re-exploration (``re_explore`` of every kernel's active weights dropped and regrown) and a
  triangular learning rate ``low -> high -> low``. Ticket 0 is the weights at the end of the main
  phase, ticket ``k`` those at the end of cycle ``k``; after each, the running superposition
  (`jaxprune.sup_tickets.superpose`, the authors' cumulative average, pruned back to the budget by
  one global magnitude threshold) is evaluated;
* the baseline: the same method with the step learning rate over all the updates, no cycles.

Outputs under ``output_dir``: ``runs/<method>_<sparsity>_s<seed>.json``, ``summary.md``,
``summary.csv`` and ``sup_tickets.png`` (test error against the tickets collected).
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
import optax

import jaxprune
from experiments import config as config_lib
from experiments import loops, models, plots
from experiments import structured as st
from jaxprune import sup_tickets

METHODS = ("rigl", "granet")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a Sup-tickets config.

  Raises:
    ValueError: for an unknown method, or cycles that do not fit in the steps.
  """
  unknown = [m for m in config.methods if m not in METHODS]
  if unknown:
    raise ValueError(f"sup_tickets: unknown methods {unknown}; valid: {', '.join(METHODS)}")
  if int(config.cycles) * int(config.cycle_steps) >= int(config.num_train_steps):
    raise ValueError(
      "sup_tickets: the cycles must leave a main phase (cycles * cycle_steps < steps)"
    )
  models.get_model(config.model, 10)


def _step_lr(lr: float, steps: int) -> optax.Schedule:
  """``lr``, divided by 10 at 50% and 75% of ``steps``."""
  return optax.piecewise_constant_schedule(lr, {steps // 2: 0.1, (3 * steps) // 4: 0.1})


def _options(method: str, config, steps: int) -> dict[str, Any]:
  """The method's timing for a (main) phase of ``steps`` updates."""
  d = config.dst
  if method == "rigl":
    return {
      "frequency": int(d.frequency),
      "end_step": int(round(float(d.rigl_end_fraction) * steps)),
      "options": {"drop_fraction": float(d.drop_fraction), "distribution": "erk"},
    }
  return {
    "frequency": int(d.frequency),
    "begin_step": int(round(float(d.granet_begin_fraction) * steps)),
    "end_step": int(round(float(d.granet_end_fraction) * steps)),
    "options": {"drop_fraction": float(d.granet_drop_fraction), "distribution": "erk"},
  }


def _inner(config, lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.sgd(lr, momentum=float(config.momentum))


def _one(config, data, model, method: str, sparsity: float, seed: int) -> dict:
  apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  factory = {"rigl": jaxprune.rigl, "granet": jaxprune.granet}[method]
  n, cycles, length = int(config.num_train_steps), int(config.cycles), int(config.cycle_steps)
  begin = n - cycles * length
  init = model.init(jax.random.key(seed), data.train_x[:1])["params"]
  bar = bool(config.progress)
  lr = sup_tickets.cyclic_learning_rate(
    _step_lr(float(config.lr), begin),
    begin=begin,
    cycle_steps=length,
    cycles=cycles,
    low=float(config.low),
    high=float(config.high),
  )
  timing = _options(method, config, begin)
  tx = sup_tickets.cyclic(
    factory,
    sparsity,
    begin=begin,
    cycle_steps=length,
    cycles=cycles,
    re_explore=float(config.re_explore),
    seed=seed,
    inner=_inner(config, lr),
    **timing,
  )
  ends = set(sup_tickets.cycle_ends(begin, length, cycles))
  tickets, superposed = [], []
  running: list[Any] = [None]

  def collect(count, params, state):
    if count not in ends:
      return
    ticket = jax.device_get(params)
    tickets.append(loops.accuracy(apply, ticket, data))
    running[0] = sup_tickets.superpose(running[0], ticket, sparsity)
    superposed.append(loops.accuracy(apply, running[0].params, data))

  loops.fit(
    apply,
    init,
    tx,
    data,
    steps=n,
    batch_size=int(config.batch_size),
    seed=seed,
    desc=f"sup-tickets {method} {sparsity:g} s{seed}",
    enabled=bar,
    callback=collect,
  )
  kernels = [x for p, x in jaxprune.leaves.named_leaves(running[0].params) if p.endswith("kernel")]
  zeros = sum(int(np.sum(np.asarray(k) == 0)) for k in kernels)
  total = sum(int(np.size(k)) for k in kernels)
  # The baseline: the method over all the updates with the step learning rate, no cycles.
  base_timing = _options(method, config, n)
  base = factory(
    sparsity,
    seed=seed,
    inner=_inner(config, _step_lr(float(config.lr), n)),
    frequency=base_timing["frequency"],
    end_step=base_timing["end_step"],
    **({"begin_step": base_timing["begin_step"]} if "begin_step" in base_timing else {}),
    **base_timing["options"],
  )
  params, _ = loops.fit(
    apply,
    init,
    base,
    data,
    steps=n,
    batch_size=int(config.batch_size),
    seed=seed,
    desc=f"{method} {sparsity:g} s{seed}",
    enabled=bar,
  )
  return {
    "method": method,
    "sparsity": sparsity,
    "seed": seed,
    "ticket_accuracy": tickets,
    "superposed_accuracy": superposed,
    "baseline_accuracy": loops.accuracy(apply, params, data),
    "superposed_sparsity": zeros / total,
  }


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs the Sup-tickets experiment of ``config`` and writes its outputs.

  Returns:
    ``records``, ``rows`` (the summary), ``wall_time_s`` and ``output_dir``.
  """
  validate(config)
  start = time.time()
  out = Path(config.output_dir)
  (out / "runs").mkdir(parents=True, exist_ok=True)
  (out / "config.json").write_text(config.to_json_best_effort(indent=1))
  fingerprint = config_lib.fingerprint(config)
  data = loops.load(config)
  model = models.get_model(config.model, data.num_classes)
  records = []
  for method in config.methods:
    for sparsity in config.sparsities:
      for seed in config.seeds:
        path = out / "runs" / f"{method}_{float(sparsity):g}_s{int(seed)}.json"
        record = loops.cached(path, fingerprint)
        if record is None:
          record = _one(config, data, model, method, float(sparsity), int(seed))
          record["fingerprint"] = fingerprint
          path.write_text(json.dumps(record, indent=1))
        records.append(record)
        st.tqdm_write(
          f"{method} {float(sparsity):.0%} s{seed}: final ticket "
          f"{100 * (1 - record['ticket_accuracy'][-1]):.2f}%, sup-ticket "
          f"{100 * (1 - record['superposed_accuracy'][-1]):.2f}%, baseline "
          f"{100 * (1 - record['baseline_accuracy']):.2f}% error"
        )
  rows = write_outputs(records, out, config, time.time() - start)
  return {
    "records": records,
    "rows": rows,
    "wall_time_s": time.time() - start,
    "output_dir": str(out),
  }


def write_outputs(records, out: Path, config, wall: float) -> list[dict]:
  """``summary.csv``, ``summary.md`` and ``sup_tickets.png``; returns the summary rows."""
  rows = []
  for method in dict.fromkeys(r["method"] for r in records):
    for sparsity in dict.fromkeys(r["sparsity"] for r in records):
      rs = [r for r in records if r["method"] == method and r["sparsity"] == sparsity]
      if not rs:
        continue
      err = lambda key, i=None: [  # noqa: E731
        1 - (r[key] if i is None else r[key][i]) for r in rs
      ]
      rows.append(
        {
          "method": method,
          "sparsity": sparsity,
          "seeds": len(rs),
          "baseline": err("baseline_accuracy"),
          "final_ticket": err("ticket_accuracy", -1),
          "sup_ticket": err("superposed_accuracy", -1),
          "ticket_0": err("ticket_accuracy", 0),
          "tickets": [
            [1 - r["ticket_accuracy"][k] for r in rs] for k in range(len(rs[0]["ticket_accuracy"]))
          ],
          "superposed": [
            [1 - r["superposed_accuracy"][k] for r in rs]
            for k in range(len(rs[0]["superposed_accuracy"]))
          ],
          "superposed_sparsity": float(np.mean([r["superposed_sparsity"] for r in rs])),
        }
      )
  with open(out / "summary.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(
      ["method", "sparsity", "seeds", "baseline_err", "final_ticket_err", "sup_ticket_err"]
    )
    for r in rows:
      w.writerow(
        [r["method"], r["sparsity"], r["seeds"]]
        + [f"{100 * np.mean(r[k]):.3f}" for k in ("baseline", "final_ticket", "sup_ticket")]
      )
  table = loops.markdown_table(
    [
      "method",
      "sparsity",
      "DST, whole budget",
      "ticket 0 (end of main phase)",
      "final ticket",
      "Sup-ticket",
    ],
    [
      [
        r["method"],
        f"{r['sparsity']:.0%}",
        loops.mean_std(r["baseline"]),
        loops.mean_std(r["ticket_0"]),
        loops.mean_std(r["final_ticket"]),
        "**" + loops.mean_std(r["sup_ticket"]) + "**"
        if np.mean(r["sup_ticket"]) < np.mean(r["final_ticket"])
        else loops.mean_std(r["sup_ticket"]),
      ]
      for r in rows
    ],
  )
  (out / "summary.md").write_text(
    f"# Sup-tickets, {config.model} on {config.dataset}\n\n"
    f"{config.num_train_steps} updates per run, {config.cycles} cycles of {config.cycle_steps}; "
    f"test error, mean ± std over seeds {list(config.seeds)}; {wall:.0f} s.\n\n" + table
  )
  print(table)
  if config.plots:
    _plot(rows, out / "sup_tickets.png", config)
  return rows


def _plot(rows, path: Path, config) -> None:
  plt = plots.pyplot()

  sparsities = list(dict.fromkeys(r["sparsity"] for r in rows))
  fig, axes = plt.subplots(1, len(sparsities), figsize=(5 * len(sparsities), 4), squeeze=False)
  for ax, s in zip(axes[0], sparsities):
    for i, r in enumerate(x for x in rows if x["sparsity"] == s):
      k = np.arange(len(r["tickets"]))
      color = f"C{i}"
      ax.errorbar(
        k, [100 * np.mean(t) for t in r["tickets"]], yerr=[100 * np.std(t) for t in r["tickets"]],
        marker="o", ls="--", color=color, capsize=2, label=f"{r['method']}: ticket k",
      )  # fmt: skip
      ax.errorbar(
        k, [100 * np.mean(t) for t in r["superposed"]],
        yerr=[100 * np.std(t) for t in r["superposed"]],
        marker="s", color=color, capsize=2, label=f"{r['method']}: tickets 0..k superposed",
      )  # fmt: skip
      ax.axhline(
        100 * np.mean(r["baseline"]), color=color, ls=":", label=f"{r['method']}, whole budget"
      )
    ax.set_xlabel("tickets collected (0: end of the main phase)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{config.model}, {s:.0%} sparse")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  plots.save(plt, fig, path)
