"""Inference latency of slimmed models against the dense ones, measured in the same run.

Run from the repository root::

    python -m benchmarks.slim_latency                 # VGG-style CNN and LeNet-5, 30/50/70%
    python -m benchmarks.slim_latency --quick         # fewer, shorter repeats
    python -m benchmarks.slim_latency --out           # also write benchmarks/results/slim_latency.json

For each model and each fraction ``r`` of channels removed, every group that
`jaxprune.structured.dependency_groups` finds loses ``round(r * size)`` channels (those of smallest
L2 norm of the producing kernel's slice, the usual magnitude criterion), and
`jaxprune.structured.slim` builds the smaller model. Both functions are jitted; a measurement runs
enough forward passes for ``--min-time`` seconds and ends with ``block_until_ready``. Rounds
interleave dense and slim measurements (dense, slim, dense, ...) and the reported speedup is the
median over rounds of the mean dense time around a slim measurement over the slim time. It also
prints the parameter counts and the multiply-adds read off the jaxpr (`jaxprune.flops.count_macs`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxprune
from jaxprune import structured


class VGG(nn.Module):
  """A VGG-style CNN for 28 x 28 x 1 inputs: (64, 64, pool, 128, 128, pool, 256, pool), 256, 10."""

  @nn.compact
  def __call__(self, x):
    for block in ((64, 64), (128, 128), (256,)):
      for width in block:
        x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(width, (3, 3))(x)))
      x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(10)(nn.relu(nn.Dense(256)(x)))


class LeNet5(nn.Module):
  """LeNet-5 (6 and 16 channels of 5 x 5, then 120, 84 and 10 units), for 28 x 28 x 1 inputs."""

  @nn.compact
  def __call__(self, x):
    x = nn.max_pool(nn.relu(nn.Conv(6, (5, 5))(x)), (2, 2), (2, 2))
    x = nn.max_pool(nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(84)(nn.relu(nn.Dense(120)(x))))
    return nn.Dense(10)(x)


MODELS = {"vgg": VGG, "lenet5": LeNet5}


def magnitude_keeps(variables: Any, groups: list, fraction: float) -> list[np.ndarray]:
  """Per group, keep all but the ``round(fraction * size)`` channels of smallest producer norm."""
  named = dict(jaxprune.leaves.named_leaves(variables))
  keeps = []
  for g in groups:
    path, axis = g.name.rsplit(":", 1)
    kernel = np.moveaxis(np.asarray(named[path]), int(axis), 0)
    producer = next(m for m in g.members if m.path == path and m.axis == int(axis))
    norms = np.asarray(
      [np.linalg.norm(kernel[producer.index[c]]) for c in range(g.size)], np.float64
    )
    drop = int(round(fraction * g.size))
    keep = np.ones(g.size, bool)
    keep[np.argsort(norms, kind="stable")[:drop]] = False
    keeps.append(keep)
  return keeps


def _per_call(fn: Any, args: tuple, min_time: float) -> float:
  calls, start = 0, time.perf_counter()
  while True:
    out = fn(*args)
    calls += 1
    if time.perf_counter() - start >= min_time and calls >= 2:
      break
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / calls


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
  parser.add_argument("--fractions", nargs="+", type=float, default=[0.3, 0.5, 0.7])
  parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--min-time", type=float, default=0.5)
  parser.add_argument("--quick", action="store_true", help="3 rounds of 0.2 s")
  parser.add_argument("--out", nargs="?", const="benchmarks/results/slim_latency.json")
  args = parser.parse_args()
  if args.quick:
    args.repeats, args.min_time = 3, 0.2
  rows = []
  for name in args.models:
    model = MODELS[name]()
    x0 = jnp.zeros((1, 28, 28, 1), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x0)
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map_with_path(
      lambda p, s: jnp.asarray(
        1 + 0.1 * np.abs(rng.standard_normal(s.shape))
        if jaxprune.leaves.path_str(p).endswith("var")
        else 0.1 * rng.standard_normal(s.shape),
        jnp.float32,
      ),
      shapes,
    )
    fn = lambda v, x, model=model: model.apply(v, x)
    groups = structured.dependency_groups(fn, variables, x0)
    dense_params = sum(a.size for a in jax.tree.leaves(variables["params"]))
    for fraction in args.fractions:
      keeps = magnitude_keeps(variables, groups, fraction)
      small, small_fn = structured.slim(fn, variables, groups, keeps)
      small_params = sum(a.size for a in jax.tree.leaves(small["params"]))
      for batch in args.batches:
        x = jnp.asarray(rng.standard_normal((batch, 28, 28, 1)), jnp.float32)
        dense_macs = jaxprune.flops.count_macs(fn, variables, x)["total"]
        slim_macs = jaxprune.flops.count_macs(small_fn, small, x)["total"]
        dense_jit, slim_jit = jax.jit(fn), jax.jit(small_fn)
        masked = jaxprune.apply_masks(variables, structured.keep_masks(variables, groups, keeps))
        err = float(jnp.max(jnp.abs(dense_jit(masked, x) - slim_jit(small, x))))
        for f, a in ((dense_jit, (variables, x)), (slim_jit, (small, x))):
          jax.block_until_ready(f(*a))
          _per_call(f, a, 0.05)
        ratios, dense_times, slim_times = [], [], []
        for _ in range(args.repeats):
          d0 = _per_call(dense_jit, (variables, x), args.min_time)
          s = _per_call(slim_jit, (small, x), args.min_time)
          d1 = _per_call(dense_jit, (variables, x), args.min_time)
          ratios.append((d0 + d1) / 2 / s)
          dense_times.append((d0 + d1) / 2)
          slim_times.append(s)
        row = {
          "model": name,
          "removed": fraction,
          "batch": batch,
          "params": [int(dense_params), int(small_params)],
          "macs": [int(dense_macs), int(slim_macs)],
          "dense_ms": 1e3 * statistics.median(dense_times),
          "slim_ms": 1e3 * statistics.median(slim_times),
          "speedup": statistics.median(ratios),
          "speedup_range": [min(ratios), max(ratios)],
          "max_abs_difference_to_masked": err,
        }
        rows.append(row)
        print(
          f"{name:7s} removed {fraction:.0%} batch {batch:3d}: params {dense_params:,} -> "
          f"{small_params:,}, MACs {dense_macs / slim_macs:.2f}x fewer, dense "
          f"{row['dense_ms']:.3f} ms, slim {row['slim_ms']:.3f} ms, speedup "
          f"{row['speedup']:.2f}x [{min(ratios):.2f}-{max(ratios):.2f}], |slim - masked| {err:.1e}",
          flush=True,
        )
  print()
  print("| model | channels removed | batch | params | MACs | dense ms | slim ms | speedup |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(
      f"| {r['model']} | {r['removed']:.0%} | {r['batch']} | {r['params'][0]:,} -> "
      f"{r['params'][1]:,} | {r['macs'][0] / r['macs'][1]:.2f}x fewer | {r['dense_ms']:.3f} | "
      f"{r['slim_ms']:.3f} | {r['speedup']:.2f}x [{r['speedup_range'][0]:.2f}-"
      f"{r['speedup_range'][1]:.2f}] |"
    )
  if args.out:
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
      info = {
        "jax": jax.__version__,
        "platform": platform.platform(),
        "devices": str(jax.devices()),
      }
      json.dump({"rows": rows, "args": vars(args), "info": info}, f, indent=1)


if __name__ == "__main__":
  main()
