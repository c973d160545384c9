"""A global 90% magnitude prune of one billion float32 parameters, with the exact count.

Run from the repository root::

    python -m benchmarks.billion                  # 8 leaves of 11264^2 and one [8, 11264, 11264] stack
    python -m benchmarks.billion --width 4096     # 134M parameters, for a quick look
    python -m benchmarks.billion --out            # also write benchmarks/results/billion.json

The params are drawn on the device (``jax.random.normal``, float32). ``jaxprune.prune(params, 0.9,
distribution="global")`` is jitted and run ``--repeats`` times after its first call (which also
compiles): one threshold over all leaves, found by the streamed radix select of
`jaxprune.selection` (the scores ``|w|`` are computed a piece of ``PIECE_SIZE`` entries at a time,
never held at the params' size). Each run is checked: exactly ``N - round(0.9 N)`` weights kept,
counted on the device. The table gives the compile+first-run time, the median run time, and the
process's peak resident memory against the params' bytes (``ru_maxrss`` of a fresh process per
layout: params, masks, and what the selection adds; the params are drawn one layer at a time).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp

import jaxprune
from benchmarks.results import write_results

SPARSITY = 0.9
DEFAULT_OUT = os.path.join("benchmarks", "results", "billion.json")


def make_params(layout: str, width: int, layers: int) -> dict:
  """The same values in both layouts: layer ``i`` drawn from ``fold_in(key(0), i)``."""
  key = jax.random.key(0)
  make = jax.jit(lambda k: jax.random.normal(k, (width, width), jnp.float32))
  if layout == "leaves":
    return {f"layer{i}": {"kernel": make(jax.random.fold_in(key, i))} for i in range(layers)}
  # Layer by layer into a donated stack: drawing the whole stack at once would hold temporaries
  # of its size, which the peak RSS would count as the prune's.
  put = jax.jit(
    lambda stack, layer, i: jax.lax.dynamic_update_index_in_dim(stack, layer, i, 0),
    donate_argnums=0,
  )
  stack = jnp.zeros((layers, width, width), jnp.float32)
  for i in range(layers):
    stack = put(stack, make(jax.random.fold_in(key, i)), i)
  return {"layers": {"kernel": stack}}


def peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def run(layout: str, width: int, layers: int, repeats: int) -> dict:
  params = make_params(layout, width, layers)
  jax.block_until_ready(params)
  n = layers * width * width
  want = n - round(SPARSITY * n)
  prune = jax.jit(lambda p: jaxprune.prune(p, SPARSITY, distribution="global"))
  count = jax.jit(lambda m: sum(jnp.sum(x, dtype=jnp.int32) for x in jax.tree.leaves(m)))

  start = time.perf_counter()
  masks = jax.block_until_ready(prune(params))
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    del masks
    start = time.perf_counter()
    masks = jax.block_until_ready(prune(params))
    times.append(time.perf_counter() - start)
    kept = int(count(masks))
    if kept != want:
      raise AssertionError(f"{layout}: kept {kept} weights, want exactly {want}")
  return {
    "layout": layout,
    "params": n,
    "param_bytes": 4 * n,
    "kept": want,
    "first_s": first,
    "times_s": times,
    "median_s": statistics.median(times),
    "peak_rss_bytes": peak_rss_bytes(),
  }


def format_table(rows: list[dict]) -> str:
  lines = [
    "| layout | params | compile + first (s) | prune (s, median) | peak RSS (x params) | kept (exact) |",
    "|---|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
      f"| {r['layout']} | {r['params'] / 1e9:.3f}B | {r['first_s']:.1f} | {r['median_s']:.1f} | "
      f"{r['peak_rss_bytes'] / r['param_bytes']:.2f} | {r['kept']:,} |"
    )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=int, default=11264)
  parser.add_argument("--layers", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--layouts", nargs="+", default=["leaves", "stacked"])
  parser.add_argument("--out", nargs="?", const=DEFAULT_OUT, default=None)
  args = parser.parse_args(argv)
  rows = []
  # Each layout in a fresh process, so that its peak RSS is its own.
  context = multiprocessing.get_context("spawn")
  for layout in args.layouts:
    print(f"{layout}: {args.layers} x {args.width}^2", file=sys.stderr, flush=True)
    with context.Pool(1) as pool:
      rows.append(pool.apply(run, (layout, args.width, args.layers, args.repeats)))
    print(f"  {rows[-1]['median_s']:.1f} s", file=sys.stderr, flush=True)
  print(format_table(rows))
  if args.out:
    write_results(args.out, args, rows)


if __name__ == "__main__":
  main()
