"""The sweep's PNG plots (matplotlib, Agg backend).

* ``accuracy_vs_sparsity.png``: final test accuracy against the fraction of weights
  remaining (log scale) for every pruning method of the sweep (mean over seeds, with the
  standard deviation as error bars), the dense baseline as a dashed line, and the
  published points of ``config.published`` as distinct black markers (a published dense
  result, sparsity 0, as a dotted line).
* ``training_curves.png``: per method, test accuracy, kernel sparsity and training loss
  against the step, one line per target sparsity (and the dense baseline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

_PUBLISHED_MARKERS = ("*", "D", "P", "X", "^", "v", "s", "p", "h", "<", ">")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def plot_accuracy_vs_sparsity(agg: Sequence[dict], path: Path, title: str,
                              published: Sequence[dict] = ()) -> None:
    """Test accuracy against sparsity for every method, the dense line, published points.

    Args:
        agg: `experiments.outputs.aggregate` rows.
        path: the PNG to write.
        title: the plot's title.
        published: `experiments.outputs.published_points`.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    sparse = [a for a in agg if a["method"] != "dense"]
    for i, method in enumerate(dict.fromkeys(a["method"] for a in sparse)):
        pts = sorted((a for a in sparse if a["method"] == method),
                     key=lambda a: a["kernel_sparsity"])
        x = [100 * (1 - a["kernel_sparsity"]) for a in pts]
        y = [100 * a["test_accuracy"] for a in pts]
        err = [100 * a["test_accuracy_std"] for a in pts]
        ax.errorbar(x, y, yerr=err if any(err) else None, marker="o", capsize=3,
                    label=method.replace("_", "-"), color=f"C{i}")
    for a in agg:
        if a["method"] == "dense":
            ax.axhline(100 * a["test_accuracy"], color="k", linestyle="--",
                       label=f"dense ({100 * a['test_accuracy']:.2f}%)")
    marker_of = {}  # one marker per label: the points of one method share it
    for p in published:
        if p["sparsity"] > 0 and p["label"] not in marker_of:
            marker_of[p["label"]] = len(marker_of)
    labelled = set()
    for p in published:
        j = marker_of.get(p["label"], 0)
        if p["sparsity"] == 0:
            ax.axhline(p["accuracy"], color="0.45", linestyle=":",
                       label=f"{p['label']} ({p['accuracy']:.2f}%)")
        else:
            ax.plot([100 * (1 - p["sparsity"])], [p["accuracy"]], linestyle="none",
                    marker=_PUBLISHED_MARKERS[j % len(_PUBLISHED_MARKERS)], markersize=10,
                    markerfacecolor="none" if j % 2 else "k", markeredgecolor="k",
                    label=None if p["label"] in labelled else p["label"])
            labelled.add(p["label"])
    _remaining_axis(ax, [a["target_sparsity"] for a in sparse],
                    [p["sparsity"] for p in published])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training_curves(records: Sequence[dict], path: Path, title: str) -> None:
    """Test accuracy, kernel sparsity and training loss against the step, per method.

    Args:
        records: the run records.
        path: the PNG to write.
        title: the plot's title.
    """
    plt = _pyplot()
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
            acc_ax.plot(steps, [100 * e["test_accuracy"] for e in r["evaluations"]], "k--",
                        label="dense" if j == 0 else None)
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
                acc_ax.plot(steps, [100 * e["test_accuracy"] for e in r["evaluations"]],
                            color=colour[t], marker=".", label=label)
                sp_ax.plot(steps, [100 * e["kernel_sparsity"] for e in r["evaluations"]],
                           color=colour[t], marker=".")
                loss_ax.plot(steps, [e["loss"] for e in r["evaluations"]], color=colour[t],
                             marker=".")
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
