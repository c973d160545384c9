"""Sweep runner: dense vs one-shot vs gradual magnitude pruning over target sparsities.

``run(config)`` trains one model per (seed, method, sparsity), evaluates it on the test
set every ``eval_every`` steps and writes, under ``config.output_dir``:

* ``config.json``: the configuration used;
* ``runs/<run>.json`` and ``runs/<run>.csv``: the evaluations of each run (step, mean
  training loss and accuracy since the previous evaluation, test loss and accuracy, total
  sparsity, kernel sparsity and the sparsity of every parameter leaf);
* ``summary.json`` / ``summary.csv``: one row per run with the final test accuracy and
  error and the sparsity measured on the final parameters;
* ``accuracy_vs_sparsity.png`` and ``training_curves.png``;
* ``log.txt``: the log lines printed during the sweep and the final table.

Only jaxprune's public API is used: ``magnitude_pruning``, ``schedules`` and
``sparsity_summary``.
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import data as data_lib
from experiments import models

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = "mnist_lenet300"
METHODS = ("dense", "one_shot", "gradual")


# =========================================================================== configs


def load_config(spec: Optional[str] = None) -> ml_collections.ConfigDict:
    """Loads a config from a file path or a name in ``experiments/configs``.

    ``spec`` may end in ``:arg``, which is passed to ``get_config(arg)``.
    """
    spec = spec or DEFAULT_CONFIG
    arg = None
    path_part = spec
    if ":" in spec and not Path(spec).exists():
        path_part, arg = spec.split(":", 1)
    path = Path(path_part).expanduser()
    if not path.exists():
        candidates = [CONFIG_DIR / path_part, CONFIG_DIR / f"{path_part}.py"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            available = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__")
            raise FileNotFoundError(
                f"Config {path_part!r} not found (neither a file nor one of "
                f"{', '.join(available)} in {CONFIG_DIR})"
            )
        path = found[0]
    module_spec = importlib.util.spec_from_file_location(f"_jaxprune_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config()")
    config = module.get_config(arg) if arg is not None else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)
    return config


_TRUE = {"true", "t", "yes", "y", "1", "on"}
_FALSE = {"false", "f", "no", "n", "0", "off"}


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_value(text: str, current: Any) -> Any:
    """Parses ``text`` as a value of the type of the field's current value ``current``."""
    if isinstance(current, bool):
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(current, int):
        value = _literal(text)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected an integer, got {text!r}")
        return value
    if isinstance(current, float):
        return float(text)
    if isinstance(current, str):
        value = text
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        return value
    if isinstance(current, (tuple, list)):
        value = _literal(text.strip())
        if isinstance(value, str) and "," in text:
            value = tuple(_literal(v.strip()) for v in text.split(",") if v.strip())
        if not isinstance(value, (tuple, list)):
            value = (value,)
        return type(current)(value)
    if current is None:
        if text.strip().lower() in ("none", "null", ""):
            return None
        return _literal(text)
    return _literal(text)


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Sets the dotted field ``key`` (e.g. ``optimizer.learning_rate``) from a string."""
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise KeyError(f"Unknown config group {'.'.join(parents[: i + 1])!r}")
        node = node[part]
    if leaf not in node:
        raise KeyError(
            f"Unknown config field {key!r}; fields here: {', '.join(sorted(node.keys()))}"
        )
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        raise KeyError(f"{key!r} is a group; set one of its fields, e.g. {key}.<field>=...")
    try:
        value = parse_value(text, current)
    except ValueError as e:
        raise ValueError(f"Bad value for {key!r}: {e}") from None
    with node.unlocked():
        node[leaf] = value


# =========================================================================== training


def make_learning_rate(opt: ml_collections.ConfigDict, num_steps: int):
    lr = float(opt.learning_rate)
    kind = opt.get("schedule", "constant")
    warmup = int(opt.get("warmup_steps", 0) or 0)
    main_steps = max(1, num_steps - warmup)
    if kind == "constant":
        schedule = optax.constant_schedule(lr)
    elif kind == "cosine":
        schedule = optax.cosine_decay_schedule(lr, decay_steps=main_steps)
    elif kind == "step":
        boundaries = {
            int(b * main_steps): float(opt.get("decay_factor", 0.1))
            for b in opt.get("decay_boundaries", (0.5, 0.75))
        }
        schedule = optax.piecewise_constant_schedule(lr, boundaries)
    else:
        raise ValueError(f"Unknown learning rate schedule {kind!r} (constant, cosine, step)")
    if warmup > 0:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), schedule], [warmup]
        )
    return schedule


def make_optimizer(opt: ml_collections.ConfigDict, num_steps: int):
    lr = make_learning_rate(opt, num_steps)
    wd = float(opt.get("weight_decay", 0.0) or 0.0)
    name = opt.get("name", "sgd")
    if name == "sgd":
        tx = optax.sgd(lr, momentum=opt.get("momentum", None) or None,
                       nesterov=bool(opt.get("nesterov", False)))
        if wd > 0:
            tx = optax.chain(optax.add_decayed_weights(wd), tx)
        return tx
    if name == "adam":
        return optax.adamw(lr, weight_decay=wd) if wd > 0 else optax.adam(lr)
    raise ValueError(f"Unknown optimizer {name!r} (sgd, adam)")


def prune_steps(config: ml_collections.ConfigDict) -> dict:
    """The step numbers derived from the fractions in the config."""
    n = int(config.num_train_steps)
    g = config.gradual
    begin = int(round(g.begin_fraction * n))
    end = max(begin + 1, int(round(g.end_fraction * n)))
    return {
        "one_shot_step": int(round(config.one_shot.prune_fraction * n)),
        "gradual_begin": begin,
        "gradual_end": end,
        "gradual_frequency": max(1, int(round(g.frequency_fraction * n))),
    }


def make_pruner(method: str, sparsity: float, config: ml_collections.ConfigDict):
    """The jaxprune transformation for ``method``, or None for the dense baseline."""
    import jaxprune

    if method == "dense":
        return None
    steps = prune_steps(config)
    if method == "one_shot":
        schedule = jaxprune.schedules.one_shot(steps["one_shot_step"])
    elif method == "gradual":
        schedule = jaxprune.schedules.polynomial(
            steps["gradual_begin"], steps["gradual_end"], steps["gradual_frequency"],
            power=float(config.gradual.power),
        )
    else:
        raise ValueError(f"Unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    return jaxprune.magnitude_pruning(
        float(sparsity), distribution=config.distribution, schedule=schedule
    )


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_train_step(model, tx):
    def train_step(params, model_state, opt_state, x, y):
        def loss_fn(p):
            variables = {"params": p, **model_state}
            if model_state:
                logits, new_state = model.apply(
                    variables, x, train=True, mutable=list(model_state.keys())
                )
            else:
                logits, new_state = model.apply(variables, x, train=True), model_state
            return _cross_entropy(logits, y).mean(), (logits, new_state)

        (loss, (logits, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return params, dict(new_state), opt_state, {"loss": loss, "accuracy": accuracy}

    return jax.jit(train_step)


def make_eval_step(model):
    def eval_step(params, model_state, x, y, valid):
        logits = model.apply({"params": params, **model_state}, x, train=False)
        loss = _cross_entropy(logits, y)
        correct = (jnp.argmax(logits, -1) == y) & valid
        return jnp.sum(correct), jnp.sum(jnp.where(valid, loss, 0.0))

    return jax.jit(eval_step)


def evaluate(eval_step, params, model_state, split: data_lib.Split, batch_size: int):
    """Accuracy and mean loss on a whole split, in fixed-size (padded) batches."""
    n = len(split)
    batch_size = min(batch_size, n)
    correct, loss_sum = 0, 0.0
    for start in range(0, n, batch_size):
        x = split.images[start : start + batch_size]
        y = split.labels[start : start + batch_size]
        valid = np.ones(len(y), bool)
        if len(y) < batch_size:  # pad so that every call has the same shape
            pad = batch_size - len(y)
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(pad, y.dtype)])
            valid = np.concatenate([valid, np.zeros(pad, bool)])
        batch_correct, batch_loss = eval_step(params, model_state, x, y, valid)
        correct += int(batch_correct)
        loss_sum += float(batch_loss)
    return correct / n, loss_sum / n


def measure_sparsity(params) -> dict:
    """Total sparsity, kernel (ndim >= 2) sparsity and per-leaf sparsity of ``params``."""
    import jaxprune

    summary = jaxprune.sparsity_summary(params)
    kernels = [
        x for x in jax.tree.leaves(params)
        if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim >= 2
    ]
    kernel = jaxprune.sparsity_summary(kernels).sparsity if kernels else 0.0
    return {
        "sparsity": float(summary.sparsity),
        "kernel_sparsity": float(kernel),
        "zeros": int(summary.zeros),
        "size": int(summary.size),
        "leaves": {str(k): float(v.sparsity) for k, v in summary.leaves.items()},
    }


def run_name(method: str, sparsity: float, seed: int) -> str:
    if method == "dense":
        return f"dense_seed{seed}"
    return f"{method}_s{sparsity:g}_seed{seed}"


class _Log:
    """Prints through tqdm (so bars stay intact) and appends to a log file."""

    def __init__(self, path: Path, use_tqdm: bool):
        self.path = path
        self.use_tqdm = use_tqdm
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a")

    def __call__(self, line: str = ""):
        if self.use_tqdm:
            from tqdm import tqdm

            tqdm.write(line)
        else:
            print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()

    def close(self):
        self.file.close()


def train_one(
    config: ml_collections.ConfigDict,
    dataset: data_lib.Dataset,
    method: str,
    sparsity: float,
    seed: int,
    log=print,
    position: int = 1,
) -> dict:
    """Trains and evaluates one run; returns its record (evaluations and final metrics)."""
    num_steps = int(config.num_train_steps)
    eval_every = max(1, int(config.eval_every))
    model = models.get_model(config.model, dataset.num_classes)
    sample = jnp.zeros((1, *dataset.image_shape), jnp.float32)
    variables = model.init(jax.random.PRNGKey(seed), sample, train=False)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}

    tx = make_optimizer(config.optimizer, num_steps)
    pruner = make_pruner(method, sparsity, config)
    if pruner is not None:
        tx = optax.chain(tx, pruner)
    opt_state = tx.init(params)
    train_step = make_train_step(model, tx)
    eval_step = make_eval_step(model)

    name = run_name(method, sparsity, seed)
    batches = data_lib.train_batches(
        dataset.train.images, dataset.train.labels, int(config.batch_size), seed=seed
    )
    steps: Iterable[int] = range(1, num_steps + 1)
    bar = None
    if config.get("progress", True):
        from tqdm import tqdm

        bar = tqdm(steps, desc=name, position=position, leave=False, unit="step",
                   dynamic_ncols=True)
        steps = bar

    evaluations, pending = [], []
    start = time.perf_counter()
    for step in steps:
        x, y = next(batches)
        params, model_state, opt_state, metrics = train_step(
            params, model_state, opt_state, x, y
        )
        pending.append(metrics)
        if step % eval_every == 0 or step == num_steps:
            fetched = jax.device_get(pending)
            pending = []
            test_acc, test_loss = evaluate(
                eval_step, params, model_state, dataset.test, int(config.eval_batch_size)
            )
            sp = measure_sparsity(params)
            record = {
                "step": step,
                "loss": float(np.mean([m["loss"] for m in fetched])),
                "train_accuracy": float(np.mean([m["accuracy"] for m in fetched])),
                "test_loss": test_loss,
                "test_accuracy": test_acc,
                "sparsity": sp["sparsity"],
                "kernel_sparsity": sp["kernel_sparsity"],
                "leaf_sparsity": sp["leaves"],
                "time_s": time.perf_counter() - start,
            }
            evaluations.append(record)
            if not math.isfinite(record["loss"]):
                log(f"[{name}] loss is {record['loss']}; stopping this run early")
                break
            log(
                f"[{name}] step {step:>6d}/{num_steps}  loss {record['loss']:.4f}  "
                f"train acc {record['train_accuracy']:.4f}  "
                f"test acc {test_acc:.4f}  sparsity {sp['sparsity']:.4f} "
                f"(kernels {sp['kernel_sparsity']:.4f})"
            )
            if bar is not None:
                bar.set_postfix(test_acc=f"{test_acc:.4f}", sparsity=f"{sp['sparsity']:.3f}")
    if bar is not None:
        bar.close()
    train_time = time.perf_counter() - start

    final = evaluations[-1]
    final_sp = measure_sparsity(params)
    return {
        "name": name,
        "method": method,
        "target_sparsity": float(sparsity),
        "seed": int(seed),
        "num_train_steps": num_steps,
        "train_time_s": train_time,
        "final": {
            "step": final["step"],
            "test_accuracy": final["test_accuracy"],
            "test_error": round(1.0 - final["test_accuracy"], 12),
            "test_loss": final["test_loss"],
            "best_test_accuracy": max(e["test_accuracy"] for e in evaluations),
            "loss": final["loss"],
            "sparsity": final_sp["sparsity"],
            "kernel_sparsity": final_sp["kernel_sparsity"],
            "zeros": final_sp["zeros"],
            "size": final_sp["size"],
            "leaf_sparsity": final_sp["leaves"],
        },
        "evaluations": evaluations,
    }


# =========================================================================== outputs


def write_run(record: dict, out_dir: Path) -> None:
    runs = out_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    with open(runs / f"{record['name']}.json", "w") as f:
        json.dump(record, f, indent=2)
    leaf_names = list(record["evaluations"][0]["leaf_sparsity"]) if record["evaluations"] else []
    columns = ["step", "loss", "train_accuracy", "test_loss", "test_accuracy", "sparsity",
               "kernel_sparsity", "time_s"]
    with open(runs / f"{record['name']}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns + [f"sparsity/{leaf}" for leaf in leaf_names])
        for e in record["evaluations"]:
            w.writerow([e[c] for c in columns] + [e["leaf_sparsity"][k] for k in leaf_names])


SUMMARY_COLUMNS = [
    "method", "target_sparsity", "seed", "test_accuracy", "test_error",
    "best_test_accuracy", "sparsity", "kernel_sparsity", "zeros", "size", "final_step",
    "train_time_s", "run",
]


def summary_rows(records: Sequence[dict]) -> list[dict]:
    rows = []
    for r in records:
        f = r["final"]
        rows.append({
            "method": r["method"], "target_sparsity": r["target_sparsity"], "seed": r["seed"],
            "test_accuracy": f["test_accuracy"], "test_error": f["test_error"],
            "best_test_accuracy": f["best_test_accuracy"], "sparsity": f["sparsity"],
            "kernel_sparsity": f["kernel_sparsity"], "zeros": f["zeros"], "size": f["size"],
            "final_step": f["step"], "train_time_s": r["train_time_s"], "run": r["name"],
        })
    return rows


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """Mean (and std over seeds) per (method, target sparsity), in sweep order."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["target_sparsity"]), []).append(row)
    out = []
    for (method, target), rs in groups.items():
        acc = np.array([r["test_accuracy"] for r in rs])
        out.append({
            "method": method,
            "target_sparsity": target,
            "seeds": len(rs),
            "test_accuracy": float(acc.mean()),
            "test_accuracy_std": float(acc.std()),
            "test_error": round(float(1 - acc.mean()), 12),
            "sparsity": float(np.mean([r["sparsity"] for r in rs])),
            "kernel_sparsity": float(np.mean([r["kernel_sparsity"] for r in rs])),
        })
    return out


