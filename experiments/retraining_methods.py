"""SILO and ALLR as methods of the sweep (``imp_silo``, ``imp_allr``), beside the other IMP
retraining schedules of `experiments.methods` (``imp_ft``, ``imp_lrw``, ``imp_slr``, ``imp_clr``,
``imp_llr``).

Both need more than ``retraining(original, T, R)``: SILO's peaks depend on the fraction each prune
removes (``jaxprune.retraining.silo(..., prune_fraction=p)``, with ``p = 1 - (1 - s) ** (1 /
cycles)`` of the run's target ``s``), and ALLR's on the norm drop of each prune, which
``jaxprune.imp`` passes to the optimizer it wraps (``jaxprune.retraining.allr``, a stateful schedule
inside ``optax.inject_hyperparams``). `register` adds them to `experiments.methods.METHODS`; the
runners' module `experiments.lottery` calls it, so they are known wherever the CLI runs.
"""

from __future__ import annotations

import optax

import jaxprune
from experiments import methods, optimizers
from experiments.methods import Config, Method


def _original(config: Config) -> tuple[optax.Schedule, list[int], int]:
  lengths = methods.imp_cycle_steps(config)
  warmup = int(config.optimizer.get("warmup_steps", 0) or 0)
  return optimizers.make_learning_rate(config.optimizer, lengths[0]), lengths, warmup


def silo_schedule(config: Config, sparsity: float) -> optax.Schedule:
  """SILO (`jaxprune.retraining.silo`, the authors' defaults) for a run of target ``sparsity``."""
  original, lengths, warmup = _original(config)
  fraction = 1.0 - (1.0 - float(sparsity)) ** (1.0 / (len(lengths) - 1))
  return jaxprune.retraining.silo(
    original, lengths[0], lengths[1:], prune_fraction=fraction, warmup_steps=warmup
  )


def _imp(config: Config, sparsity: float, inner: optax.GradientTransformation):
  lengths = methods.imp_cycle_steps(config)
  return jaxprune.imp(
    sparsity=float(sparsity),
    cycles=len(lengths) - 1,
    cycle_steps=lengths,
    distribution=config.distribution,
    inner=inner,
  )


def _silo_tx(config: Config, sparsity: float, seed: int) -> optax.GradientTransformation:
  del seed
  schedule = silo_schedule(config, sparsity)
  lengths = methods.imp_cycle_steps(config)
  return _imp(config, sparsity, optimizers.make_optimizer(config.optimizer, lengths[0], schedule))


def allr_schedule(config: Config) -> jaxprune.retraining.AdaptiveLinear:
  """ALLR (`jaxprune.retraining.allr`) over the config's IMP cycles."""
  original, lengths, warmup = _original(config)
  return jaxprune.retraining.allr(original, lengths[0], lengths[1:], warmup_steps=warmup)


def _allr_tx(config: Config, sparsity: float, seed: int) -> optax.GradientTransformation:
  del seed
  opt = config.optimizer
  if opt.get("name", "sgd") != "sgd" or float(opt.get("weight_decay", 0.0) or 0.0):
    raise ValueError("imp_allr: the sweep's ALLR runs SGD without weight decay")
  inner = optax.inject_hyperparams(optax.sgd, static_args=("momentum", "nesterov"))(
    learning_rate=allr_schedule(config),
    momentum=opt.get("momentum", None) or None,
    nesterov=bool(opt.get("nesterov", False)),
  )
  # As the other IMP methods: imp's sparsity a hyperparameter, one program for every target.
  lengths = methods.imp_cycle_steps(config)
  return optax.inject_hyperparams(
    jaxprune.imp, static_args=("cycles", "cycle_steps", "seed", "rewind", "rate")
  )(
    sparsity=float(sparsity),
    cycles=len(lengths) - 1,
    cycle_steps=lengths,
    distribution=config.distribution,
    inner=inner,
  )


def _allr_plot(config: Config) -> optax.Schedule:
  """ALLR for the learning-rate plot: each cycle's start at its floor ``min(R / T, 1) lr_max``
  (a prune's norm drop is only known in the run)."""
  schedule = allr_schedule(config)
  return lambda step: schedule.value(step, norm_drop=0.0, pruned_fraction=1.0)


def register() -> None:
  """Adds ``imp_silo`` and ``imp_allr`` to `experiments.methods.METHODS` (idempotent)."""
  methods.METHODS.setdefault(
    "imp_silo",
    Method(
      _silo_tx,
      group="imp",
      stacks=False,  # each target sparsity has its own prune fraction, hence schedule
      seeded=False,
      learning_rate=lambda config: silo_schedule(config, float(config.sparsities[0])),
      cycle_steps=methods.imp_cycle_steps,
    ),
  )
  methods.METHODS.setdefault(
    "imp_allr",
    Method(
      _allr_tx,
      group="imp",
      learning_rate=_allr_plot,
      cycle_steps=methods.imp_cycle_steps,
    ),
  )


__all__ = ["allr_schedule", "register", "silo_schedule"]
