"""Memory of a mask-update training step against the same dense step, from XLA's memory analysis.

Run from the repository root::

    python -m benchmarks.memory                          # 8 x 2048^2 (33.6M params) and 8 x 4096^2 (134M)
    python -m benchmarks.memory --widths 11264 --layers 8   # 1.02 billion params (compiles only)
    python -m benchmarks.memory --out                    # also write benchmarks/results/memory.json
    python -m benchmarks.memory --widths 4096 --resident # also the peak resident memory of real steps

The model is ``--layers`` square float32 kernels of width ``W`` (``h = tanh(h @ W_l)``, a batch of
32), trained by one jitted step (forward, backward, ``tx.update``, ``optax.apply_updates``) that
donates params and optimizer state. Each step is lowered on ``jax.ShapeDtypeStruct`` inputs and
compiled; nothing is allocated, so the billion-parameter rows need only the compile's memory.
``compiled.memory_analysis()`` gives, per step, the bytes of its arguments, outputs and temporaries
(XLA's buffer assignment: the most that is live at once besides the arguments). The table gives

* ``state``: the optimizer state's bytes beyond the dense step's (the masks, packed or not);
* ``temp``: the step's temporaries, and ``extra``: its temporaries beyond the dense step's,
  both in multiples of the params' bytes.

Rows: ``dense`` (``optax.adam``), ``fixed`` (the pruner between mask updates), ``update``
(every step re-selects 90% of the weights) for the layer-wise (``uniform``) and ``global``
distributions, with byte masks and with packed masks. The issue's target is ``extra`` at most
``masks / params + 0.1`` for the update rows.

With ``--resident`` each configuration also runs for real, in a process of its own: params drawn
on the device, three donated steps, and the process's peak resident memory (``ru_maxrss``) is
reported beyond the dense step's process, in multiples of the params' bytes (``rss extra``).
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax

import jaxprune
from benchmarks.results import write_results

SPARSITY = 0.9
BATCH = 32
DEFAULT_OUT = os.path.join("benchmarks", "results", "memory.json")


def loss_fn(params: dict, x: jax.Array) -> jax.Array:
  h = x
  for name in sorted(params):
    h = jnp.tanh(h @ params[name])
  return jnp.mean(h**2)


def make_tx(kind: str, distribution: str, packed: bool) -> optax.GradientTransformation:
  adam = optax.adam(1e-3)
  if kind == "dense":
    return optax.chain(adam)
  if kind == "fixed":
    schedule = jaxprune.schedules.one_shot(0)
  else:  # every step is an update step at 90%
    schedule = jaxprune.schedules.polynomial(
      begin_step=0, end_step=10**9, frequency=1, initial_sparsity=SPARSITY
    )
  pruner = jaxprune.magnitude_pruning(
    SPARSITY, distribution=distribution, schedule=schedule, packed_masks=packed
  )
  return optax.chain(adam, pruner)


def analyse(tx: optax.GradientTransformation, params: dict, x: jax.ShapeDtypeStruct) -> dict:
  """The memory analysis of one donated training step on abstract inputs."""

  def step(params, state, x):
    grads = jax.grad(loss_fn)(params, x)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = jax.eval_shape(tx.init, params)
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, x).compile()
  m = compiled.memory_analysis()
  state_bytes = sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(state))
  return {
    "argument_bytes": int(m.argument_size_in_bytes),
    "output_bytes": int(m.output_size_in_bytes),
    "alias_bytes": int(m.alias_size_in_bytes),
    "temp_bytes": int(m.temp_size_in_bytes),
    "state_bytes": int(state_bytes),
  }


def resident(kind: str, distribution: str, packed: bool, width: int, layers: int) -> int:
  """Peak resident bytes of a process that runs three donated steps of this configuration."""
  tx = make_tx(kind, distribution, packed)
  keys = jax.random.split(jax.random.key(0), layers + 1)
  draw = jax.jit(lambda k: jax.random.normal(k, (width, width), jnp.float32) / width**0.5)
  params = {f"w{i:02d}": draw(keys[i]) for i in range(layers)}
  x = jax.random.normal(keys[-1], (BATCH, width), jnp.float32)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state, x):
    grads = jax.grad(loss_fn)(params, x)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(3):
    params, state = step(params, state, x)
  jax.block_until_ready((params, state))
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def resident_in_subprocess(
  kind: str, distribution: str, packed: bool, width: int, layers: int
) -> int:
  command = [sys.executable, "-m", "benchmarks.memory", "--child", kind, distribution]
  command += [str(int(packed)), str(width), str(layers)]
  out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
  return int(out.strip().splitlines()[-1])


def run(widths: list[int], layers: int, measure_resident: bool = False) -> list[dict]:
  rows = []
  for width in widths:
    params = {f"w{i:02d}": jax.ShapeDtypeStruct((width, width), jnp.float32) for i in range(layers)}
    x = jax.ShapeDtypeStruct((BATCH, width), jnp.float32)
    param_bytes = layers * width * width * 4
    configs = [("dense", "-", False)]
    for distribution in ("uniform", "global"):
      for packed in (False, True):
        configs += [("fixed", distribution, packed), ("update", distribution, packed)]
    dense = None
    for kind, distribution, packed in configs:
      print(f"width {width}: {kind} {distribution} packed={packed}", file=sys.stderr, flush=True)
      r = analyse(make_tx(kind, distribution, packed), params, x)
      if measure_resident:
        r["rss_bytes"] = resident_in_subprocess(kind, distribution, packed, width, layers)
      dense = dense or r
      r.update(
        width=width,
        layers=layers,
        params=layers * width * width,
        param_bytes=param_bytes,
        kind=kind,
        distribution=distribution,
        packed=packed,
        extra_state=(r["state_bytes"] - dense["state_bytes"]) / param_bytes,
        temp=r["temp_bytes"] / param_bytes,
        extra_temp=(r["temp_bytes"] - dense["temp_bytes"]) / param_bytes,
      )
      if measure_resident:
        r["extra_rss"] = (r["rss_bytes"] - dense["rss_bytes"]) / param_bytes
      rows.append(r)
  return rows


def format_table(rows: list[dict]) -> str:
  rss = all("extra_rss" in r for r in rows)
  lines = [
    "| params | step | distribution | packed | state (x params) | temp (x params) | extra temp (x params) |"
    + (" rss extra (x params) |" if rss else ""),
    "|---:|---|---|---|---:|---:|---:|" + ("---:|" if rss else ""),
  ]
  for r in rows:
    lines.append(
      f"| {r['params'] / 1e6:,.1f}M | {r['kind']} | {r['distribution']} | "
      f"{'yes' if r['packed'] else 'no'} | {r['extra_state']:.3f} | {r['temp']:.3f} | "
      f"{r['extra_temp']:+.3f} |" + (f" {r['extra_rss']:+.3f} |" if rss else "")
    )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--widths", type=int, nargs="+", default=[2048, 4096])
  parser.add_argument("--layers", type=int, default=8)
  parser.add_argument("--out", nargs="?", const=DEFAULT_OUT, default=None)
  parser.add_argument("--resident", action="store_true", help="also measure peak resident memory")
  parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:  # one configuration, in its own process: print its peak resident bytes
    kind, distribution, packed, width, layers = args.child
    print(resident(kind, distribution, packed == "1", int(width), int(layers)))
    return
  rows = run(args.widths, args.layers, args.resident)
  print(format_table(rows))
  if args.out:
    write_results(args.out, args, rows)


if __name__ == "__main__":
  main()
