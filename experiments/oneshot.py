"""One-shot pruning of trained models with calibration data (``configs/mnist_oneshot.py``).

For each model (LeNet-300-100, LeNet-5 and a small ViT by default) and seed: train the dense network
(``train_steps`` AdamW steps with a cosine schedule), take ``calibration_images`` training images
(a seeded sample, in batches of ``calibration_batch_size``), and prune the trained weights once,
without retraining, with each method at each target:

* ``magnitude``: the smallest ``|w|`` of each layer (`jaxprune.calibration.magnitude`, the
  baseline of both papers: per layer, no data read);
* ``wanda``: ``|w| * ||x||``, compared within each output (`jaxprune.wanda`, Sun et al. 2023);
* ``sparsegpt``: adaptive masks per block of 128 inputs and the weight reconstruction
  (`jaxprune.sparsegpt`, Frantar & Alistarh 2023).

Targets are a sparsity (``"0.5"``: that fraction of every layer's weights) or an N:M pattern
(``"2:4"``, ``"4:8"``: ``n`` kept of every ``m`` consecutive inputs of each output). ``layer_sets``
says which kernels are pruned: ``"all"`` (the default selection: dense, convolution, attention and
patch-embedding kernels, the classifier included) or ``"inner"`` (all but the first and the last
layer in use order, as the authors' image-classifier code prunes only the layers inside the
blocks); under N:M a layer whose input axis ``m`` does not divide (LeNet-5's first convolution has
one input channel, the ViT's patch embedding 49 inputs) is left dense too, and the record lists
the layers left dense. Each run records the test accuracy of the pruned network, the sparsity
reached over the pruned kernels and over all kernels, and the pruning time: ``prune_s`` is the
first call (with compilation), ``prune_warm_s`` a second identical call (its programs compiled;
with ``warm_timing``).

Outputs under ``output_dir``: ``runs/<run>.json``, ``summary.csv``, ``summary.md`` and
``oneshot.png`` (test accuracy per model, target and method). Trained dense networks
(``checkpoints/``) and finished runs are reused by a rerun of the same config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import jaxprune
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import models
from jaxprune import calibration
from jaxprune.progress import progress

METHODS = ("magnitude", "wanda", "sparsegpt")
LABELS = {"magnitude": "magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT"}
# Which kernels are pruned: every one, or all but the first and last layers in use order.
_LAYER_SETS = {"all": "all", "inner": "all but the first and last"}


def parse_target(target: str) -> tuple[Optional[float], Optional[tuple[int, int]]]:
  """``"0.5"`` -> ``(0.5, None)``; ``"2:4"`` -> ``(None, (2, 4))``.

  Raises:
      ValueError: for anything else (a sparsity outside [0, 1), ``n > m``).
  """
  text = str(target).strip()
  try:
    if ":" in text:
      n, m = (int(v) for v in text.split(":"))
      if not 1 <= n <= m:
        raise ValueError
      return None, (n, m)
    s = float(text)
    if not 0.0 <= s < 1.0:
      raise ValueError
    return s, None
  except ValueError:
    raise ValueError(
      f"oneshot: targets are sparsities in [0, 1) or 'n:m' patterns, got {target!r}"
    ) from None


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a one-shot config.

  Args:
      config: the config.

  Raises:
      ValueError: for an unknown method or model, a bad target, or counts below 1.
  """
  unknown = [m for m in config.methods if m not in METHODS]
  if unknown:
    raise ValueError(f"oneshot: unknown methods {unknown}; valid: {', '.join(METHODS)}")
  for t in config.targets:
    parse_target(t)
  bad = [s for s in config.layer_sets if s not in _LAYER_SETS]
  if bad or not config.layer_sets:
    raise ValueError(
      f"oneshot: layer_sets must be among {', '.join(_LAYER_SETS)}, got {list(config.layer_sets)}"
    )
  for name in config.models:
    models.get_model(name, 10)
    if int(_budget(config, name)["train_steps"]) < 1:
      raise ValueError(f"oneshot: train_steps of {name} must be at least 1")
  for name in ("calibration_images", "calibration_batch_size", "batch_size", "block_size"):
    if int(config[name]) < 1:
      raise ValueError(f"oneshot: {name} must be at least 1, got {config[name]}")


