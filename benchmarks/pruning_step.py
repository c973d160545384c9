"""Cost of a jaxprune pruning step relative to the same dense training step.

Run from the repository root::

    python -m benchmarks.pruning_step            # full run
    python -m benchmarks.pruning_step --quick    # short run (fewer, shorter repeats)
    python -m benchmarks.pruning_step --out      # also write benchmarks/results/pruning_step.json

For each model and each distribution (``uniform``, ``global``) it times one jitted training step
(forward, backward, ``tx.update``, ``optax.apply_updates``; params and optimizer state donated) with

* ``dense``: ``optax.chain(optax.adam(1e-3))``;
* ``fixed``: ``optax.chain(adam, jaxprune.magnitude_pruning(0.9, distribution=D,
  schedule=one_shot(0)))``, timed after the first step, so every timed step has ``count > 0`` and the
  ``lax.cond`` in `jaxprune.pruning` skips the mask computation (masks fixed, projection only);
* ``update``: the same pruner with ``schedule=polynomial(begin_step=0, end_step=10**9, frequency=1,
  initial_sparsity=0.9)``: every count in ``[0, 10**9]`` is an update step (``count % 1 == 0``), and
  the sparsity is 0.9 at every one of them, so every timed step re-selects 90% of the weights with the
  radix select of `jaxprune.selection`;
* ``sort``: a reference pruner written here (`sort_pruning`), identical in structure to ``update``
  (chained after adam, pruned weights stay pruned, ``jnp.where`` projection) but finding the
  threshold with a full ``jnp.sort`` of the scores: of each leaf for ``uniform``, of the
  concatenation of all pruned leaves for ``global``.

and prints the dense time per step and each pruned step as a ratio to it.

With ``--training-methods`` it times instead a training step of each method of the learned-masks
experiment (`METHOD_KINDS`: STE, hard and soft movement, SCL, PLATON, Fisher, N:M magnitude, STE
and SR-STE at 2:4; ``inner=adam``, 90% for the methods with a target sparsity, global allocation),
each at a mask update (``update``: the masks recomputed at every step) and between mask updates
(``non-update``: ``one_shot(0)``, masks fixed), against the dense step. The methods with ephemeral
masks run their forward pass on ``jaxprune.ephemeral.masked_params(params, opt_state)``.

After a warm-up (compile,
the first step, ``--warmup`` more), the configurations of a model are measured in rounds: each round
runs the pruned configurations in a shuffled order with a dense measurement before the first and
after each one (dense, A, dense, B, dense, ...); a measurement is enough steps for ``--min-time``
seconds, ended by ``block_until_ready``. A pruned measurement's ratio is its time per step over the
mean of the two dense measurements around it, and the reported ratio is the median over rounds
(with the min-max range), which cancels drift and changes of load on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax

import jaxprune

SPARSITY = 0.9
BATCH = 128
MODELS = {
  # name: layer widths, input first.
  "lenet300100": (784, 300, 100, 10),  # LeNet-300-100: 266,610 parameters
  "mlp10m": (784, 2048, 2048, 2048, 10),  # 10,020,874 parameters
  # Sized for an accelerator (not in the default --models): 108,473,354 parameters.
  "mlp100m": (784, 7168, 7168, 7168, 10),
}
DEFAULT_MODELS = ("lenet300100", "mlp10m")
DISTRIBUTIONS = ("uniform", "global", "erk")
KINDS = ("fixed", "update", "sort", "imp", "rigl", "rigl_update")
# Drop-and-grow needs per-leaf counts: RigL runs with the layer-wise distributions only.
RIGL_KINDS = ("rigl", "rigl_update")
# --training-methods: the methods of experiments/configs/mnist_learned.py (`method_tx`).
METHOD_KINDS = (
  "ste",
  "movement",
  "movement_soft",
  "scl",
  "platon",
  "fisher",
  "nm_magnitude",
  "ste_nm",
  "sr_ste",
)
EPHEMERAL_KINDS = ("ste", "movement", "movement_soft", "scl", "ste_nm", "sr_ste")


def kinds_for(distribution: str) -> tuple[str, ...]:
  """The configurations run for a distribution (the sort reference and imp exist for uniform and
  global only)."""
  return tuple(
    k
    for k in KINDS
    if not (distribution == "global" and k in RIGL_KINDS)
    and not (distribution == "erk" and k in ("sort", "imp"))
  )


DEFAULT_OUT = os.path.join("benchmarks", "results", "pruning_step.json")


# --------------------------------------------------------------------------------------------------
# Model: a plain MLP on flattened MNIST-shaped inputs.


def init_mlp(key: jax.Array, widths: tuple[int, ...]) -> dict:
  params = {}
  keys = jax.random.split(key, len(widths) - 1)
  for i, (k, fan_in, fan_out) in enumerate(zip(keys, widths[:-1], widths[1:])):
    params[f"dense_{i}"] = {
      "kernel": jax.random.normal(k, (fan_in, fan_out), jnp.float32) * math.sqrt(1.0 / fan_in),
      "bias": jnp.zeros((fan_out,), jnp.float32),
    }
  return params


def apply_mlp(params: dict, x: jax.Array) -> jax.Array:
  x = x.reshape((x.shape[0], -1))
  layers = [params[f"dense_{i}"] for i in range(len(params))]
  for layer in layers[:-1]:
    x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
  return x @ layers[-1]["kernel"] + layers[-1]["bias"]


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  logits = apply_mlp(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def num_params(params: Any) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


# --------------------------------------------------------------------------------------------------
# Sort-based reference pruner.


class SortPruningState(NamedTuple):
  masks: Any  # bool for every leaf with ndim >= 2, None for the others


def sort_pruning(sparsity: float, distribution: str) -> optax.GradientTransformation:
  """Magnitude pruning recomputed at every step, the threshold found by a full sort.

  Same semantics as ``jaxprune.magnitude_pruning`` chained last (pruned weights stay pruned, pruned
  weights get the update ``-w``), except that ties at the threshold are all kept.
  """

  def init_fn(params):
    return SortPruningState(
      jax.tree.map(lambda p: jnp.ones(p.shape, bool) if p.ndim >= 2 else None, params)
    )

  def update_fn(updates, state, params):
    leaves, treedef = jax.tree.flatten(params)
    old = treedef.flatten_up_to(state.masks)
    pruned = [i for i, p in enumerate(leaves) if p.ndim >= 2]
    scores = {i: jnp.where(old[i], jnp.abs(leaves[i]), -jnp.inf) for i in pruned}
    masks = list(old)
    if distribution == "uniform":
      for i in pruned:
        flat = jnp.sort(scores[i].ravel())
        masks[i] = scores[i] >= flat[round(sparsity * flat.size)]
    elif distribution == "global":
      flat = jnp.sort(jnp.concatenate([scores[i].ravel() for i in pruned]))
      threshold = flat[round(sparsity * flat.size)]
      for i in pruned:
        masks[i] = scores[i] >= threshold
    else:
      raise ValueError(distribution)
    out = treedef.flatten_up_to(updates)
    for i in pruned:
      out[i] = jnp.where(masks[i], out[i], -leaves[i])
    return jax.tree.unflatten(treedef, out), SortPruningState(jax.tree.unflatten(treedef, masks))

  return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------------------------------
# Configurations and timing.


def make_tx(kind: str, distribution: str | None) -> optax.GradientTransformation:
  adam = optax.adam(1e-3)
  if kind == "dense":
    return optax.chain(adam)
  if kind == "fixed":
    schedule = jaxprune.schedules.one_shot(0)
  elif kind == "update":
    schedule = jaxprune.schedules.polynomial(
      begin_step=0, end_step=10**9, frequency=1, initial_sparsity=SPARSITY
    )
  elif kind == "sort":
    return optax.chain(adam, sort_pruning(SPARSITY, distribution))
  elif kind == "rigl":
    # Masks installed at the first step; the next mask update is far beyond the timed steps.
    return jaxprune.rigl(
      SPARSITY, end_step=10**9, frequency=10**8, distribution=distribution, inner=adam
    )
  elif kind == "rigl_update":
    # A drop-and-grow update (30% of the active weights, constant fraction) at every step.
    return jaxprune.rigl(
      SPARSITY,
      end_step=10**9,
      frequency=1,
      begin_step=1,
      drop_fraction=0.3,
      drop_schedule="constant",
      distribution=distribution,
      inner=adam,
    )
  elif kind == "imp":
    # Pruned at count 2 (during warm-up), rewinding to the weights stored at count 1 and resetting
    # Adam; every timed step is a non-prune step that still carries both conds and the stored weights.
    return jaxprune.imp(
      SPARSITY,
      cycles=1,
      cycle_steps=[2, 10**9],
      distribution=distribution,
      rewind=1,
      reset_optimizer=True,
      inner=adam,
    )
  else:
    raise ValueError(kind)
  return optax.chain(
    adam, jaxprune.magnitude_pruning(SPARSITY, distribution=distribution, schedule=schedule)
  )


def method_tx(kind: str, update: bool) -> optax.GradientTransformation:
  """A training method of the learned-masks experiment, wrapping adam (``--training-methods``).

  Args:
    kind: one of `METHOD_KINDS`.
    update: masks recomputed at every step (``periodic(0, None, 1)``), else only at the first
      (``one_shot(0)``: every timed step is between mask updates).

  Returns:
    The transformation.
  """
  adam = optax.adam(1e-3)
  schedule = jaxprune.schedules.periodic(0, None, 1) if update else jaxprune.schedules.one_shot(0)
  nm = jaxprune.patterns.n_m(2, 4)
  target = dict(distribution="global", schedule=schedule, inner=adam)
  if kind == "ste":
    return jaxprune.ste_pruning(SPARSITY, **target)
  if kind == "movement":
    return jaxprune.movement_pruning(SPARSITY, **target)
  if kind == "movement_soft":
    return jaxprune.movement_pruning(variant="soft", schedule=schedule, inner=adam)
  if kind == "scl":
    return jaxprune.scl(schedule=schedule, inner=adam)
  if kind == "platon":
    return jaxprune.platon(SPARSITY, **target)
  if kind == "fisher":
    return jaxprune.fisher_pruning(SPARSITY, **target)
  if kind == "nm_magnitude":
    return jaxprune.magnitude_pruning(pattern=nm, schedule=schedule, inner=adam)
  if kind == "ste_nm":
    return jaxprune.ste_pruning(pattern=nm, schedule=schedule, inner=adam)
  if kind == "sr_ste":
    return jaxprune.sr_ste(2, 4, schedule=schedule, inner=adam)
  raise ValueError(kind)


class Runner:
  """One configuration: a jitted train step and its current (donated) state.

  With ``ephemeral`` the forward pass applies the masks of the optimizer state
  (``jaxprune.ephemeral.masked_params``).
  """

  def __init__(
    self,
    name: str,
    tx: optax.GradientTransformation,
    params: Any,
    donate: bool,
    ephemeral: bool = False,
  ):
    self.name = name
    self.ephemeral = ephemeral

    def step(params, opt_state, x, y):
      if ephemeral:
        loss, grads = jax.value_and_grad(
          lambda p: loss_fn(jaxprune.ephemeral.masked_params(p, opt_state), x, y)
        )(params)
      else:
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    self.step = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    # Own copies: donation invalidates the buffers passed in.
    self.params = jax.tree.map(jnp.copy, params)
    self.opt_state = jax.jit(tx.init)(self.params)
    self.times: list[float] = []  # wall seconds per step, one per measurement
    self.cpu_times: list[float] = []  # process CPU seconds per step (all threads)
    self.last_cpu = 0.0
    self.steps = 1

  def run(self, n: int, x: jax.Array, y: jax.Array) -> float:
    """Runs ``n`` steps; returns wall seconds per step (CPU seconds per step in ``last_cpu``)."""
    params, opt_state = self.params, self.opt_state
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
      params, opt_state, loss = self.step(params, opt_state, x, y)
    jax.block_until_ready((params, opt_state, loss))
    elapsed = time.perf_counter() - start
    self.last_cpu = (time.process_time() - start_cpu) / n
    self.params, self.opt_state = params, opt_state
    return elapsed / n

  def kernel_sparsity(self) -> float:
    params = self.params
    if self.ephemeral:  # the weights are dense, the deployed model is masked
      params = jaxprune.apply_masks(params, jaxprune.get_masks(self.opt_state))
    kernels = [p for p in jax.tree.leaves(params) if p.ndim >= 2]
    zeros = sum(int(jnp.sum(k == 0)) for k in kernels)
    return zeros / sum(k.size for k in kernels)


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def benchmark_model(model: str, args: argparse.Namespace) -> list[dict]:
  widths = MODELS[model]
  key_p, key_x, key_y = jax.random.split(jax.random.key(0), 3)
  params = init_mlp(key_p, widths)
  x = jax.random.normal(key_x, (BATCH, 28, 28, 1), jnp.float32)
  y = jax.random.randint(key_y, (BATCH,), 0, 10)
  log(f"== {model}: widths {widths}, {num_params(params):,} parameters, batch {BATCH}")

  runners = {"dense": Runner("dense", make_tx("dense", None), params, not args.no_donate)}
  for d in args.distributions:
    for kind in kinds_for(d):
      name = f"{kind}/{d}"
      runners[name] = Runner(name, make_tx(kind, d), params, not args.no_donate)
  ratios, cpu_ratios = time_runners(model, runners, x, y, args)

  dense_runner = runners["dense"]
  dense = dense_runner.times
  rows = []
  for d in args.distributions:
    row = {
      "model": model,
      "params": num_params(params),
      "batch": BATCH,
      "distribution": d,
      "sparsity": SPARSITY,
      "dense_ms": statistics.median(dense) * 1e3,
    }
    for kind in kinds_for(d):
      row.update(_columns(kind, runners[f"{kind}/{d}"], ratios, cpu_ratios))
    row["dense_ms_all"] = [t * 1e3 for t in dense]
    row["dense_cpu_ms"] = statistics.median(dense_runner.cpu_times) * 1e3
    row["dense_steps_per_measurement"] = dense_runner.steps
    rows.append(row)
  return rows


def _columns(kind: str, runner: Runner, ratios: dict, cpu_ratios: dict) -> dict:
  """The JSON fields of one configuration's measurements, prefixed with ``kind``."""
  name = runner.name
  return {
    f"{kind}_ms": statistics.median(runner.times) * 1e3,
    f"{kind}_ratio": statistics.median(ratios[name]),
    f"{kind}_ratio_range": [min(ratios[name]), max(ratios[name])],
    f"{kind}_ratios": ratios[name],
    f"{kind}_cpu_ms": statistics.median(runner.cpu_times) * 1e3,
    f"{kind}_cpu_ratio": statistics.median(cpu_ratios[name]),
    f"{kind}_cpu_ratio_range": [min(cpu_ratios[name]), max(cpu_ratios[name])],
    f"{kind}_steps_per_measurement": runner.steps,
  }


