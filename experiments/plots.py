"""The sweep's PNG plots (matplotlib, Agg backend).

* ``accuracy_vs_sparsity.png``: final test accuracy against the fraction of weights
  remaining (log scale) for every pruning method of the sweep (mean over seeds, with the
  standard deviation as error bars), the dense baseline as a dashed line, and the
  published points of ``config.published`` as distinct black markers (a published dense
  result, sparsity 0, as a dotted line).
* ``training_curves.png``: per method, test accuracy, kernel sparsity and training loss
  against the step, one line per target sparsity (and the dense baseline).
* ``error_vs_sparsity.png``: the first plot with the test error instead of the accuracy
  (``config.plot_error``).
* ``learning_rates.png``: the learning rate of every method against the step (sweeps with
  IMP methods), the prunes dotted.
* ``lottery.png`` (`experiments.lottery`): early-stopping iteration, accuracy there and at
  the end of the round against the weights remaining, tickets against random reinit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

_PUBLISHED_MARKERS = ("*", "D", "P", "X", "^", "v", "s", "p", "h", "<", ">")
_METHOD_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "h")


def pyplot():
  """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def save(plt, fig, path: Path) -> None:
  """Writes ``fig`` to ``path`` (tight layout, 120 dpi) and closes it."""
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _remaining_axis(ax, sparsities: Sequence[float], extra: Sequence[float] = ()) -> None:
  """x axis = % of weights remaining, log scale, decreasing to the right."""
  ax.set_xscale("log")
  ticks = sorted({round(100 * (1 - s), 6) for s in sparsities if s < 1}, reverse=True)
  ax.set_xticks(ticks)
  ax.set_xticklabels([f"{t:g}%\n({100 - t:g}% sparse)" for t in ticks], fontsize=8)
  ax.minorticks_off()
  span = ticks + [100 * (1 - s) for s in extra if 0 < s < 1]
  if span:
    ax.set_xlim(max(span) * 1.25, min(span) / 1.25)
  ax.set_xlabel("weights remaining (sparsity of the pruned layers)")


def plot_accuracy_vs_sparsity(
  agg: Sequence[dict], path: Path, title: str, published: Sequence[dict] = (), error: bool = False
) -> None:
  """Test accuracy against sparsity for every method, the dense line, published points.

  Args:
      agg: `experiments.outputs.aggregate` rows.
      path: the PNG to write.
      title: the plot's title.
      published: `experiments.outputs.published_points`.
      error: plot the test error (100 - accuracy, in %) instead of the accuracy.
  """
  plt = pyplot()

  def value(accuracy_percent: float) -> float:
    return 100.0 - accuracy_percent if error else accuracy_percent

  sparse = [a for a in agg if a["method"] != "dense"]
  # More methods than markers (the learned-masks sweep): a wider figure, the legend beside it.
  crowded = len(dict.fromkeys(a["method"] for a in sparse)) > len(_METHOD_MARKERS)
  fig, ax = plt.subplots(figsize=(10.0, 5.2) if crowded else (7.5, 4.8))
  for i, method in enumerate(dict.fromkeys(a["method"] for a in sparse)):
    pts = sorted((a for a in sparse if a["method"] == method), key=lambda a: a["kernel_sparsity"])
    x = [100 * (1 - a["kernel_sparsity"]) for a in pts]
    y = [value(100 * a["test_accuracy"]) for a in pts]
    err = [100 * a["test_accuracy_std"] for a in pts]
    ax.errorbar(
      x,
      y,
      yerr=err if any(err) else None,
      capsize=3,
      marker=_METHOD_MARKERS[i % len(_METHOD_MARKERS)],
      label=method.replace("_", "-"),
      color=f"C{i}",
    )
  for a in agg:
    if a["method"] == "dense":
      ax.axhline(
        value(100 * a["test_accuracy"]),
        color="k",
        linestyle="--",
        label=f"dense ({value(100 * a['test_accuracy']):.2f}%)",
      )
  marker_of = {}  # one marker per label: the points of one method share it
  for p in published:
    if p["sparsity"] > 0 and p["label"] not in marker_of:
      marker_of[p["label"]] = len(marker_of)
  labelled = set()
  for p in published:
    j = marker_of.get(p["label"], 0)
    if p["sparsity"] == 0:
      ax.axhline(
        value(p["accuracy"]),
        color="0.45",
        linestyle=":",
        label=f"{p['label']} ({value(p['accuracy']):.2f}%)",
      )
    else:
      ax.plot(
        [100 * (1 - p["sparsity"])],
        [value(p["accuracy"])],
        linestyle="none",
        marker=_PUBLISHED_MARKERS[j % len(_PUBLISHED_MARKERS)],
        markersize=10,
        markerfacecolor="none" if j % 2 else "k",
        markeredgecolor="k",
        label=None if p["label"] in labelled else p["label"],
      )
      labelled.add(p["label"])
  _remaining_axis(ax, [a["target_sparsity"] for a in sparse], [p["sparsity"] for p in published])
  if error:  # log scale: errors of 1.6% and 9% on one plot
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(
      FuncFormatter(lambda v, _: f"{v:g}" if round(v, 6) in (1.5, 2, 2.5, 3, 4, 5, 6, 8) else "")
    )
  ax.set_ylabel("test error (%)" if error else "test accuracy (%)")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  if crowded:
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  else:
    ax.legend(fontsize=8)
  save(plt, fig, path)


