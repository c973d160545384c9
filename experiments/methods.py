"""The methods of a sweep: one declaration per method name of ``config.methods``.

`METHODS` maps every name to a `Method`: how a run of it (a target sparsity, a seed) gets its
transformation from the config (the optimizer of ``config.optimizer`` and a jaxprune pruner), the
config group it reads, whether runs of different sparsities and seeds share one compiled program,
for pruning at initialisation how its masks are computed, and the learning rate it trains with.
`setups` turns runs into what `experiments.train.train_runs` trains.

* ``dense``: the optimizer alone.
* ``one_shot``, ``gradual``: ``optax.inject_hyperparams(jaxprune.magnitude_pruning)`` after the
  optimizer, with the steps of `prune_steps`: one prune at ``one_shot.prune_fraction`` of the
  steps, or Zhu & Gupta's cubic ramp (``gradual``). The target sparsity is a hyperparameter in
  the optimizer state, so one program trains every sparsity and their runs can be vmapped.
* ``imp_ft``, ``imp_lrw``, ``imp_slr``, ``imp_clr``, ``imp_llr`` (group ``imp``): iterative
  magnitude pruning (``jaxprune.imp``) in the cycles of `imp_cycle_steps`, retraining with the
  learning-rate schedules of ``jaxprune.retraining`` (Zimmer et al. 2021, Le & Hua 2021, Renda
  et al. 2020).
* Dynamic sparse training (group ``dst``), sparse from the first step with ``dst.distribution``
  (ERK) over the kernels, the run's seed drawing its initial random mask; their sparsity and
  seed are constants of their transformation, so each run has a program of its own:

  * ``static``: one random mask for the whole run (``jaxprune.static_sparse``);
  * ``set``: SET (Mocanu et al. 2018), every ``dst.frequency`` steps each kernel drops
    ``dst.drop_fraction`` of its active weights (smallest magnitude) and regrows as many at
    random (``jaxprune.set_sparse``), for the whole run; with ``dst.set_rigl_schedule`` (as the
    RigL paper runs SET) until ``dst.rigl_end_fraction`` with RigL's cosine annealing;
  * ``rigl``: RigL (Evci et al. 2020), drop by magnitude and grow by dense-gradient magnitude
    every ``dst.frequency`` steps until ``dst.rigl_end_fraction`` of the steps, the drop
    fraction annealed from ``dst.drop_fraction`` to 0 by a cosine (``jaxprune.rigl``);
  * ``granet``: GraNet (Liu et al. 2021), from dense, cubic gradual pruning between
    ``dst.granet_begin_fraction`` and ``dst.granet_end_fraction`` of the steps with regrowth by
    gradient at every mask update (drop fraction ``dst.granet_drop_fraction`` decaying to 0;
    ``jaxprune.granet``).

* Pruning at initialisation (group ``at_init``): masks computed once from the seed's initial
  weights (and, for SNIP and GraSP, the run's first training batch), then trained fixed with
  ``jaxprune.static_sparse(masks=...)``, the pruned weights zeroed before the first step; each
  run's record carries ``at_init``, the layer-collapse report of its masks (`collapse_record`):

  * ``snip`` (Lee et al. 2019), ``grasp`` (Wang et al. 2020; the logits divided by
    ``at_init.grasp_temperature`` for its Hessian-gradient product, as in the authors' code
    with 200), ``synflow`` (Tanaka et al. 2020, ``at_init.synflow_rounds`` rounds, no data),
    all with ``at_init.distribution`` (global);
  * ``magnitude_init``: the largest ``|w|`` of the initialisation, same distribution;
  * ``random_init``: uniformly random scores with ``at_init.random_distribution`` (ERK);
  * ``snip_shuffled``: SNIP's masks shuffled within each kernel (``jaxprune.shuffle_masks``;
    the ablation of Frankle et al. 2021: same per-layer counts, random positions).

* Learned, ephemeral and second-order masks (group ``learned``), every one wrapping the
  optimizer (``inner=``) and dense at the start; their sparsity and regularisation are
  hyperparameters in the optimizer state (``optax.inject_hyperparams``), so one program trains
  every run of a method. The methods with ephemeral masks keep dense weights, apply the masks in
  the forward pass and report their deployed model (`experiments.train`):

  * ``ste``: straight-through magnitude masks (``jaxprune.ste_pruning``), the sparsity ramped
    by gradual's cubic ramp with masks every ``learned.frequency`` steps (1: every step);
  * ``movement``: hard movement pruning (Sanh et al. 2020, ``jaxprune.movement_pruning``),
    top-k of the accumulated ``-w * g`` on the same ramp as ``ste``;
  * ``movement_soft``: soft movement pruning, ``sigmoid(S) > tau`` with ``tau`` ramped to
    ``learned.soft_threshold`` on the same ramp, scores trained by Adam
    (``learned.soft_score_lr``); its sparsity is learned: the run's target sparsity only picks
    its regularisation ``lambda`` from ``learned.movement_soft_regularization``;
  * ``scl``: sparse connectivity learning (Tang et al. 2022, ``jaxprune.scl``), masks learned
    by SGD (``learned.scl_mask_lr``) from the start to gradual's end step, then fixed; its
    sparsity is learned: the target picks ``lambda`` from ``learned.scl_regularization``;
  * ``platon``: PLATON (Zhang et al. 2022, ``jaxprune.platon``), windows of
    ``learned.platon_window`` updates, masks at the end of every window on gradual's ramp;
  * ``fisher``: Optimal Brain Damage's saliency with the running empirical Fisher of the
    mini-batch gradients (``jaxprune.fisher_pruning``) on gradual's schedule;
  * N:M with ``m = learned.nm_m`` and the ``n`` of ``learned.nm_n`` (their sparsities
    ``1 - n / m`` replace ``config.sparsities``), masks at every step from
    ``learned.nm_begin_fraction`` of the steps: ``nm_magnitude`` (persistent zeros,
    ``jaxprune.magnitude_pruning(pattern=n_m(n, m))``), ``ste_nm`` (straight-through,
    ``jaxprune.ste_pruning(pattern=n_m(n, m))``) and ``sr_ste`` (Zhou et al. 2021,
    ``jaxprune.sr_ste`` with decay ``learned.sr_ste_decay``).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

import jaxprune
from experiments import data as data_lib
from experiments import optimizers, train

Config = ml_collections.ConfigDict


class AtInit(NamedTuple):
  """What a pruning-at-initialisation method scores for one run."""

  params: Any  # the initial params of the run's seed
  model: nn.Module  # applied with train=False
  batch: tuple  # (images, labels): the run's first training batch
  seed: int  # the run's seed


def _learning_rate(config: Config) -> optax.Schedule:
  """The schedule of ``config.optimizer`` over all the steps."""
  return optimizers.make_learning_rate(config.optimizer, int(config.num_train_steps))


class Method(NamedTuple):
  """How the runs of one method name are built: an entry of `METHODS`.

  Attributes:
      make_tx: ``(config, sparsity, seed) -> transformation``: the optimizer with the
          method's pruner; for a method with ``masks``, the optimizer that
          ``jaxprune.static_sparse`` wraps.
      group: the config group the method reads (``imp``, ``dst``, ``at_init``), or None.
      sparse: False for the dense baseline (one run per seed, at sparsity 0).
      stacks: runs of different sparsities and seeds share one compiled program and can be
          vmapped together (their sparsity and masks are optimizer state); False when the
          sparsity and seed are constants of the transformation.
      masks: for pruning at initialisation, ``(config, sparsity, AtInit) -> masks``.
      learning_rate: ``config -> schedule``: what the method trains with (for the plots).
      cycle_steps: for IMP, ``config -> lengths`` of its cycles (its prunes are at their ends).
      ephemeral: its masks are ephemeral (dense weights, masks in the forward pass; the run
          reports its deployed model, see `experiments.train`).
      sparsities: ``config -> target sparsities`` of its runs instead of ``config.sparsities``
          (the N:M methods: ``1 - n / m``).
      seeded: with ``stacks=False``, the run's seed is a constant of the transformation too
          (a dynamic sparse method's initial mask), so each seed gets a program of its own.
      extras: ``(config, sparsity) -> dict`` added to the run's record (the regularisation a
          learned method trained with, an N:M pattern).
  """

  make_tx: Callable[[Config, float, int], optax.GradientTransformation]
  group: Optional[str] = None
  sparse: bool = True
  stacks: bool = True
  masks: Optional[Callable[[Config, float, AtInit], Any]] = None
  learning_rate: Callable[[Config], optax.Schedule] = _learning_rate
  cycle_steps: Optional[Callable[[Config], list[int]]] = None
  ephemeral: bool = False
  sparsities: Optional[Callable[[Config], tuple[float, ...]]] = None
  seeded: bool = True
  extras: Optional[Callable[[Config, float], dict]] = None


def _optimizer(config: Config, sparsity: float, seed: int) -> optax.GradientTransformation:
  """The optimizer of ``config.optimizer`` over all the steps, without a pruner."""
  del sparsity, seed
  return optimizers.make_optimizer(config.optimizer, int(config.num_train_steps))


# ============================================================================ magnitude pruning


def prune_steps(config: Config) -> dict[str, int]:
  """The steps of ``one_shot`` and ``gradual``, from the fractions in the config.

  Args:
      config: the config (``num_train_steps`` and the ``one_shot`` and ``gradual`` groups).

  Returns:
      ``one_shot_step``, ``gradual_begin``, ``gradual_end`` and ``gradual_frequency``.
  """
  n = int(config.num_train_steps)
  g = config.gradual
  begin = int(round(g.begin_fraction * n))
  return {
    "one_shot_step": int(round(config.one_shot.prune_fraction * n)),
    "gradual_begin": begin,
    "gradual_end": max(begin + 1, int(round(g.end_fraction * n))),
    "gradual_frequency": max(1, int(round(g.frequency_fraction * n))),
  }


def _one_shot(config: Config) -> Callable:
  return jaxprune.schedules.one_shot(prune_steps(config)["one_shot_step"])


def _gradual(config: Config) -> Callable:
  steps = prune_steps(config)
  return jaxprune.schedules.polynomial(
    steps["gradual_begin"],
    steps["gradual_end"],
    steps["gradual_frequency"],
    power=float(config.gradual.power),
  )


def _magnitude(schedule: Callable[[Config], Callable]) -> Method:
  """Global magnitude pruning on ``schedule(config)``, the sparsity a hyperparameter."""

  def make_tx(config: Config, sparsity: float, seed: int) -> optax.GradientTransformation:
    pruner = optax.inject_hyperparams(jaxprune.magnitude_pruning)(
      sparsity=float(sparsity), distribution=config.distribution, schedule=schedule(config)
    )
    return optax.chain(_optimizer(config, sparsity, seed), pruner)

  return Method(make_tx)


# ============================================================================ IMP


def imp_cycle_steps(config: Config) -> list[int]:
  """The cycle lengths of the IMP methods: the original (dense) training, then the retraining
  cycles, summing to ``num_train_steps`` (every method trains for the same number of steps).

  The original training takes ``imp.original_fraction`` of the steps; the rest is split into
  ``imp.cycles`` equal retraining cycles, the last one taking the remainder of the division.

  Args:
      config: the config (``num_train_steps``, ``imp.cycles``, ``imp.original_fraction``).

  Returns:
      ``imp.cycles + 1`` lengths.

  Raises:
      ValueError: if a cycle would be shorter than 1 step.
  """
  imp = config.imp
  n, cycles = int(config.num_train_steps), int(imp.cycles)
  original = int(round(float(imp.original_fraction) * n))
  retrain = (n - original) // max(cycles, 1)
  if cycles < 1 or original < 1 or retrain < 1:
    raise ValueError(
      f"imp: {n} steps cannot hold an original phase of "
      f"{imp.original_fraction} of them and {cycles} retraining cycles"
    )
  lengths = [original] + [retrain] * cycles
  lengths[-1] += n - sum(lengths)
  return lengths


# The arguments of jaxprune.imp that inject_hyperparams must not turn into traced values.
_IMP_STATIC = ("cycles", "cycle_steps", "seed", "rewind", "rate")


def _imp_learning_rate(retraining: Callable, config: Config) -> optax.Schedule:
  """The config's schedule over the original training, then ``retraining`` in every cycle."""
  lengths = imp_cycle_steps(config)
  warmup = int(config.optimizer.get("warmup_steps", 0) or 0)
  original = optimizers.make_learning_rate(config.optimizer, lengths[0])
  return retraining(original, lengths[0], lengths[1:], warmup_steps=warmup)