def benchmark_methods(model: str, args: argparse.Namespace) -> list[dict]:
  """``--training-methods``: a training step of each of ``args.training_methods`` against dense,
  at a mask update and between mask updates (`method_tx`); one row per method."""
  widths = MODELS[model]
  key_p, key_x, key_y = jax.random.split(jax.random.key(0), 3)
  params = init_mlp(key_p, widths)
  x = jax.random.normal(key_x, (BATCH, 28, 28, 1), jnp.float32)
  y = jax.random.randint(key_y, (BATCH,), 0, 10)
  log(f"== {model}: widths {widths}, {num_params(params):,} parameters, batch {BATCH}")
  donate = not args.no_donate
  runners = {"dense": Runner("dense", make_tx("dense", None), params, donate)}
  for kind in args.training_methods:
    for update in (True, False):
      name = f"{kind}/{'update' if update else 'fixed'}"
      tx = method_tx(kind, update)
      runners[name] = Runner(name, tx, params, donate, ephemeral=kind in EPHEMERAL_KINDS)
  ratios, cpu_ratios = time_runners(model, runners, x, y, args)
  dense_runner = runners["dense"]
  rows = []
  for kind in args.training_methods:
    row = {
      "model": model,
      "params": num_params(params),
      "batch": BATCH,
      "method": kind,
      "ephemeral": kind in EPHEMERAL_KINDS,
      "dense_ms": statistics.median(dense_runner.times) * 1e3,
      "dense_cpu_ms": statistics.median(dense_runner.cpu_times) * 1e3,
      "kernel_sparsity": runners[f"{kind}/update"].kernel_sparsity(),
    }
    row.update(_columns("update", runners[f"{kind}/update"], ratios, cpu_ratios))
    row.update(_columns("fixed", runners[f"{kind}/fixed"], ratios, cpu_ratios))
    rows.append(row)
  return rows