def plot_training_curves(records: Sequence[dict], path: Path, title: str) -> None:
  """Test accuracy, kernel sparsity and training loss against the step, per method.

  Args:
      records: the run records.
      path: the PNG to write.
      title: the plot's title.
  """
  plt = pyplot()
  methods = list(dict.fromkeys(r["method"] for r in records if r["method"] != "dense"))
  dense = [r for r in records if r["method"] == "dense"]
  cols = max(1, len(methods))
  fig, axes = plt.subplots(3, cols, figsize=(5 * cols, 9), sharex=True, squeeze=False)
  targets = sorted({r["target_sparsity"] for r in records if r["method"] != "dense"})
  cmap = plt.get_cmap("viridis")
  colour = {t: cmap(i / max(1, len(targets) - 1) * 0.9) for i, t in enumerate(targets)}
  lo = min([100 * e["test_accuracy"] for r in records for e in r["evaluations"]] + [100])
  for c in range(cols):
    acc_ax, sp_ax, loss_ax = axes[0, c], axes[1, c], axes[2, c]
    for j, r in enumerate(dense):
      steps = [e["step"] for e in r["evaluations"]]
      acc_ax.plot(
        steps,
        [100 * e["test_accuracy"] for e in r["evaluations"]],
        "k--",
        label="dense" if j == 0 else None,
      )
      loss_ax.plot(steps, [e["loss"] for e in r["evaluations"]], "k--")
    if methods:
      seen = set()
      for r in records:
        if r["method"] != methods[c]:
          continue
        steps = [e["step"] for e in r["evaluations"]]
        t = r["target_sparsity"]
        label = f"{t:.0%}" if t not in seen else None
        seen.add(t)
        acc_ax.plot(
          steps,
          [100 * e["test_accuracy"] for e in r["evaluations"]],
          color=colour[t],
          marker=".",
          label=label,
        )
        sp_ax.plot(
          steps, [100 * e["kernel_sparsity"] for e in r["evaluations"]], color=colour[t], marker="."
        )
        loss_ax.plot(steps, [e["loss"] for e in r["evaluations"]], color=colour[t], marker=".")
      acc_ax.set_title(methods[c].replace("_", "-"))
    else:
      acc_ax.set_title("dense")
    acc_ax.set_ylabel("test accuracy (%)")
    sp_ax.set_ylabel("kernel sparsity (%)")
    loss_ax.set_ylabel("training loss (mean since last eval)")
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("training step")
    acc_ax.set_ylim(max(lo - 0.5, 80 if lo > 80 else 0), 100)
    for ax in (acc_ax, sp_ax, loss_ax):
      ax.grid(True, alpha=0.3)
    acc_ax.legend(fontsize=8, title="target sparsity" if methods else None)
  fig.suptitle(title)
  save(plt, fig, path)