def format_table(agg: Sequence[dict]) -> str:
    multi = any(a["seeds"] > 1 for a in agg)
    header = (f"{'method':<10} {'target':>7} {'measured (kernels)':>19} {'measured (all)':>15} "
              f"{'test acc':>9} {'test err':>9}" + (f" {'± std':>7} {'seeds':>5}" if multi else ""))
    lines = [header, "-" * len(header)]
    for a in agg:
        line = (f"{a['method']:<10} {a['target_sparsity']:>7.1%} {a['kernel_sparsity']:>19.2%} "
                f"{a['sparsity']:>15.2%} {a['test_accuracy']:>9.2%} {a['test_error']:>9.2%}")
        if multi:
            line += f" {a['test_accuracy_std']:>7.2%} {a['seeds']:>5d}"
        lines.append(line)
    return "\n".join(lines)


def write_summary(records: Sequence[dict], out_dir: Path, meta: dict) -> list[dict]:
    rows = summary_rows(records)
    agg = aggregate(rows)
    with open(out_dir / "summary.json", "w") as f:
        json.dump({**meta, "runs": rows, "aggregate": agg}, f, indent=2)
    with open(out_dir / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return agg


def _remaining_axis(ax, sparsities: Sequence[float]):
    """x axis = % of weights remaining, log scale, decreasing to the right."""
    ax.set_xscale("log")
    ticks = sorted({round(100 * (1 - s), 6) for s in sparsities if s < 1}, reverse=True)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}%\n({100 - t:g}% sparse)" for t in ticks], fontsize=8)
    ax.minorticks_off()
    if ticks:
        ax.set_xlim(max(ticks) * 1.25, min(ticks) / 1.25)
    ax.set_xlabel("weights remaining (sparsity of the pruned layers)")