def time_runners(
  model: str, runners: dict[str, Runner], x: jax.Array, y: jax.Array, args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
  """Warms every runner up, then measures them in rounds of dense, A, dense, B, dense, ...

  Returns:
    The wall-time and CPU-time ratios of every runner but ``dense``, one per round.
  """
  # Warm-up: compile, the first step (count 0: the one-shot masks are computed there), a few more.
  for r in runners.values():
    start = time.perf_counter()
    r.run(1, x, y)
    compile_s = time.perf_counter() - start
    if args.warmup > 0:
      r.run(args.warmup, x, y)
    estimate = r.run(1 if args.quick else 2, x, y)
    r.steps = max(args.min_steps, min(args.max_steps, math.ceil(args.min_time / estimate)))
    sparsity = "" if r.name == "dense" else f", kernel sparsity {r.kernel_sparsity():.4f}"
    log(
      f"[{model}] warm-up {r.name:>14}: first step {compile_s:6.2f} s, ~{estimate * 1e3:8.2f} ms/step"
      f" -> {r.steps} steps per measurement{sparsity}"
    )

  # Rounds of dense, A, dense, B, dense, ...: each pruned measurement is compared with the mean of
  # the dense measurements just before and just after it (cancels drift and load changes).
  dense_runner = runners["dense"]
  ratios: dict[str, list[float]] = {name: [] for name in runners if name != "dense"}
  cpu_ratios: dict[str, list[float]] = {name: [] for name in runners if name != "dense"}
  order = [name for name in runners if name != "dense"]
  rng = random.Random(0)

  def measure(r: Runner, round_: int) -> tuple[float, float]:
    t = r.run(r.steps, x, y)
    r.times.append(t)
    r.cpu_times.append(r.last_cpu)
    log(
      f"[{model} round {round_ + 1}/{args.repeats}] {r.name:>14}: {t * 1e3:9.3f} ms/step "
      f"(cpu {r.last_cpu * 1e3:9.3f} ms/step, {r.steps} steps)"
    )
    return t, r.last_cpu

  for round_ in range(args.repeats):
    rng.shuffle(order)
    before = measure(dense_runner, round_)
    for name in order:
      t = measure(runners[name], round_)
      after = measure(dense_runner, round_)
      ratios[name].append(t[0] / ((before[0] + after[0]) / 2))
      cpu_ratios[name].append(t[1] / ((before[1] + after[1]) / 2))
      before = after
  return ratios, cpu_ratios


def format_table(rows: list[dict], cpu: bool = False) -> str:
  """The table of ratios: by wall time, or by process CPU time with ``cpu=True``."""
  suffix = "_cpu" if cpu else ""
  header = (
    "model",
    "distribution",
    f"dense {'cpu ' if cpu else ''}ms/step",
    "non-update",
    "update",
    "sort update",
    "imp non-prune",
    "rigl non-update",
    "rigl update",
  )
  lines = []
  for row in rows:
    cells = [row["model"], row["distribution"], f"{row[f'dense{suffix}_ms']:.3f}"]
    for kind in KINDS:
      if f"{kind}{suffix}_ratio" not in row:
        cells.append("n/a")
        continue
      lo, hi = row[f"{kind}{suffix}_ratio_range"]
      cells.append(f"{row[f'{kind}{suffix}_ratio']:.3f}x [{lo:.2f}-{hi:.2f}]")
    lines.append(cells)
  widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]
  fmt = lambda cells: "  ".join(
    c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
  )
  out = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines]
  return "\n".join(out)


