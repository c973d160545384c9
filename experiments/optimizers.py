"""The optimizer of ``config.optimizer``: SGD (with optional momentum) or Adam, and its schedule."""

from __future__ import annotations

from typing import Optional

import ml_collections
import optax


def make_learning_rate(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """The learning-rate schedule of ``config.optimizer``.

  Args:
      opt: the optimizer config (``learning_rate``, ``schedule``, ``warmup_steps``, ...).
      num_steps: the number of training steps.

  Returns:
      An optax schedule.

  Raises:
      ValueError: for an unknown schedule.
  """
  lr = float(opt.learning_rate)
  kind = opt.get("schedule", "constant")
  warmup = int(opt.get("warmup_steps", 0) or 0)
  main_steps = max(1, num_steps - warmup)
  if kind == "constant":
    schedule = optax.constant_schedule(lr)
  elif kind == "cosine":
    # Decays to ``min_lr_fraction * learning_rate`` (0 unless the config sets it).
    schedule = optax.cosine_decay_schedule(
      lr, decay_steps=main_steps, alpha=float(opt.get("min_lr_fraction", 0.0) or 0.0)
    )
  elif kind == "step":
    boundaries = {
      int(b * main_steps): float(opt.get("decay_factor", 0.1))
      for b in opt.get("decay_boundaries", (0.5, 0.75))
    }
    schedule = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    raise ValueError(f"Unknown learning rate schedule {kind!r} (constant, cosine, step)")
  if warmup > 0:
    schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])
  return schedule


def make_optimizer(
  opt: ml_collections.ConfigDict, num_steps: int, learning_rate: Optional[optax.Schedule] = None
) -> optax.GradientTransformation:
  """The optimizer of ``config.optimizer`` (SGD with optional momentum, or Adam).

  Args:
      opt: the optimizer config.
      num_steps: the number of training steps (for the schedule).
      learning_rate: a schedule to use instead of the config's (the retraining schedules
          of the IMP methods).

  Returns:
      The optax transformation.

  Raises:
      ValueError: for an unknown optimizer or schedule.
  """
  lr = make_learning_rate(opt, num_steps) if learning_rate is None else learning_rate
  wd = float(opt.get("weight_decay", 0.0) or 0.0)
  name = opt.get("name", "sgd")
  if name == "sgd":
    tx = optax.sgd(
      lr, momentum=opt.get("momentum", None) or None, nesterov=bool(opt.get("nesterov", False))
    )
    if wd > 0:
      tx = optax.chain(optax.add_decayed_weights(wd), tx)
    return tx
  if name == "adam":
    return optax.adamw(lr, weight_decay=wd) if wd > 0 else optax.adam(lr)
  raise ValueError(f"Unknown optimizer {name!r} (sgd, adam)")