def plot_accuracy_vs_sparsity(agg: Sequence[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
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
    _remaining_axis(ax, [a["target_sparsity"] for a in sparse])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training_curves(records: Sequence[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in records if r["method"] != "dense"))
    dense = [r for r in records if r["method"] == "dense"]
    cols = max(1, len(methods))
    fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 6.5), sharex=True, squeeze=False)
    targets = sorted({r["target_sparsity"] for r in records if r["method"] != "dense"})
    cmap = plt.get_cmap("viridis")
    colour = {t: cmap(i / max(1, len(targets) - 1) * 0.9) for i, t in enumerate(targets)}
    for c in range(cols):
        acc_ax, sp_ax = axes[0, c], axes[1, c]
        for j, r in enumerate(dense):
            steps = [e["step"] for e in r["evaluations"]]
            acc_ax.plot(steps, [100 * e["test_accuracy"] for e in r["evaluations"]], "k--",
                        label="dense" if j == 0 else None)
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
            acc_ax.set_title(methods[c].replace("_", "-"))
        else:
            acc_ax.set_title("dense")
        acc_ax.set_ylabel("test accuracy (%)")
        sp_ax.set_ylabel("kernel sparsity (%)")
        sp_ax.set_xlabel("training step")
        lo = min([100 * e["test_accuracy"] for r in records for e in r["evaluations"]] + [100])
        acc_ax.set_ylim(max(lo - 0.5, 80 if lo > 80 else 0), 100)
        acc_ax.grid(True, alpha=0.3)
        sp_ax.grid(True, alpha=0.3)
        acc_ax.legend(fontsize=8, title="target sparsity" if methods else None)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# =========================================================================== sweep