def _imp_tx(
  retraining: Callable, config: Config, sparsity: float, seed: int
) -> optax.GradientTransformation:
  """IMP to ``sparsity`` in ``imp.cycles`` prunes, retraining with ``retraining``.

  Cycle 0 trains the dense network with the config's optimizer and schedule; each later
  cycle starts with a global magnitude prune of ``1 - (1 - sparsity) ** (1 / cycles)`` of the
  kept weights and retrains the kept weights (no rewinding). The optimizer's state carries on
  across prunes (its step count drives the schedule).
  """
  del seed
  lengths = imp_cycle_steps(config)
  inner = optimizers.make_optimizer(
    config.optimizer, lengths[0], learning_rate=_imp_learning_rate(retraining, config)
  )
  return optax.inject_hyperparams(jaxprune.imp, static_args=_IMP_STATIC)(
    sparsity=float(sparsity),
    cycles=len(lengths) - 1,
    cycle_steps=lengths,
    distribution=config.distribution,
    inner=inner,
  )


def _imp(retraining: Callable) -> Method:
  return Method(
    functools.partial(_imp_tx, retraining),
    group="imp",
    learning_rate=functools.partial(_imp_learning_rate, retraining),
    cycle_steps=imp_cycle_steps,
  )


# ============================================================================ dynamic sparse training


