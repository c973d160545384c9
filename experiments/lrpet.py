"""LRPET (Guo et al. 2024) on LeNet-300-100 / MNIST: low-rank training from scratch.

Per prune ratio (the fraction of each hidden kernel's singular values removed) and seed, from the
same initialisation and data order, each method trains for ``num_train_steps`` updates with SGD
(momentum, cosine learning rate):

* ``dense``: no projection (once per seed).
* ``lrpet``: `jaxprune.lrpet` with energy transfer: the two hidden kernels are projected onto
  their rank after every epoch and at the last update; the output layer stays full rank (the
  authors project the convolutions, not the classifier).
* ``lrpet_no_transfer``: the same projections without energy transfer (truncated SVD), the
  paper's ablation.
* ``lrpet_plain_last``: ``lrpet``'s projections with energy transfer, except the last one, which
  is a plain truncation: in a network without batch norm the transfer's rescaling of the kept
  singular values at the last projection is never trained away (this variant is ours, to test
  that explanation).
* ``svd_retrain``: the alternative LRPET argues against: train dense for ``1 - retrain_fraction``
  of the updates, factorise the hidden kernels by truncated SVD, then retrain the factorised
  network (``retrain_lr``, cosine) for the rest; the error right after the factorisation is
  recorded too.

Every low-rank result is measured on the factorised network (`jaxprune.low_rank.factorize`,
``LowRankDense`` layers): its parameter count and multiply-adds are those of the factors. The
model is an MLP of `experiments.models.LeNet300100` (``lenet300_100``, ``mlp_40_40``).
Outputs: ``runs/``, ``summary.md``, ``summary.csv``, ``lrpet.png``.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

import jaxprune
from experiments import config as config_lib
from experiments import loops, models, plots
from experiments import structured as st
from jaxprune import low_rank

METHODS = ("dense", "lrpet", "lrpet_no_transfer", "lrpet_plain_last", "svd_retrain")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks an LRPET config.

  Raises:
    ValueError: for an unknown method or a ratio outside [0, 1).
  """
  unknown = [m for m in config.methods if m not in METHODS]
  if unknown:
    raise ValueError(f"lrpet: unknown methods {unknown}; valid: {', '.join(METHODS)}")
  for r in config.prune_ratios:
    if not 0.0 <= float(r) < 1.0:
      raise ValueError(f"lrpet: prune ratios must be in [0, 1), got {r}")
  model = models.get_model(config.model, 10)
  if not isinstance(model, models.LeNet300100):
    raise ValueError(
      f"lrpet: the runner factorises the hidden layers of an MLP (lenet300_100, mlp_40_40), got "
      f"{config.model!r}"
    )


class LowRankMLP(nn.Module):
  """An MLP like `experiments.models.LeNet300100` with rank-``ranks`` hidden kernels
  (`jaxprune.low_rank` layers) and a full output layer."""

  widths: tuple[int, ...]
  ranks: tuple[int, ...]
  classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = x.reshape((x.shape[0], -1))
    for i, (width, rank) in enumerate(zip(self.widths, self.ranks)):
      x = nn.relu(low_rank.LowRankDense(width, rank, name=f"Dense_{i}")(x))
    return nn.Dense(self.classes, name=f"Dense_{len(self.widths)}")(x)


def _hidden(params) -> list[str]:
  """The hidden kernels: every ``Dense_i/kernel`` but the last layer's."""
  names = sorted(k for k, _ in jaxprune.leaves.named_leaves(params) if k.endswith("/kernel"))
  return sorted(names, key=lambda k: int(k.split("/")[0].split("_")[1]))[:-1]


def _macs(params, ranks: dict[str, int]) -> int:
  """Multiply-adds per example: ``r (fan_in + fan_out)`` for a factorised kernel."""
  total = 0
  for name, w in jaxprune.leaves.named_leaves(params):
    if not name.endswith("/kernel"):
      continue
    m, n = w.shape
    total += ranks[name] * (m + n) if name in ranks else m * n
  return total


def _sgd(config, lr: float, steps: int) -> optax.GradientTransformation:
  return optax.sgd(optax.cosine_decay_schedule(lr, steps), momentum=float(config.momentum))