def sweep_plan(config: ml_collections.ConfigDict) -> list[tuple[str, float, int]]:
    methods = list(config.methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; valid methods: {', '.join(METHODS)}")
    for s in config.sparsities:
        if not 0.0 < float(s) < 1.0:
            raise ValueError(f"sparsities must lie in (0, 1), got {s}")
    plan = []
    for seed in config.seeds:
        for method in methods:
            if method == "dense":
                plan.append((method, 0.0, int(seed)))
            else:
                plan.extend((method, float(s), int(seed)) for s in config.sparsities)
    return plan


def run(config: ml_collections.ConfigDict) -> dict:
    """Runs the whole sweep described by ``config``; returns the summary."""
    plan = sweep_plan(config)
    out_dir = Path(config.output_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = bool(config.get("progress", True))
    log = _Log(out_dir / "log.txt", use_tqdm=progress)
    try:
        wall_start = time.perf_counter()
        with open(out_dir / "config.json", "w") as f:
            f.write(config.to_json(indent=2))
        data_dir = data_lib.resolve_data_dir(config.data_dir)
        log(f"Loading {config.dataset} from {data_dir or 'the tfds default data_dir'} "
            f"(cache: {data_lib.resolve_cache_dir(config.get('cache_dir'))})")
        t = time.perf_counter()
        dataset = data_lib.load_dataset(
            config.dataset, data_dir=data_dir, cache_dir=config.get("cache_dir"),
            progress=progress,
        )
        log(f"{dataset.name} {dataset.version}: {len(dataset.train)} train / "
            f"{len(dataset.test)} test images of shape {dataset.image_shape}, "
            f"{dataset.num_classes} classes ({time.perf_counter() - t:.1f}s)")
        log(f"Sweep: {len(plan)} runs of {config.model}, {config.num_train_steps} steps each; "
            f"pruning steps {prune_steps(config)}; jax backend {jax.default_backend()}")

        records = []
        runs_iter = plan
        outer = None
        if progress:
            from tqdm import tqdm

            outer = tqdm(plan, desc="sweep", position=0, unit="run", dynamic_ncols=True)
            runs_iter = outer
        for method, sparsity, seed in runs_iter:
            record = train_one(config, dataset, method, sparsity, seed, log=log)
            write_run(record, out_dir)
            records.append(record)
            f = record["final"]
            log(f"==> {record['name']}: test acc {f['test_accuracy']:.4f}, sparsity "
                f"{f['sparsity']:.4f} (kernels {f['kernel_sparsity']:.4f}), "
                f"{record['train_time_s']:.1f}s")
        if outer is not None:
            outer.close()

        wall = time.perf_counter() - wall_start
        meta = {"model": config.model, "dataset": config.dataset,
                "num_train_steps": int(config.num_train_steps), "wall_time_s": wall}
        agg = write_summary(records, out_dir, meta)
        title = f"{config.model} on {config.dataset}"
        plot_accuracy_vs_sparsity(agg, out_dir / "accuracy_vs_sparsity.png", title)
        plot_training_curves(records, out_dir / "training_curves.png", title)
        log("")
        log(f"Final test accuracy, {title} ({config.num_train_steps} steps, "
            f"sparsity measured on the final parameters):")
        log(format_table(agg))
        log(f"\nWrote {out_dir}/summary.{{json,csv}}, accuracy_vs_sparsity.png, "
            f"training_curves.png and runs/ ({wall:.1f}s total)")
        return {"records": records, "aggregate": agg, "wall_time_s": wall,
                "output_dir": str(out_dir)}
    finally:
        log.close()


# =========================================================================== CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments",
        description="Dense vs one-shot vs gradual magnitude pruning sweep (jaxprune). "
                    "Any config field can be overridden with --config.FIELD=VALUE or "
                    "--set FIELD=VALUE (dotted for nested fields, e.g. "
                    "--config.optimizer.learning_rate=0.1; lists as 0.8,0.9).",
    )
    p.add_argument("--config", default=None,
                   help=f"config file (.py with get_config()) or a name in "
                        f"experiments/configs (default: {DEFAULT_CONFIG})")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field (repeatable)")
    p.add_argument("--data_dir", default=None, help="TFDS data directory (config.data_dir)")
    p.add_argument("--cache_dir", default=None, help="decoded-array cache (config.cache_dir)")
    p.add_argument("--output_dir", default=None, help="where results go (config.output_dir)")
    p.add_argument("--no_progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--print_config", action="store_true",
                   help="print the resolved config and exit")
    return p


def parse_args(argv: Optional[Sequence[str]] = None):
    """Parses the command line into ``(args, config)`` with every override applied."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--config."):
            parser.error(f"unrecognized argument {token!r}")
        key = token[len("--config."):]
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(rest):
            i += 1
            value = rest[i]
        else:
            parser.error(f"{token} needs a value")
        overrides.append((key, value))
        i += 1
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides.append((key.strip(), value))
    config = load_config(args.config)
    try:
        for key, value in overrides:
            apply_override(config, key, value)
    except (KeyError, ValueError) as e:
        parser.error(str(e.args[0]) if e.args else str(e))
    with config.unlocked():
        if args.data_dir is not None:
            config.data_dir = args.data_dir
        if args.cache_dir is not None:
            config.cache_dir = args.cache_dir
        if args.output_dir is not None:
            config.output_dir = args.output_dir
        if args.no_progress:
            config.progress = False
    return args, config


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, config = parse_args(argv)
    if args.print_config:
        print(config)
        return 0
    try:  # fail fast on a bad method, model, optimizer or schedule
        sweep_plan(config)
        models.get_model(config.model, 10)
        make_optimizer(config.optimizer, int(config.num_train_steps))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        run(config)
    except FileNotFoundError as e:  # the dataset is not prepared
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