def dst_steps(config: Config) -> dict[str, int]:
  """The step numbers of the dynamic sparse methods, from the fractions in ``config.dst``.

  Args:
      config: the config (``num_train_steps`` and the ``dst`` group).

  Returns:
      ``frequency``, ``rigl_end``, ``granet_begin`` and ``granet_end``.
  """
  n = int(config.num_train_steps)
  d = config.dst
  begin = int(round(float(d.granet_begin_fraction) * n))
  return {
    "frequency": int(d.frequency),
    "rigl_end": max(1, int(round(float(d.rigl_end_fraction) * n))),
    "granet_begin": begin,
    "granet_end": max(begin + 1, int(round(float(d.granet_end_fraction) * n))),
  }


def _dst(factory: Callable, options: Optional[Callable[[Config, dict], dict]] = None) -> Method:
  """``factory(sparsity, ...)`` around the optimizer, with ``options(config.dst, dst_steps)``."""

  def make_tx(config: Config, sparsity: float, seed: int) -> optax.GradientTransformation:
    return factory(
      float(sparsity),
      distribution=str(config.dst.distribution),
      seed=int(seed),
      inner=_optimizer(config, sparsity, seed),
      **(options(config.dst, dst_steps(config)) if options else {}),
    )

  return Method(make_tx, group="dst", stacks=False)


