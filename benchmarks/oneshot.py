"""Time of one-shot pruning with calibration data, relative to a forward pass over the same data.

Run from the repository root::

    python -m benchmarks.oneshot                   # LeNet-300-100, the 10M MLP, a 4-block transformer
    python -m benchmarks.oneshot --models mlp10m   # one model
    python -m benchmarks.oneshot --out             # also write benchmarks/results/oneshot.json

For each model (defined here, float32, random weights: the time does not depend on the values) it
times one call of each method on ``--batches`` calibration batches of ``--batch`` examples, at 50%:

* ``prune``: ``jaxprune.prune(params, 0.5)``, the data-free magnitude selection (jitted);
* ``magnitude``: ``jaxprune.calibration.magnitude``, the same masks through the calibration walk
  (the walk's cost without statistics);
* ``wanda``: ``jaxprune.wanda``;
* ``sparsegpt``: ``jaxprune.sparsegpt`` (block 128, dampening 0.01).

``first`` is the first call (tracing the function, compiling the walk's per-equation programs and the
method's per-layer-shape programs), ``again`` the median of ``--repeats`` later calls. Both are
reported in seconds and as a multiple of ``forward``: one jitted forward pass over all the
calibration batches, measured in the same run (its median over ``--repeats``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

import jaxprune
from benchmarks.results import write_results

DEFAULT_OUT = os.path.join("benchmarks", "results", "oneshot.json")
SPARSITY = 0.5


class MLP(nn.Module):
  widths: tuple[int, ...]

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for width in self.widths[:-1]:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.widths[-1])(x)


class Transformer(nn.Module):
  """Pre-norm blocks of multi-head attention and a GELU MLP over 7x7 patches of 28x28 images."""

  dim: int = 256
  depth: int = 4
  heads: int = 8

  @nn.compact
  def __call__(self, x):
    n = x.shape[0]
    x = x.reshape(n, 4, 7, 4, 7, 1).transpose(0, 1, 3, 2, 4, 5).reshape(n, 16, 49)
    x = nn.Dense(self.dim)(x)
    for _ in range(self.depth):
      x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(nn.LayerNorm()(x))
      x = x + nn.Dense(self.dim)(nn.gelu(nn.Dense(4 * self.dim)(nn.LayerNorm()(x))))
    return nn.Dense(10)(x.mean(axis=1))


MODELS: dict[str, Callable[[], nn.Module]] = {
  "lenet300100": lambda: MLP((300, 100, 10)),
  "mlp10m": lambda: MLP((2048, 2048, 2048, 10)),
  "transformer": lambda: Transformer(),
}


def timed(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def measure(name: str, args: argparse.Namespace) -> list[dict]:
  model = MODELS[name]()
  keys = jax.random.split(jax.random.key(0), args.batches + 1)
  batches = [jax.random.normal(k, (args.batch, 28, 28, 1)) for k in keys[1:]]
  params = model.init(keys[0], batches[0])["params"]
  size = sum(x.size for x in jax.tree.leaves(params))
  fn = lambda p, x: model.apply({"params": p}, x)
  forward_jit = jax.jit(fn)
  forward = lambda: [forward_jit(params, x) for x in batches]
  timed(forward)
  prune_jit = jax.jit(lambda p: jaxprune.prune(p, SPARSITY))
  methods = {
    "prune": lambda: prune_jit(params),
    "magnitude": lambda: jaxprune.calibration.magnitude(fn, params, batches, SPARSITY),
    "wanda": lambda: jaxprune.wanda(fn, params, batches, SPARSITY),
    "sparsegpt": lambda: jaxprune.sparsegpt(fn, params, batches, SPARSITY),
  }
  forward_times = [timed(forward) for _ in range(args.repeats)]
  base = statistics.median(forward_times)
  rows = []
  for method in args.methods:
    first = timed(methods[method])
    again = statistics.median(timed(methods[method]) for _ in range(args.repeats))
    row = {
      "model": name,
      "params": size,
      "method": method,
      "forward_s": base,
      "first_s": first,
      "again_s": again,
    }
    print(
      f"{name} {method}: first {first:.2f} s, again {again:.3f} s, forward {base * 1e3:.1f} ms",
      file=sys.stderr,
    )
    rows.append(row)
  return rows


def _times(x: float) -> str:
  """A multiple, with the digits that matter: 952x, 7.4x, 0.11x."""
  return f"{x:.0f}x" if x >= 10 else f"{x:.1f}x" if x >= 1 else f"{x:.2f}x"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
  parser.add_argument("--methods", nargs="+", default=["prune", "magnitude", "wanda", "sparsegpt"])
  parser.add_argument("--batches", type=int, default=4)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", nargs="?", const=DEFAULT_OUT, default=None)
  args = parser.parse_args(argv)
  rows = [row for name in args.models for row in measure(name, args)]
  print(f"{args.batches} calibration batches of {args.batch}; {jax.default_backend()}")
  print("| model | params | method | first call, s (x forward) | again, s (x forward) |")
  print("|---|---:|---|---:|---:|")
  for r in rows:
    ratio = lambda t: f"{t:.3f} ({_times(t / r['forward_s'])})"
    print(
      f"| {r['model']} | {r['params']:,} | {r['method']} | {ratio(r['first_s'])} | "
      f"{ratio(r['again_s'])} |"
    )
  if args.out:
    write_results(args.out, args, rows)


if __name__ == "__main__":
  main()
