"""Small training loops and table helpers shared by the issue-15 runners.

`experiments.sup_tickets`, `experiments.lrpet` and `experiments.ispasp` train small models on
MNIST with their own optimizers and schedules (cheap tickets collected during a run, projections,
slimmed networks fine-tuned), which the sweep's runner does not model. They share: `fit` (a jitted
SGD loop over the deterministic batches of `experiments.structured`, with a callback after each
update), `accuracy`, `mean_std` and `markdown_table`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import structured as st
from jaxprune.progress import progress

Data = Any  # experiments.structured._Data: train_x, train_y, test_x, test_y, num_classes


def load(config) -> Data:
  """The dataset of ``config`` on the device (``train_x``, ``train_y``, ``test_x``, ``test_y``)."""
  return st._load(config)


def fit(
  apply_fn: Callable[[Any, jax.Array], jax.Array],
  params: Any,
  tx: optax.GradientTransformation,
  data: Data,
  *,
  steps: int,
  batch_size: int,
  seed: int,
  desc: str = "train",
  enabled: bool = True,
  callback: Callable[[int, Any, Any], None] | None = None,
  opt_state: Any = None,
  first_step: int = 0,
) -> tuple[Any, Any]:
  """Trains ``params`` by ``tx`` on the cross-entropy of ``apply_fn(params, x)``.

  Args:
    apply_fn: ``(params, images) -> logits``.
    params: the initial params.
    tx: the transformation.
    data: the dataset.
    steps: the number of updates.
    batch_size: the batch size.
    seed: the data order (`experiments.structured._batches`).
    desc: the progress bar's label.
    enabled: show a progress bar.
    callback: ``(updates done, params, opt_state)`` after each update.
    opt_state: continue from this state instead of ``tx.init(params)``.
    first_step: the number of updates already done (for the callback's count and the batches).

  Returns:
    ``(params, opt_state)``.
  """
  state = tx.init(params) if opt_state is None else opt_state

  @jax.jit
  def step(params, state, idx):
    x, y = data.train_x[idx], data.train_y[idx]

    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, x), y).mean()

    grads = jax.grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  order = st._batches(len(data.train_y), batch_size, first_step + steps, seed)[first_step:]
  order = jnp.asarray(order)
  for i in progress(range(steps), desc=desc, enabled=enabled):
    params, state = step(params, state, order[i])
    if callback is not None:
      callback(first_step + i + 1, params, state)
  return params, state


def accuracy(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any, data: Data) -> float:
  """Test accuracy (the jitted prediction is kept on ``apply_fn``, compiled once per function)."""
  run = getattr(apply_fn, "_jitted_predict", None)
  if run is None:
    run = jax.jit(lambda p, x: jnp.argmax(apply_fn(p, x), -1))
    apply_fn._jitted_predict = run  # type: ignore[attr-defined]
  correct = 0
  for i in range(0, len(data.test_y), 1000):
    correct += int(jnp.sum(run(params, data.test_x[i : i + 1000]) == data.test_y[i : i + 1000]))
  return correct / len(data.test_y)


def mean_std(values: Sequence[float]) -> str:
  """``"1.23% ± 0.04%"`` of error rates in [0, 1] (population std over seeds)."""
  v = 100 * np.asarray(values, np.float64)
  return f"{v.mean():.2f}% ± {v.std():.2f}%"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A Markdown table."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def cached(path: Path, fingerprint: str) -> dict | None:
  """The record at ``path`` if it was written by the same config, else ``None``."""
  if path.exists():
    record = json.loads(path.read_text())
    if record.get("fingerprint") == fingerprint:
      return record
  return None


def count_params(params: Any) -> int:
  """Number of entries of every leaf."""
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))