# ============================================================================ pruning at init


def first_batch(dataset: data_lib.Dataset, batch_size: int, seed: int) -> tuple:
  """The first training batch of the run with ``seed`` (the batch SNIP and GraSP score on).

  Args:
      dataset: the dataset.
      batch_size: the batch size.
      seed: the run's seed.

  Returns:
      ``(images, labels)`` as device arrays.
  """
  idx, _ = data_lib.batch_indices(
    len(dataset.train), batch_size, seed=seed, position=(0, 0), count=1
  )
  images, labels = dataset.train.take(idx[0])  # (also from a training split left on disk)
  return jnp.asarray(images), jnp.asarray(labels)


def _loss(model: nn.Module, temperature: float = 1.0) -> Callable:
  """``(params, batch) -> cross-entropy`` of the logits divided by ``temperature``."""

  def loss_fn(params, batch):
    logits = model.apply({"params": params}, batch[0], train=False) / temperature
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  return loss_fn


def _snip(config: Config, sparsity: float, init: AtInit) -> Any:
  return jaxprune.snip(
    init.params,
    _loss(init.model),
    init.batch,
    sparsity,
    distribution=str(config.at_init.distribution),
  )


def _snip_shuffled(config: Config, sparsity: float, init: AtInit) -> Any:
  return jaxprune.shuffle_masks(_snip(config, sparsity, init), seed=1000 + init.seed)


def _grasp(config: Config, sparsity: float, init: AtInit) -> Any:
  # The authors' code divides the logits by a temperature (200) for the Hessian-gradient
  # product; 1 is the plain loss of the formula.
  temperature = float(config.at_init.get("grasp_temperature", 1.0))
  return jaxprune.grasp(
    init.params,
    _loss(init.model, temperature),
    init.batch,
    sparsity,
    distribution=str(config.at_init.distribution),
  )


def _synflow(config: Config, sparsity: float, init: AtInit) -> Any:
  return jaxprune.synflow(
    init.params,
    lambda p, x: init.model.apply({"params": p}, x, train=False),
    (1, *init.batch[0].shape[1:]),
    sparsity,
    rounds=int(config.at_init.synflow_rounds),
    distribution=str(config.at_init.distribution),
  )