def _budget(config, model: str) -> dict:
  """The training settings of ``model``: the config's, with ``budgets[model]`` on top."""
  out = {k: config[k] for k in ("train_steps", "learning_rate")}
  out.update(dict(config.budgets.get(model, {})))
  return out


# --------------------------------------------------------------------------- data and training


@dataclasses.dataclass
class _Data:
  train_x: jax.Array
  train_y: jax.Array
  test_x: jax.Array
  test_y: jax.Array
  num_classes: int


def _load(config) -> _Data:
  ds = data_lib.load_dataset(
    config.dataset,
    data_dir=data_lib.resolve_data_dir(config.data_dir),
    cache_dir=config.cache_dir,
    progress=bool(config.progress),
  )
  return _Data(
    jnp.asarray(ds.train.images),
    jnp.asarray(ds.train.labels),
    jnp.asarray(ds.test.images),
    jnp.asarray(ds.test.labels),
    ds.num_classes,
  )


def train(
  module: nn.Module,
  params: Any,
  data: _Data,
  *,
  steps: int,
  lr: float,
  seed: int,
  config: ml_collections.ConfigDict,
  desc: str = "train",
) -> Any:
  """``steps`` AdamW steps (linear warm-up over 5%, cosine decay) from ``params``."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps)
  tx = optax.adamw(schedule, weight_decay=float(config.weight_decay))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, idx):
    x, y = data.train_x[idx], data.train_y[idx]

    def loss_fn(p):
      logits = module.apply({"params": p}, x, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(seed)
  n, batch = len(data.train_y), int(config.batch_size)
  per_epoch = n // batch
  order = np.concatenate(
    [rng.permutation(n)[: per_epoch * batch] for _ in range(-(-steps // per_epoch))]
  )
  order = jnp.asarray(order[: steps * batch].reshape(steps, batch).astype(np.int32))
  for i in progress(range(steps), desc=desc, enabled=bool(config.progress)):
    params, opt_state = step(params, opt_state, order[i])
  return params


def accuracy(module: nn.Module, params: Any, data: _Data, batch: int = 1000) -> float:
  """Test accuracy of ``module`` with ``params``."""
  run = jax.jit(lambda p, x: jnp.argmax(module.apply({"params": p}, x, train=False), -1))
  correct = 0
  for i in range(0, len(data.test_y), batch):
    correct += int(jnp.sum(run(params, data.test_x[i : i + batch]) == data.test_y[i : i + batch]))
  return correct / len(data.test_y)


def calibration_batches(data: _Data, config, seed: int) -> list[jax.Array]:
  """``calibration_images`` training images (a seeded sample), in batches."""
  rng = np.random.default_rng(int(config.calibration_seed) + seed)
  idx = rng.choice(len(data.train_y), int(config.calibration_images), replace=False)
  size = int(config.calibration_batch_size)
  return [data.train_x[jnp.asarray(idx[i : i + size])] for i in range(0, len(idx), size)]


def _train_fingerprint(config, model: str, seed: int) -> str:
  fields = {
    "model": model,
    "seed": seed,
    "dataset": config.dataset,
    "batch_size": int(config.batch_size),
    "weight_decay": float(config.weight_decay),
    **{k: v for k, v in _budget(config, model).items()},
  }
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def dense_params(config, data: _Data, module: nn.Module, model: str, seed: int, out: Path) -> Any:
  """The trained dense params of ``model`` (read from ``out/checkpoints`` when there)."""
  init = module.init(jax.random.key(seed), data.train_x[:2], train=False)["params"]
  init = jax.tree.map(jnp.asarray, flax.core.unfreeze(init))
  ckpt = out / "checkpoints" / f"{model}_s{seed}_{_train_fingerprint(config, model, seed)}.msgpack"
  if ckpt.exists():
    return flax.serialization.from_bytes(init, ckpt.read_bytes())
  budget = _budget(config, model)
  params = train(
    module,
    init,
    data,
    steps=int(budget["train_steps"]),
    lr=float(budget["learning_rate"]),
    seed=seed,
    config=config,
    desc=f"{model} s{seed}",
  )
  ckpt.parent.mkdir(parents=True, exist_ok=True)
  tmp = ckpt.with_suffix(".tmp")
  tmp.write_bytes(flax.serialization.to_bytes(params))
  tmp.replace(ckpt)
  return params


# --------------------------------------------------------------------------- pruning


def prune_once(method: str, fn, params, batches, target: str, prune: Any, config) -> tuple:
  """``(pruned params, masks)`` of one method at one target."""
  sparsity, n_m = parse_target(target)
  pattern = None if n_m is None else jaxprune.patterns.n_m(*n_m)
  if method == "sparsegpt":
    masks, new = jaxprune.sparsegpt(
      fn,
      params,
      batches,
      sparsity,
      pattern=pattern,
      prune=prune,
      block_size=int(config.block_size),
      dampening=float(config.dampening),
    )
    return new, masks
  prune_fn = jaxprune.wanda if method == "wanda" else calibration.magnitude
  masks = prune_fn(fn, params, batches, sparsity, pattern=pattern, prune=prune)
  return jaxprune.apply_masks(params, masks), masks


def _selection(
  layers: Sequence[calibration.Layer], target: str, layer_set: str = "all"
) -> tuple[list[str], list[str]]:
  """The leaves pruned at ``target`` and those left dense: the first and last layers (in use
  order) for ``layer_set="inner"``, and under N:M the layers whose input axis ``m`` does not
  divide."""
  _, n_m = parse_target(target)
  names = list(dict.fromkeys(la.path for la in layers))
  bad = set()
  if layer_set == "inner":
    bad |= {layers[0].path, layers[-1].path}
  if n_m is not None:
    bad |= {la.path for la in layers if la.shape[la.input_axes[-1]] % n_m[1]}
  return [n for n in names if n not in bad], [n for n in names if n in bad]


def _sparsity(masks, total: Optional[int] = None) -> float:
  """The fraction pruned of the masked leaves, or of ``total`` weights."""
  leaves = [np.asarray(m) for m in jax.tree.leaves(masks)]
  pruned = sum(m.size - int(m.sum()) for m in leaves)
  return pruned / max(1, sum(m.size for m in leaves) if total is None else total)


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs the one-shot pruning experiment of ``config`` and writes its outputs.

  Args:
      config: a one-shot config (``experiments/configs/mnist_oneshot.py``).

  Returns:
      ``records`` (one per run, dense networks included), ``rows`` (the summary),
      ``wall_time_s`` and ``output_dir``.

  Raises:
      ValueError: for a bad config.
      FileNotFoundError: if the dataset is not prepared.
  """
  validate(config)
  start = time.time()
  out = Path(config.output_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "config.json").write_text(config.to_json_best_effort(indent=1))
  fingerprint = config_lib.fingerprint(config)
  data = _load(config)
  records: list[dict] = []
  log = open(out / "log.txt", "a")

  def emit(record):
    records.append(record)
    if record["method"] == "dense":
      msg = f"{record['run']}: dense, test accuracy {100 * record['test_accuracy']:.2f}%"
    else:
      msg = (
        f"{record['run']}: test accuracy {100 * record['test_accuracy']:.2f}% at sparsity "
        f"{100 * record['sparsity']:.1f}%, pruned in {record['prune_s']:.2f} s"
      )
      if record.get("prune_warm_s") is not None:
        msg += f" ({record['prune_warm_s']:.2f} s compiled)"
    print(msg, file=log, flush=True)
    if config.progress:
      _write(msg)

  def finished(name) -> Optional[dict]:
    path = out / "runs" / f"{name}.json"
    if path.exists():
      record = json.loads(path.read_text())
      if record.get("fingerprint") == fingerprint:
        return record
    return None

  def write(record) -> dict:
    record["fingerprint"] = fingerprint
    path = out / "runs" / f"{record['run']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record

  for seed in (int(s) for s in config.seeds):
    for model in config.models:
      module = models.get_model(model, data.num_classes)
      params = dense_params(config, data, module, model, seed, out)
      fn = lambda p, x, module=module: module.apply({"params": p}, x, train=False)
      name = f"{model}_dense_s{seed}"
      dense = finished(name)
      if dense is None:
        dense = write(
          {
            "run": name,
            "model": model,
            "method": "dense",
            "target": "dense",
            "layers": "all",
            "seed": seed,
            "sparsity": 0.0,
            "test_accuracy": accuracy(module, params, data),
          }
        )
      emit(dense)
      batches = calibration_batches(data, config, seed)
      layers = calibration.layers(fn, params, batches[0])
      sizes = dict(jaxprune.leaves.named_leaves(params))
      kernels = sum(int(np.size(sizes[n])) for n in dict.fromkeys(la.path for la in layers))
      for layer_set, target in ((s, t) for s in config.layer_sets for t in config.targets):
        pruned_leaves, dense_leaves = _selection(layers, target, layer_set)
        if not pruned_leaves:  # e.g. the inner layers of a two-layer network
          continue
        chosen = frozenset(pruned_leaves)
        selector = lambda name, leaf, chosen=chosen: name in chosen
        for method in config.methods:
          suffix = "" if layer_set == "all" else f"_{layer_set}"
          name = f"{model}_{method}_{target.replace(':', 'of')}{suffix}_s{seed}"
          record = finished(name)
          if record is None:
            t0 = time.perf_counter()
            new, masks = prune_once(method, fn, params, batches, target, selector, config)
            jax.block_until_ready(new)
            cold = time.perf_counter() - t0
            warm = None
            if config.warm_timing:  # the same call again, its programs compiled
              t0 = time.perf_counter()
              again = prune_once(method, fn, params, batches, target, selector, config)
              jax.block_until_ready(again)
              warm = time.perf_counter() - t0
            record = write(
              {
                "run": name,
                "model": model,
                "method": method,
                "target": target,
                "layers": layer_set,
                "seed": seed,
                "sparsity": _sparsity(masks),
                "kernel_sparsity": _sparsity(masks, kernels),
                "dense_leaves": dense_leaves,
                "test_accuracy": accuracy(module, new, data),
                "dense_accuracy": dense["test_accuracy"],
                "prune_s": cold,
                "prune_warm_s": warm,
                "calibration_images": int(config.calibration_images),
              }
            )
          emit(record)
  rows = summarize(records)
  wall = time.time() - start
  write_outputs(rows, out, config, wall)
  log.close()
  return {"records": records, "rows": rows, "wall_time_s": wall, "output_dir": str(out)}