def _factorised(params, ratio: float):
  """``(LowRankMLP, its params, ranks)`` of the projected ``params``."""
  hidden = _hidden(params)
  ranks = low_rank.ranks(params, prune_ratio=ratio, prune=hidden)
  factors = low_rank.factorize(params, prune_ratio=ratio, prune=hidden)
  named = dict(jaxprune.leaves.named_leaves(params))
  module = LowRankMLP(
    tuple(int(named[k].shape[1]) for k in hidden),
    tuple(ranks[k] for k in hidden),
    int(named[f"Dense_{len(hidden)}/kernel"].shape[1]),
  )
  return module, low_rank.module_params(factors), ranks


def _one(config, data, model, method: str, ratio: float, seed: int) -> dict:
  apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  n, bs, bar = int(config.num_train_steps), int(config.batch_size), bool(config.progress)
  init = model.init(jax.random.key(seed), data.train_x[:1])["params"]
  dense_params = loops.count_params(init)
  desc = f"{method} {ratio:g} s{seed}"
  if method == "dense":
    params, _ = loops.fit(
      apply, init, _sgd(config, config.lr, n), data, steps=n, batch_size=bs, seed=seed,
      desc=desc, enabled=bar,
    )  # fmt: skip
    acc = loops.accuracy(apply, params, data)
    return {"accuracy": acc, "params": dense_params, "macs": _macs(params, {})}
  if method in ("lrpet", "lrpet_no_transfer", "lrpet_plain_last"):
    epoch = len(data.train_y) // bs
    plain_last = method == "lrpet_plain_last"
    # lrpet_plain_last: the periodic projections only (the last one before the last update), then
    # a plain truncation of the final weights below.
    # (With a single periodic projection before the end, it is the only one.)
    last_periodic = epoch - 1 + ((n - 2 - (epoch - 1)) // epoch) * epoch
    single = plain_last and last_periodic <= epoch - 1
    tx = jaxprune.lrpet(
      prune_ratio=ratio,
      frequency=n if single else epoch,
      begin_step=epoch - 1,
      end_step=None if single else last_periodic if plain_last else n - 1,
      energy_transfer=method != "lrpet_no_transfer",
      prune=_hidden(init),
      inner=_sgd(config, config.lr, n),
    )
    params, _ = loops.fit(
      apply, init, tx, data, steps=n, batch_size=bs, seed=seed, desc=desc, enabled=bar
    )
    if plain_last:  # the last projection, at the last update's weights, without the transfer
      params = low_rank.project(
        params, prune_ratio=ratio, energy_transfer=False, prune=_hidden(init)
      )
    module, small, ranks = _factorised(params, ratio)
    small_apply = lambda p, x: module.apply({"params": p}, x)  # noqa: E731
    singular = {
      k: np.linalg.svd(np.asarray(v), compute_uv=False)
      for k, v in jaxprune.leaves.named_leaves(params)
      if k in ranks
    }
    return {
      "accuracy": loops.accuracy(small_apply, small, data),
      "projected_accuracy": loops.accuracy(apply, params, data),
      "ranks": ranks,
      "rank_residual": {  # the largest removed singular value, relative to the largest
        k: float(s[ranks[k]] / s[0]) for k, s in singular.items()
      },
      "params": loops.count_params(small),
      "macs": _macs(params, ranks),
    }
  # svd_retrain: dense, then factorised and retrained.
  pre = n - int(round(float(config.retrain_fraction) * n))
  params, _ = loops.fit(
    apply, init, _sgd(config, config.lr, pre), data, steps=pre, batch_size=bs, seed=seed,
    desc=desc + " dense", enabled=bar,
  )  # fmt: skip
  module, small, ranks = _factorised(params, ratio)
  small_apply = lambda p, x: module.apply({"params": p}, x)  # noqa: E731
  before = loops.accuracy(small_apply, small, data)
  small, _ = loops.fit(
    small_apply, small, _sgd(config, float(config.retrain_lr), n - pre), data, steps=n - pre,
    batch_size=bs, seed=seed, desc=desc + " retrain", enabled=bar, first_step=pre,
  )  # fmt: skip
  return {
    "accuracy": loops.accuracy(small_apply, small, data),
    "accuracy_before_retraining": before,
    "ranks": ranks,
    "params": loops.count_params(small),
    "macs": _macs(params, ranks),
  }


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs the LRPET experiment of ``config`` and writes its outputs.

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
  model = models.get_model(config.model, data.num_classes)
  records = []
  for method in config.methods:
    for ratio in [0.0] if method == "dense" else [float(r) for r in config.prune_ratios]:
      for seed in config.seeds:
        path = out / "runs" / f"{method}_{ratio:g}_s{int(seed)}.json"
        record = loops.cached(path, fingerprint)
        if record is None:
          record = _one(config, data, model, method, ratio, int(seed))
          record.update(method=method, prune_ratio=ratio, seed=int(seed), fingerprint=fingerprint)
          path.write_text(json.dumps(record, indent=1))
        records.append(record)
        st.tqdm_write(f"{method} {ratio:g} s{seed}: {100 * (1 - record['accuracy']):.2f}% error")
  rows = write_outputs(records, out, config, time.time() - start)
  return {
    "records": records,
    "rows": rows,
    "wall_time_s": time.time() - start,
    "output_dir": str(out),
  }


def write_outputs(records, out: Path, config, wall: float) -> list[dict]:
  """``summary.csv``, ``summary.md`` and ``lrpet.png``; returns the rows."""
  rows = []
  for method in dict.fromkeys(r["method"] for r in records):
    for ratio in dict.fromkeys(r["prune_ratio"] for r in records if r["method"] == method):
      rs = [r for r in records if r["method"] == method and r["prune_ratio"] == ratio]
      row = {
        "method": method,
        "prune_ratio": ratio,
        "seeds": len(rs),
        "errors": [1 - r["accuracy"] for r in rs],
        "params": rs[0]["params"],
        "macs": rs[0]["macs"],
        "ranks": rs[0].get("ranks", {}),
      }
      if "accuracy_before_retraining" in rs[0]:
        row["before"] = [1 - r["accuracy_before_retraining"] for r in rs]
      if "projected_accuracy" in rs[0]:
        row["projected_vs_factorised"] = max(
          abs(r["projected_accuracy"] - r["accuracy"]) for r in rs
        )
        row["rank_residual"] = max(max(r["rank_residual"].values()) for r in rs)
      rows.append(row)
  with open(out / "summary.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(
      ["method", "prune_ratio", "seeds", "test_err_mean", "test_err_std", "params", "macs"]
    )
    for r in rows:
      e = 100 * np.asarray(r["errors"])
      w.writerow([r["method"], r["prune_ratio"], r["seeds"], f"{e.mean():.3f}", f"{e.std():.3f}",
                  r["params"], r["macs"]])  # fmt: skip
  dense = next((r for r in rows if r["method"] == "dense"), None)
  body = []
  for r in rows:
    ranks = "/".join(str(v) for v in r["ranks"].values()) if r["ranks"] else "full"
    extra = ""
    if "before" in r:
      extra = f"before retraining {loops.mean_std(r['before'])}"
    if "rank_residual" in r:
      extra = f"largest removed singular value {r['rank_residual']:.1e} of the largest"
    body.append(
      [
        r["method"],
        f"{r['prune_ratio']:g}",
        ranks,
        loops.mean_std(r["errors"]),
        f"{r['params']:,}" + (f" ({dense['params'] / r['params']:.1f}x fewer)" if dense else ""),
        f"{r['macs']:,}",
        extra,
      ]  # fmt: skip
    )
  table = loops.markdown_table(
    ["method", "prune ratio", "ranks (hidden layers)", "test error", "params", "MACs", "note"],
    body,
  )
  (out / "summary.md").write_text(
    f"# LRPET, {config.model} on {config.dataset}\n\n{config.num_train_steps} updates per run; "
    f"test error, mean ± std over seeds {list(config.seeds)}; {wall:.0f} s.\n\n" + table
  )
  print(table)
  if config.plots:
    _plot(rows, out / "lrpet.png", config)
  return rows


def _plot(rows, path: Path, config) -> None:
  plt = plots.pyplot()

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, method in enumerate(m for m in METHODS if m != "dense"):
    pts = [r for r in rows if r["method"] == method]
    if not pts:
      continue
    ax.errorbar(
      [r["params"] for r in pts], [100 * np.mean(r["errors"]) for r in pts],
      yerr=[100 * np.std(r["errors"]) for r in pts], marker="o", capsize=2, color=f"C{i}",
      label=method,
    )  # fmt: skip
    if "before" in pts[0]:
      ax.plot(
        [r["params"] for r in pts], [100 * np.mean(r["before"]) for r in pts], ls=":",
        marker="x", color=f"C{i}", label="svd (before retraining)",
      )  # fmt: skip
  dense = [r for r in rows if r["method"] == "dense"]
  if dense:
    ax.axhline(100 * np.mean(dense[0]["errors"]), color="k", ls="--", label="dense")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("parameters of the factorised network")
  ax.set_ylabel("test error (%)")
  ax.set_title(f"Low-rank training: {config.model} on {config.dataset}")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  plots.save(plt, fig, path)