def _magnitude_init(config: Config, sparsity: float, init: AtInit) -> Any:
  scores = jaxprune.scores.magnitude(init.params, None, 0)
  return jaxprune.at_init.masks_from_scores(
    init.params, scores, sparsity, distribution=str(config.at_init.distribution)
  )


def _random_init(config: Config, sparsity: float, init: AtInit) -> Any:
  scores = jaxprune.scores.random(init.seed)(init.params, None, 0)
  return jaxprune.at_init.masks_from_scores(
    init.params, scores, sparsity, distribution=str(config.at_init.random_distribution)
  )


def _at_init(masks: Callable[[Config, float, AtInit], Any]) -> Method:
  return Method(_optimizer, group="at_init", masks=masks)


def collapse_record(masks: Any) -> dict[str, Any]:
  """The layer-collapse report of ``masks`` and their kept weights per kernel, as JSON.

  Args:
      masks: a mask tree.

  Returns:
      ``collapsed``, ``connected``, ``empty_leaves``, ``dead_outputs`` (units with no kept
      input, per kernel), ``dead_inputs``, ``description`` and ``kept`` (per kernel).
  """
  report = jaxprune.collapse.layer_collapse(masks)
  summary = jaxprune.sparsity_summary(jax.device_get(masks))
  return {
    "collapsed": bool(report.collapsed),
    "connected": bool(report.connected),
    "empty_leaves": list(report.empty_leaves),
    "dead_outputs": {str(k): int(v) for k, v in report.dead_outputs.items()},
    "dead_inputs": {str(k): int(v) for k, v in report.dead_inputs.items()},
    "description": report.describe(),
    "kept": {str(k): int(v.size - v.zeros) for k, v in summary.leaves.items()},
  }


# ============================================================================ learned, ephemeral, second order


def _ramp(config: Config, frequency: int) -> jaxprune.schedules.Schedule:
  """Gradual's cubic ramp (its begin, end and power) with masks every ``frequency`` steps."""
  steps = prune_steps(config)
  return jaxprune.schedules.polynomial(
    steps["gradual_begin"], steps["gradual_end"], int(frequency), power=float(config.gradual.power)
  )


def regularization(config: Config, method: str, sparsity: float) -> float:
  """The regularisation ``lambda`` a learned-sparsity method trains with for a target sparsity.

  Args:
      config: the config (``learned.<method>_regularization``: ``(target, lambda)`` pairs).
      method: ``movement_soft`` or ``scl``.
      sparsity: the run's target sparsity (what ``lambda`` was tuned to reach).

  Returns:
      ``lambda``.

  Raises:
      ValueError: when no pair has that target.
  """
  field = f"{method}_regularization"
  pairs = [(float(t), float(v)) for t, v in config.learned[field]]
  for target, value in pairs:
    if math.isclose(target, float(sparsity)):
      return value
  raise ValueError(
    f"{method}: no regularisation for the target sparsity {sparsity:g} in learned.{field} "
    f"(its targets: {', '.join(f'{t:g}' for t, _ in pairs) or 'none'}); the method learns its "
    "sparsity, each target needs a lambda tuned to reach it"
  )


def _learned(name: str, make: Callable) -> Method:
  """A method of the ``learned`` group whose runs share one program (``inject_hyperparams``)."""

  def make_tx(config: Config, sparsity: float, seed: int) -> optax.GradientTransformation:
    return make(config, float(sparsity), _optimizer(config, sparsity, seed))

  ephemeral = name in ("ste", "movement", "movement_soft", "scl")
  extras = None
  if name in ("movement_soft", "scl"):
    extras = lambda config, s: {"regularization": regularization(config, name, s)}  # noqa: E731
  return Method(make_tx, group="learned", ephemeral=ephemeral, extras=extras)


def _ste(config: Config, sparsity: float, inner: Any) -> optax.GradientTransformation:
  return optax.inject_hyperparams(jaxprune.ste_pruning)(
    sparsity=sparsity,
    distribution=config.distribution,
    schedule=_ramp(config, int(config.learned.frequency)),
    inner=inner,
  )