def plot_learning_rates(
  schedules: dict, num_steps: int, path: Path, title: str, boundaries: Sequence[int] = ()
) -> None:
  """The learning rate of every method against the step, IMP cycle boundaries dotted.

  Args:
      schedules: ``{method: optax schedule}``.
      num_steps: the steps to draw.
      path: the PNG to write.
      title: the plot's title.
      boundaries: steps at which IMP prunes (drawn as vertical lines).
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  plt = pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 4.2))
  steps = np.arange(num_steps)
  # The dense baseline last (dashed, on top of a method that shares its schedule).
  order = sorted(schedules, key=lambda m: m == "dense")
  for i, method in enumerate(order):
    lr = np.asarray(jax.device_get(jax.vmap(schedules[method])(jnp.asarray(steps))))
    dense = method == "dense"
    ax.plot(
      steps,
      lr,
      color="k" if dense else f"C{i}",
      label=method.replace("_", "-"),
      linestyle="--" if dense else "-",
      linewidth=1.2,
    )
  for b in boundaries:
    ax.axvline(int(b), color="0.6", linestyle=":", linewidth=1)
  ax.set_xlabel("training step (dotted: IMP prunes)")
  ax.set_ylabel("learning rate")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  save(plt, fig, path)


_LOTTERY_STYLE = {
  "ticket": ("C0", "winning tickets (rewound to init)"),
  "reinit": ("C3", "random reinit (same masks, fresh init)"),
}


def plot_lottery(
  agg: Sequence[dict], path: Path, title: str, dense_accuracy: float | None = None
) -> None:
  """Frankle & Carbin's Fig. 4 for tickets and their random reinitialisation.

  Three panels against the weights remaining (log scale): the early-stopping iteration
  (minimum validation loss), the test accuracy there, and the test accuracy at the end of
  the round; the mean over seeds as a line, the min-max over seeds as a band (the paper's
  error bars are the min and max of its trials).

  Args:
      agg: `experiments.lottery.aggregate` rows (``method``, ``remaining`` and ``mean`` /
          ``min`` / ``max`` of ``final_accuracy``, ``early_stop_iteration`` and
          ``early_stop_accuracy``).
      path: the PNG to write.
      title: the plot's title.
      dense_accuracy: the dense network's final accuracy (fraction), drawn as a line.
  """
  plt = pyplot()
  panels = [
    ("early_stop_iteration", "early-stopping iteration", 1.0),
    ("early_stop_accuracy", "test accuracy at early stopping (%)", 100.0),
    ("final_accuracy", "test accuracy at the end of the round (%)", 100.0),
  ]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
  remaining = sorted({a["remaining"] for a in agg}, reverse=True)
  for ax, (key, label, scale) in zip(axes, panels):
    for method in dict.fromkeys(a["method"] for a in agg):
      colour, name = _LOTTERY_STYLE.get(method, ("C2", method))
      pts = sorted((a for a in agg if a["method"] == method), key=lambda a: -a["remaining"])
      x = [100 * a["remaining"] for a in pts]
      ax.plot(
        x,
        [scale * a[f"{key}_mean"] for a in pts],
        marker="o",
        markersize=3.5,
        color=colour,
        label=name,
      )
      ax.fill_between(
        x,
        [scale * a[f"{key}_min"] for a in pts],
        [scale * a[f"{key}_max"] for a in pts],
        color=colour,
        alpha=0.2,
        linewidth=0,
      )
    if dense_accuracy is not None and key == "final_accuracy":
      ax.axhline(
        100 * dense_accuracy,
        color="k",
        linestyle="--",
        linewidth=1,
        label=f"dense ({100 * dense_accuracy:.2f}%)",
      )
    ax.set_xscale("log")
    ticks = [
      r
      for r in (100, 51.3, 21.1, 7.0, 3.6, 1.9)
      if min(remaining) * 100 / 1.1 <= r <= max(remaining) * 100 * 1.1
    ]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(100 * max(remaining) * 1.15, 100 * min(remaining) / 1.15)
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
  lo = min(100 * min(a["final_accuracy_min"], a["early_stop_accuracy_min"]) for a in agg)
  for ax in axes[1:]:
    ax.set_ylim(lo - 0.3, None)
  axes[2].legend(fontsize=8, loc="lower left")
  fig.suptitle(title)
  save(plt, fig, path)
