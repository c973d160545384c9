"""Inference latency of factorised (low-rank) layers against the dense ones, in the same run.

Run from the repository root::

    python -m benchmarks.low_rank            # LeNet-300-100's layers and a 3x3 convolution
    python -m benchmarks.low_rank --quick    # fewer, shorter repeats
    python -m benchmarks.low_rank --out      # also write benchmarks/results/low_rank.json

A kernel projected onto rank ``r`` by `jaxprune.lrpet` is exported as two factors
(`jaxprune.low_rank.factorize`): ``x @ A @ B`` costs ``r (fan_in + fan_out)`` multiply-adds per
row instead of ``fan_in fan_out``. For each layer, rank and batch size, the dense layer
(``x @ W + b``, or a ``lax`` convolution) and the factorised one (`jaxprune.low_rank.dense` or
`jaxprune.low_rank.conv`) are jitted and timed interleaved: a measurement runs forward passes for
``--min-time`` seconds and ends with ``block_until_ready``; the speedup is the median over rounds
of the dense time over the factorised time. The whole LeNet-300-100 (both hidden layers
factorised at the ranks of the LRPET experiment) is timed the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import low_rank


def _time(fn: Callable, args: tuple, min_time: float) -> float:
  """Mean seconds per call over at least ``min_time`` seconds."""
  jax.block_until_ready(fn(*args))
  n, start = 0, time.perf_counter()
  while True:
    out = fn(*args)
    n += 1
    if time.perf_counter() - start >= min_time:
      jax.block_until_ready(out)
      return (time.perf_counter() - start) / n


def _compare(dense: Callable, small: Callable, args_d, args_s, rounds: int, min_time: float):
  ratios, td, ts = [], [], []
  for _ in range(rounds):
    a = _time(dense, args_d, min_time)
    b = _time(small, args_s, min_time)
    c = _time(dense, args_d, min_time)
    td.append((a + c) / 2)
    ts.append(b)
    ratios.append(((a + c) / 2) / b)
  return (
    statistics.median(td),
    statistics.median(ts),
    statistics.median(ratios),
    min(ratios),
    max(ratios),
  )


def _factors(w: jax.Array, rank: int) -> low_rank.Factors:
  return low_rank.factorize({"w": w}, rank, prune="w")["w"]


def run(quick: bool) -> list[dict[str, Any]]:
  rounds, min_time = (3, 0.05) if quick else (7, 0.2)
  key = jax.random.key(0)
  rows = []
  dense_fn = jax.jit(lambda x, w, b: x @ w + b)
  small_fn = jax.jit(lambda x, f, b: low_rank.dense(x, f, b))
  for fan_in, fan_out, ranks in ((784, 300, (60, 30, 15)), (300, 100, (20, 10, 5))):
    w = jax.random.normal(key, (fan_in, fan_out)) / np.sqrt(fan_in)
    b = jnp.zeros(fan_out)
    for rank in ranks:
      f = _factors(w, rank)
      for batch in (1, 128, 1024):
        x = jax.random.normal(jax.random.key(1), (batch, fan_in))
        d, s, ratio, lo, hi = _compare(dense_fn, small_fn, (x, w, b), (x, f, b), rounds, min_time)
        rows.append(
          dict(layer=f"dense {fan_in}x{fan_out}", rank=rank, batch=batch, dense_ms=1e3 * d,
               low_rank_ms=1e3 * s, speedup=ratio, low=lo, high=hi,
               macs_ratio=fan_in * fan_out / (rank * (fan_in + fan_out)))
        )  # fmt: skip
        print(_line(rows[-1]), flush=True)
  # A 3x3 convolution, 64 -> 64 channels on 32 x 32 maps (the kind of layer LRPET factorises).
  conv_dense = jax.jit(
    lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
  )
  conv_small = jax.jit(lambda x, f: low_rank.conv(x, f))
  k = jax.random.normal(key, (3, 3, 64, 64)) / 24
  for rank in (32, 16, 8):
    f = _factors(k, rank)
    for batch in (1, 32):
      x = jax.random.normal(jax.random.key(2), (batch, 32, 32, 64))
      d, s, ratio, lo, hi = _compare(conv_dense, conv_small, (x, k), (x, f), rounds, min_time)
      rows.append(
        dict(layer="conv 3x3 64->64, 32x32", rank=rank, batch=batch, dense_ms=1e3 * d,
             low_rank_ms=1e3 * s, speedup=ratio, low=lo, high=hi,
             macs_ratio=(9 * 64 * 64) / (rank * (9 * 64 + 64)))
      )  # fmt: skip
      print(_line(rows[-1]), flush=True)
  # The whole LeNet-300-100, both hidden layers factorised (the LRPET experiment's ranks).
  ws = [jax.random.normal(jax.random.fold_in(key, i), s) / np.sqrt(s[0]) for i, s in
        enumerate([(784, 300), (300, 100), (100, 10)])]  # fmt: skip
  bs = [jnp.zeros(s.shape[1]) for s in ws]

  @jax.jit
  def lenet(x, ws, bs):
    x = jax.nn.relu(x @ ws[0] + bs[0])
    x = jax.nn.relu(x @ ws[1] + bs[1])
    return x @ ws[2] + bs[2]

  @jax.jit
  def lenet_small(x, fs, bs, w2):
    x = jax.nn.relu(low_rank.dense(x, fs[0], bs[0]))
    x = jax.nn.relu(low_rank.dense(x, fs[1], bs[1]))
    return x @ w2 + bs[2]

  for r0, r1 in ((60, 20), (30, 10), (15, 5)):
    fs = [_factors(ws[0], r0), _factors(ws[1], r1)]
    for batch in (1, 128, 1024):
      x = jax.random.normal(jax.random.key(3), (batch, 784))
      d, s, ratio, lo, hi = _compare(
        lenet, lenet_small, (x, ws, bs), (x, fs, bs, ws[2]), rounds, min_time
      )
      macs = 784 * 300 + 300 * 100 + 1000
      rows.append(
        dict(layer="LeNet-300-100", rank=f"{r0}/{r1}", batch=batch, dense_ms=1e3 * d,
             low_rank_ms=1e3 * s, speedup=ratio, low=lo, high=hi,
             macs_ratio=macs / (r0 * 1084 + r1 * 400 + 1000))
      )  # fmt: skip
      print(_line(rows[-1]), flush=True)
  return rows


def _line(r: dict) -> str:
  return (
    f"| {r['layer']} | {r['rank']} | {r['batch']} | {r['macs_ratio']:.1f}x fewer | "
    f"{r['dense_ms']:.3f} | {r['low_rank_ms']:.3f} | {r['speedup']:.2f}x "
    f"[{r['low']:.2f}-{r['high']:.2f}] |"
  )


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", action="store_true", help="write benchmarks/results/low_rank.json")
  args = p.parse_args()
  print("| layer | rank | batch | MACs | dense ms | low-rank ms | speedup |")
  print("|---|---|---|---|---|---|---|")
  rows = run(args.quick)
  if args.out:
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/low_rank.json", "w") as f:
      json.dump(
        {"machine": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
         "rows": rows},
        f,
        indent=1,
      )  # fmt: skip


if __name__ == "__main__":
  main()