def _movement(config: Config, sparsity: float, inner: Any) -> optax.GradientTransformation:
  return optax.inject_hyperparams(
    jaxprune.movement_pruning, static_args=("threshold", "regularization")
  )(
    sparsity=sparsity,
    distribution=config.distribution,
    schedule=_ramp(config, int(config.learned.frequency)),
    inner=inner,
  )


def _movement_soft(config: Config, sparsity: float, inner: Any) -> optax.GradientTransformation:
  learned = config.learned
  return optax.inject_hyperparams(jaxprune.movement_pruning, static_args=("threshold",))(
    variant="soft",
    schedule=_ramp(config, int(learned.frequency)),
    threshold=float(learned.soft_threshold),
    regularization=regularization(config, "movement_soft", sparsity),
    score_optimizer=optax.adam(float(learned.soft_score_lr)),
    inner=inner,
  )


def _scl(config: Config, sparsity: float, inner: Any) -> optax.GradientTransformation:
  learned = config.learned
  return optax.inject_hyperparams(jaxprune.scl, static_args=("init_value",))(
    regularization=regularization(config, "scl", sparsity),
    init_value=float(learned.scl_init_value),
    mask_optimizer=optax.sgd(float(learned.scl_mask_lr)),
    schedule=jaxprune.schedules.periodic(0, prune_steps(config)["gradual_end"], 1),
    inner=inner,
  )


def _platon(config: Config, sparsity: float, inner: Any) -> optax.GradientTransformation:
  learned = config.learned
  window = int(learned.platon_window)
  return optax.inject_hyperparams(
    jaxprune.platon, static_args=("beta1", "beta2", "window", "distribution")
  )(
    sparsity,
    schedule=_ramp(config, window),
    beta1=float(learned.platon_beta1),
    beta2=float(learned.platon_beta2),
    window=window,
    distribution=config.distribution,
    inner=inner,
  )


def _fisher(config: Config, sparsity: float, inner: Any) -> optax.GradientTransformation:
  decay = config.learned.get("fisher_decay", None)
  return optax.inject_hyperparams(jaxprune.fisher_pruning, static_args=("decay", "distribution"))(
    sparsity,
    decay=None if decay is None else float(decay),
    schedule=_gradual(config),
    distribution=config.distribution,
    inner=inner,
  )


def nm_sparsities(config: Config) -> tuple[float, ...]:
  """The target sparsities of the N:M methods: ``1 - n / m`` for each ``n`` of ``learned.nm_n``.

  Args:
      config: the config (``learned.nm_m``, ``learned.nm_n``).

  Returns:
      The sparsities, e.g. ``(0.5, 0.75)`` for 2:4 and 1:4.
  """
  m = int(config.learned.nm_m)
  return tuple(1.0 - int(n) / m for n in config.learned.nm_n)


def nm_pattern(config: Config, sparsity: float) -> tuple[int, int]:
  """``(n, m)`` of the N:M run with a target sparsity (one of `nm_sparsities`).

  Raises:
      ValueError: for a sparsity that no ``n`` of ``learned.nm_n`` gives.
  """
  m = int(config.learned.nm_m)
  n = int(round((1.0 - float(sparsity)) * m))
  if n not in [int(x) for x in config.learned.nm_n] or not math.isclose(1.0 - n / m, sparsity):
    raise ValueError(
      f"N:M: no pattern of learned.nm_n={tuple(config.learned.nm_n)}, m={m} gives the sparsity "
      f"{sparsity:g}"
    )
  return n, m


def _nm(factory: Callable, ephemeral: bool) -> Method:
  """An N:M method: ``factory(config, n, m, schedule, optimizer)``, masks at every step."""

  def make_tx(config: Config, sparsity: float, seed: int) -> optax.GradientTransformation:
    n, m = nm_pattern(config, sparsity)
    begin = int(round(float(config.learned.nm_begin_fraction) * int(config.num_train_steps)))
    schedule = jaxprune.schedules.periodic(begin, None, 1)
    return factory(config, n, m, schedule, _optimizer(config, sparsity, seed))

  def extras(config: Config, sparsity: float) -> dict:
    return {"pattern": "{}:{}".format(*nm_pattern(config, sparsity))}

  return Method(
    make_tx,
    group="learned",
    stacks=False,
    seeded=False,
    ephemeral=ephemeral,
    sparsities=nm_sparsities,
    extras=extras,
  )


# ============================================================================ the registry