def format_methods_table(rows: list[dict], cpu: bool = False) -> str:
  """``--training-methods``: per model and method, the update and non-update steps over dense."""
  suffix = "_cpu" if cpu else ""
  header = ("model", "method", f"dense {'cpu ' if cpu else ''}ms/step", "update", "non-update")
  lines = []
  for row in rows:
    cells = [row["model"], row["method"], f"{row[f'dense{suffix}_ms']:.3f}"]
    for kind in ("update", "fixed"):
      lo, hi = row[f"{kind}{suffix}_ratio_range"]
      cells.append(f"{row[f'{kind}{suffix}_ratio']:.2f}x [{lo:.2f}-{hi:.2f}]")
    lines.append(cells)
  widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]
  fmt = lambda cells: "  ".join(
    c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
  )
  return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines])


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="a short run: 3 rounds of measurements of ~0.15 s, shorter warm-up",
  )
  parser.add_argument(
    "--out",
    nargs="?",
    const=DEFAULT_OUT,
    default=None,
    help=f"write the results as JSON (default path {DEFAULT_OUT})",
  )
  parser.add_argument(
    "--models",
    nargs="+",
    choices=sorted(MODELS),
    default=list(DEFAULT_MODELS),
    help=f"default {' '.join(DEFAULT_MODELS)}; mlp100m is sized for a GPU or TPU",
  )
  parser.add_argument(
    "--distributions", nargs="+", choices=DISTRIBUTIONS, default=["uniform", "global"]
  )
  parser.add_argument(
    "--repeats", type=int, default=None, help="rounds of measurements (default 7)"
  )
  parser.add_argument(
    "--min-time", type=float, default=None, help="seconds per measurement, at least (default 1.0)"
  )
  parser.add_argument("--min-steps", type=int, default=2)
  parser.add_argument("--max-steps", type=int, default=2000)
  parser.add_argument(
    "--warmup", type=int, default=None, help="steps after the first one (default 3, 1 with --quick)"
  )
  parser.add_argument("--no-donate", action="store_true", help="do not donate params and opt state")
  parser.add_argument(
    "--training-methods",
    nargs="*",
    choices=METHOD_KINDS,
    default=None,
    help="time a training step of these methods of the learned-masks experiment instead (all of "
    "them when none is named)",
  )
  args = parser.parse_args(argv)
  if args.training_methods is not None and not args.training_methods:
    args.training_methods = list(METHOD_KINDS)
  if args.repeats is None:
    args.repeats = 3 if args.quick else 7
  if args.warmup is None:
    args.warmup = 1 if args.quick else 3
  if args.min_time is None:
    args.min_time = 0.15 if args.quick else 1.0

  start = time.perf_counter()
  load_start = os.getloadavg()
  log(
    f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}, "
    f"{os.cpu_count()} CPUs"
  )
  rows = []
  for model in args.models:
    rows += (benchmark_methods if args.training_methods else benchmark_model)(model, args)
  total = time.perf_counter() - start
  load_end = os.getloadavg()

  if args.training_methods:
    print(
      f"Training step time of each method / dense (adam, batch {BATCH}, sparsity {SPARSITY} "
      f"global or 2:4; ratio to the dense measurements around each one, median [min-max] over "
      f"{args.repeats} rounds)"
    )
    print(format_methods_table(rows))
    print("The same by process CPU time:")
    print(format_methods_table(rows, cpu=True))
    print(
      "update: masks recomputed at every step (periodic(0, None, 1)); non-update: between mask "
      "updates (one_shot(0), count > 0). Ephemeral methods (STE, movement, SCL, STE/SR-STE N:M) "
      "mask the weights in the forward pass.\n"
      f"Total {total:.1f} s; load average (1 min) {load_start[0]:.2f} at start, "
      f"{load_end[0]:.2f} at end, on {os.cpu_count()} CPUs."
    )
  else:
    print(
      f"Training step time, pruned / dense (sparsity {SPARSITY}, adam, batch {BATCH}, "
      f"{'no donation' if args.no_donate else 'params and opt state donated'}; "
      f"ratio to the dense measurements around each one, median [min-max] over {args.repeats} "
      f"rounds)"
    )
    print(format_table(rows))
    print(
      "The same by process CPU time (all threads of this process; less sensitive to other load "
      "on the machine):"
    )
    print(format_table(rows, cpu=True))
    print(
      f"non-update: masks fixed (one_shot(0), count > 0); update: masks recomputed every step "
      f"(jaxprune radix select); sort update: threshold by jnp.sort; imp non-prune: jaxprune.imp "
      f"(inner adam, rewind to step 1, optimizer reset) between prunes; rigl non-update / "
      f"update: jaxprune.rigl (inner adam) between mask updates / with a drop-and-grow of 30% of "
      f"the active weights at every step (n/a for global: RigL allocates per leaf).\n"
      f"Total {total:.1f} s; load average (1 min) {load_start[0]:.2f} at start, "
      f"{load_end[0]:.2f} at end, on {os.cpu_count()} CPUs."
    )

  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    meta = {
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "optax": optax.__version__,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "cpu_count": os.cpu_count(),
      "platform": platform.platform(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "args": vars(args),
      "total_seconds": total,
      "load_average_start": load_start,
      "load_average_end": load_end,
    }
    with open(args.out, "w") as f:
      json.dump({"meta": meta, "rows": rows}, f, indent=2)
    log(f"wrote {args.out}")


if __name__ == "__main__":
  main()