def _write(msg: str) -> None:
  try:
    from tqdm import tqdm

    tqdm.write(msg)
  except ImportError:  # pragma: no cover
    print(msg)


# --------------------------------------------------------------------------- outputs


def _key(r: dict) -> tuple:
  return (r["model"], r["method"], r["target"], r.get("layers", "all"))


def summarize(records: Sequence[dict]) -> list[dict]:
  """Mean and standard deviation over seeds per (model, method, target, layers)."""
  keys = list(dict.fromkeys(_key(r) for r in records))
  rows = []
  for key in keys:
    group = [r for r in records if _key(r) == key]
    row = dict(zip(("model", "method", "target", "layers"), key), seeds=len(group))
    for f in ("test_accuracy", "sparsity", "kernel_sparsity", "prune_s", "prune_warm_s"):
      vals = [r[f] for r in group if r.get(f) is not None]
      if vals:
        row[f] = float(np.mean(vals))
        row[f + "_std"] = float(np.std(vals))
    rows.append(row)
  return rows


def format_markdown(rows: Sequence[dict], methods: Sequence[str]) -> str:
  """One line per model, pruned layers and target: the accuracy of each method, the sparsity
  reached over all kernels, the pruning times."""
  head = (
    "| model | layers pruned | target | sparsity of all kernels | dense (%) | "
    + " | ".join(f"{LABELS[m]} (%)" for m in methods)
    + " | prune time, s: "
    + " / ".join(LABELS[m] for m in methods)
    + " |\n|"
    + "---|" * (6 + len(methods))
    + "\n"
  )
  by = {_key(r): r for r in rows}
  lines = []
  models_ = list(dict.fromkeys(r["model"] for r in rows))
  targets = list(dict.fromkeys(r["target"] for r in rows if r["method"] != "dense"))
  layer_sets = list(dict.fromkeys(r["layers"] for r in rows if r["method"] != "dense"))

  def acc(r):
    if r is None:
      return ""
    text = f"{100 * r['test_accuracy']:.2f}"
    return text + (f" ± {100 * r['test_accuracy_std']:.2f}" if r["seeds"] > 1 else "")

  def seconds(r):
    if r is None:
      return ""
    warm = r.get("prune_warm_s")
    return f"{r['prune_s']:.2f}" + ("" if warm is None else f" ({warm:.2f})")

  for layer_set in layer_sets:
    for model in models_:
      dense = by.get((model, "dense", "dense", "all"))
      for target in targets:
        cells = [by.get((model, m, target, layer_set)) for m in methods]
        if all(c is None for c in cells):
          continue
        first = next(c for c in cells if c is not None)
        lines.append(
          f"| {model} | {_LAYER_SETS.get(layer_set, layer_set)} | {target} | "
          f"{100 * first['kernel_sparsity']:.1f}% | {acc(dense)} | "
          + " | ".join(acc(c) for c in cells)
          + f" | {' / '.join(seconds(c) for c in cells)} |"
        )
  return head + "\n".join(lines) + "\n"