METHODS: dict[str, Method] = {
  "dense": Method(_optimizer, sparse=False),
  "one_shot": _magnitude(_one_shot),
  "gradual": _magnitude(_gradual),
  "imp_ft": _imp(jaxprune.retraining.ft),
  "imp_lrw": _imp(jaxprune.retraining.lrw),
  "imp_slr": _imp(jaxprune.retraining.slr),
  "imp_clr": _imp(jaxprune.retraining.clr),
  "imp_llr": _imp(jaxprune.retraining.llr),
  "static": _dst(jaxprune.static_sparse),
  "set": _dst(
    jaxprune.set_sparse,
    lambda d, steps: dict(
      drop_fraction=float(d.drop_fraction),
      frequency=steps["frequency"],
      **(
        dict(drop_schedule="cosine", end_step=steps["rigl_end"])
        if d.get("set_rigl_schedule", False)
        else {}
      ),
    ),
  ),
  "rigl": _dst(
    jaxprune.rigl,
    lambda d, steps: dict(
      end_step=steps["rigl_end"],
      drop_fraction=float(d.drop_fraction),
      drop_schedule="cosine",
      frequency=steps["frequency"],
    ),
  ),
  "granet": _dst(
    jaxprune.granet,
    lambda d, steps: dict(
      end_step=steps["granet_end"],
      begin_step=steps["granet_begin"],
      frequency=steps["frequency"],
      initial_sparsity=0.0,
      drop_fraction=float(d.granet_drop_fraction),
    ),
  ),
  "snip": _at_init(_snip),
  "grasp": _at_init(_grasp),
  "synflow": _at_init(_synflow),
  "magnitude_init": _at_init(_magnitude_init),
  "random_init": _at_init(_random_init),
  "snip_shuffled": _at_init(_snip_shuffled),
  "ste": _learned("ste", _ste),
  "movement": _learned("movement", _movement),
  "movement_soft": _learned("movement_soft", _movement_soft),
  "scl": _learned("scl", _scl),
  "platon": _learned("platon", _platon),
  "fisher": _learned("fisher", _fisher),
  "nm_magnitude": _nm(
    lambda config, n, m, schedule, opt: optax.chain(
      opt, jaxprune.magnitude_pruning(pattern=jaxprune.patterns.n_m(n, m), schedule=schedule)
    ),
    ephemeral=False,
  ),
  "ste_nm": _nm(
    lambda config, n, m, schedule, opt: jaxprune.ste_pruning(
      pattern=jaxprune.patterns.n_m(n, m), schedule=schedule, inner=opt
    ),
    ephemeral=True,
  ),
  "sr_ste": _nm(
    lambda config, n, m, schedule, opt: jaxprune.sr_ste(
      n, m, decay=float(config.learned.sr_ste_decay), schedule=schedule, inner=opt
    ),
    ephemeral=True,
  ),
}

# ============================================================================ GaP and ProsPr (issue 15)
# ``gap`` (group ``gap``): cyclic gradual grow-and-prune (Ma et al. 2022, ``jaxprune.gap``) from a
# random sparse start with ``gap.distribution``: ``gap.partitions`` partitions of the kernels, one
# grown dense per step of ``gap.step_fraction`` of the steps from ``gap.begin_fraction`` on, for
# ``gap.rounds`` rounds, then fine-tuning with the final masks. ``prospr`` (group ``at_init``):
# ProsPr's masks (Alizadeh et al. 2022, ``jaxprune.prospr``): meta-gradients through
# ``at_init.prospr_steps`` SGD steps of learning rate ``at_init.prospr_lr`` (momentum
# ``at_init.prospr_momentum``) on the run's first batch, global.


def gap_steps(config: Config) -> dict[str, int]:
  """The steps of ``gap``: ``begin``, ``step_length`` and ``end`` (its last mask update)."""
  n, g = int(config.num_train_steps), config.gap
  begin = int(round(float(g.begin_fraction) * n))
  length = max(1, int(round(float(g.step_fraction) * n)))
  return {
    "begin": begin,
    "step_length": length,
    "end": begin + int(g.partitions) * int(g.rounds) * length,
  }


def _gap(config: Config, sparsity: float, seed: int) -> optax.GradientTransformation:
  steps = gap_steps(config)
  return jaxprune.gap(
    float(sparsity),
    partitions=int(config.gap.partitions),
    step_length=steps["step_length"],
    rounds=int(config.gap.rounds),
    begin_step=steps["begin"],
    distribution=str(config.gap.distribution),
    seed=int(seed),
    inner=_optimizer(config, sparsity, seed),
  )