def plot(rows: Sequence[dict], path: Path, methods: Sequence[str], title: str) -> None:
  """Test accuracy per target (groups) and method (bars): a panel per model (columns) and set of
  pruned layers (rows), the dense network's dashed."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  models_ = list(dict.fromkeys(r["model"] for r in rows))
  targets = list(dict.fromkeys(r["target"] for r in rows if r["method"] != "dense"))
  layer_sets = list(dict.fromkeys(r["layers"] for r in rows if r["method"] != "dense"))
  by = {_key(r): r for r in rows}
  fig, axes = plt.subplots(
    len(layer_sets),
    len(models_),
    figsize=(4.6 * len(models_), 3.6 * len(layer_sets)),
    squeeze=False,
  )
  width = 0.8 / max(1, len(methods))
  for row_axes, layer_set in zip(axes, layer_sets):
    for ax, model in zip(row_axes, models_):
      for j, method in enumerate(methods):
        xs, ys = [], []
        for i, target in enumerate(targets):
          r = by.get((model, method, target, layer_set))
          if r is not None:
            xs.append(i + (j - (len(methods) - 1) / 2) * width)
            ys.append(100 * r["test_accuracy"])
        ax.bar(xs, ys, width, label=LABELS[method])
      dense = by.get((model, "dense", "dense", "all"))
      if dense is not None:
        ax.axhline(
          100 * dense["test_accuracy"], color="k", linestyle="--", linewidth=1, label="dense"
        )
      ax.set_xticks(range(len(targets)))
      ax.set_xticklabels([t if ":" in t else f"{100 * float(t):.0f}%" for t in targets])
      ax.set_title(f"{model}, {_LAYER_SETS.get(layer_set, layer_set)} layers", fontsize=10)
      ax.set_ylim(0, 100)
      ax.grid(axis="y", alpha=0.3)
    row_axes[0].set_ylabel("test accuracy (%)")
  axes[0][-1].legend(fontsize=8, loc="lower right")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_outputs(rows: Sequence[dict], out: Path, config, wall: float) -> None:
  import csv

  fields = ["model", "method", "target", "layers", "seeds"]
  fields += [
    k
    for f in ("test_accuracy", "sparsity", "kernel_sparsity", "prune_s", "prune_warm_s")
    for k in (f, f + "_std")
  ]
  with open(out / "summary.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  methods = [m for m in METHODS if m in config.methods]
  table = format_markdown(rows, methods)
  budgets = ", ".join(f"{m} {_budget(config, m)['train_steps']} steps" for m in config.models)
  (out / "summary.md").write_text(
    f"# One-shot pruning with calibration data on {config.dataset}\n\n"
    f"Dense training: AdamW, batch {config.batch_size}, {budgets}; seeds {list(config.seeds)}. "
    f"Calibration: {config.calibration_images} training images in batches of "
    f"{config.calibration_batch_size}; no retraining. Prune time: first call (second call, "
    f"compiled). Wall time of this command: {wall:.0f} s.\n\n" + table
  )
  print(table)
  if config.plots:
    plot(rows, out / "oneshot.png", methods, f"One-shot pruning on {config.dataset}, no retraining")