def _prospr(config: Config, sparsity: float, init: AtInit) -> Any:
  a = config.at_init
  return jaxprune.prospr(
    init.params,
    _loss(init.model),
    init.batch,
    sparsity,
    steps=int(a.get("prospr_steps", 3)),
    lr=float(a.get("prospr_lr", 0.1)),
    momentum=float(a.get("prospr_momentum", 0.0)),
    distribution=str(a.distribution),
  )


METHODS["gap"] = Method(_gap, group="gap", stacks=False)
METHODS["prospr"] = _at_init(_prospr)

# The methods whose sparsity is learned (their target only picks a regularisation).
LEARNED_SPARSITY = ("movement_soft", "scl")


def validate(config: Config) -> None:
  """Checks that every method of ``config.methods`` is known and has its config group.

  Args:
      config: the config.

  Raises:
      ValueError: for an unknown method or a missing config group.
  """
  unknown = [m for m in config.methods if m not in METHODS]
  if unknown:
    raise ValueError(f"Unknown method(s) {unknown}; valid methods: {', '.join(METHODS)}")
  for group in dict.fromkeys(METHODS[m].group for m in config.methods):
    if group is not None and config.get(group, None) is None:
      used = [m for m in config.methods if METHODS[m].group == group]
      raise ValueError(
        f"the methods {used} need the config group {group!r}; see the "
        "configs in experiments/configs"
      )


def masked_setup(
  model: nn.Module,
  masks: Any,
  inner: optax.GradientTransformation,
  seed: int,
  image_shape: tuple,
  extras: Optional[dict] = None,
) -> train.RunSetup:
  """A run that trains fixed ``masks`` (``jaxprune.static_sparse``) from ``seed``'s init.

  The pruned weights are zeroed in the initial state, so that the first step already trains
  the sparse network.

  Args:
      model: the Flax model.
      masks: a tree like the params (bool arrays; None for leaves that are not pruned).
      inner: the optimizer.
      seed: the seed of the initialisation.
      image_shape: the shape of one input.
      extras: added to the run's record.

  Returns:
      The setup.
  """
  tx = jaxprune.static_sparse(masks=masks, inner=inner)
  state = train.init_state(model, tx, seed, image_shape)
  return train.RunSetup(
    tx, state._replace(params=jaxprune.apply_masks(state.params, masks)), extras
  )


def _setup(
  config: Config, model: nn.Module, run: train.RunSpec, dataset: data_lib.Dataset
) -> train.RunSetup:
  method = METHODS[run.method]
  tx = method.make_tx(config, run.sparsity, run.seed)
  if method.masks is None:
    constants = None
    if not method.stacks:
      constants = (float(run.sparsity),) + ((int(run.seed),) if method.seeded else ())
    return train.RunSetup(
      tx,
      train.init_state(model, tx, run.seed, dataset.image_shape),
      extras=method.extras(config, float(run.sparsity)) if method.extras else None,
      constants=constants,
      ephemeral=method.ephemeral,
    )
  # The seed's initialisation, as every other method of the sweep draws it.
  params = train.init_state(model, optax.identity(), run.seed, dataset.image_shape).params
  init = AtInit(
    params, model, first_batch(dataset, int(config.batch_size), run.seed), int(run.seed)
  )
  with warnings.catch_warnings():  # collapse is reported per run (`collapse_record`)
    warnings.simplefilter("ignore", UserWarning)
    masks = jax.device_get(method.masks(config, float(run.sparsity), init))
  return masked_setup(
    model, masks, tx, run.seed, dataset.image_shape, extras={"at_init": collapse_record(masks)}
  )


def setups(
  config: Config, model: nn.Module, runs: Sequence[train.RunSpec], dataset: data_lib.Dataset
) -> list[train.RunSetup]:
  """What `experiments.train.train_runs` trains for each of ``runs`` (of `METHODS`).

  Args:
      config: the config.
      model: the Flax model.
      runs: the runs.
      dataset: the dataset (its input shape; the first batch of pruning at initialisation).

  Returns:
      One setup per run: its transformation, its initial state from its seed (masked, for
      pruning at initialisation, with the record's extras ``at_init``: `collapse_record`) and
      its program's constants.
  """
  return [_setup(config, model, r, dataset) for r in runs]
