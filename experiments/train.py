"""Training runs: the compiled programs and the run loop.

A run is one (method, target sparsity, seed); what it trains (its transformation and initial
state, a `RunSetup`) comes from `experiments.methods` for the sweep's methods and from
`experiments.lottery` for the lottery tickets. `train_runs` trains one run, or several runs of
the same method as one ``jax.vmap``-ped program over their stacked states (see
`experiments.stacking`): each run keeps its own initialisation (from its seed), its own data
order (the batches its sequential run would read, gathered on the device from per-run
indices) and its own target sparsity (a hyperparameter in its optimizer state, via
``optax.inject_hyperparams``).

Training advances in chunks between events (evaluations, checkpoints, the end): one call of
a compiled ``lax.fori_loop`` whose trip count is an argument, so every chunk length runs the
same program and a run restarted from any checkpoint computes exactly what the
uninterrupted run computed. The training state holds everything a run needs to continue:
params, model state, the full optimizer state (pruning masks and step counters included),
a JAX RNG key (split every step and passed to the model as its ``dropout`` RNG) and the sums
of the training loss and accuracy since the last evaluation; the data position (epoch,
index within the epoch) is kept next to it and saved in every checkpoint.

Where the batches come from is ``config.data_pipeline`` (`data_pipeline`): ``"memory"`` (the
default) gathers them on the device from the whole training split, ``"grain"`` reads each run's
batches with its own `experiments.pipeline.TrainStream` (the same batches, in the same order) and
feeds a chunk of them (``[steps, batch, ...]`` per run) to the training program, so the training
split is never decoded into memory.

With ``config.data_parallel`` or several processes (`experiments.distributed`), the programs run
data-parallel: the states are replicated on every device, each batch is split over them, and a
streamed run's processes each read their own rows of every batch.

A run whose pruner has *ephemeral* masks (`jaxprune.ephemeral`: STE, SR-STE, movement pruning,
SCL; `RunSetup.ephemeral`) keeps dense weights in its state: its training step's forward pass
applies the masks of the optimizer state (``jaxprune.ephemeral.masked_params``, with a
straight-through gradient), and what is evaluated, measured (the reported sparsity) and written at
the end (``deployed/<run>.npz``) is the deployed model, `deployed_params`. Its checkpoints hold the
dense weights, which a resumed run needs to continue.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import jaxprune
from experiments import checkpointing, distributed, evaluation, models, stacking
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import pipeline as pipeline_lib
from jaxprune.leaves import path_str


class StopRequested(Exception):
  """Raised after the checkpoint of ``config.stop_after_step``: a simulated kill.

  Rerunning the same command resumes from that checkpoint.
  """


class RunSpec(NamedTuple):
  """One run of a sweep.

  ``tag``, when given, names the run instead of its sparsity (the lottery-ticket runs of
  `experiments.lottery`: ``ticket_seed0``, ``reinit_r07_seed0``).
  """

  method: str
  sparsity: float
  seed: int
  tag: Optional[str] = None

  @property
  def name(self) -> str:
    """The run's name: ``dense_seed0`` (sparsity 0: the dense baseline), ``gradual_s0.9_seed1``."""
    if self.tag is not None:
      return "_".join(x for x in (self.method, self.tag) if x) + f"_seed{self.seed}"
    if self.sparsity == 0:
      return f"{self.method}_seed{self.seed}"
    return f"{self.method}_s{self.sparsity:g}_seed{self.seed}"


class TrainState(NamedTuple):
  """Everything one run carries from step to step (per run, or stacked over runs)."""

  params: Any
  model_state: Any
  opt_state: Any
  rng: jax.Array
  loss_sum: jax.Array
  accuracy_sum: jax.Array


class RunSetup(NamedTuple):
  """What one run trains: its transformation, its initial state and what its record adds.

  ``constants`` is what the transformation fixes that another run of its method may not
  share (the sparsity and mask seed of a dynamic sparse method): a run with constants gets
  a compiled program of its own. ``extras`` are added to the run's record. ``ephemeral``: the
  pruner's masks are ephemeral (the forward pass applies them to dense weights; the run reports
  its deployed model, `deployed_params`).
  """

  tx: optax.GradientTransformation
  template: TrainState
  extras: Optional[dict] = None
  constants: Optional[tuple] = None
  ephemeral: bool = False


PIPELINES = ("memory", "grain")

# The most bytes of training images one chunk of a ``"grain"`` run holds on the host and the
# device (all its runs together): longer chunks are split (which changes nothing computed).
GRAIN_CHUNK_BYTES = 256 << 20


def data_pipeline(config: ml_collections.ConfigDict) -> str:
  """Where a config's training batches come from: ``config.data_pipeline``, checked.

  Args:
      config: the config (without the field: ``"memory"``).

  Returns:
      ``"memory"`` (the whole training split on the device, batches gathered there) or
      ``"grain"`` (each run's batches streamed by `experiments.pipeline.train_stream`).

  Raises:
      ValueError: for another value, or for ``"grain"`` with a ``validation_size`` (the stream
          reads the whole training split, it cannot hold examples out of it).
  """
  pipeline = str(config.get("data_pipeline", "memory") or "memory")
  if pipeline not in PIPELINES:
    raise ValueError(f"data_pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
  held_out = int(config.get("validation_size", 0) or 0)
  if pipeline == "grain" and held_out > 0:
    raise ValueError(
      f"data_pipeline='grain' streams the whole training split and cannot hold "
      f"validation_size={held_out} examples out of it; set validation_size=0 or "
      "data_pipeline=memory"
    )
  return pipeline


class DeviceData(NamedTuple):
  """The training split on the device (None when it is streamed, ``data_pipeline="grain"``), the
  padded test split and an optional validation split (held out of the training split, evaluated
  beside the test split when present)."""

  train_images: Optional[jax.Array]
  train_labels: Optional[jax.Array]
  test: evaluation.TestData
  validation: Optional[evaluation.TestData] = None


def prepare_data(
  dataset: data_lib.Dataset,
  eval_batch_size: int,
  validation: Optional[data_lib.Split] = None,
  placement: Optional[distributed.DataParallel] = None,
) -> DeviceData:
  """Puts a dataset on the device once for all the runs of an experiment.

  Args:
      dataset: the loaded dataset (a training split left on disk, `data.SourceSplit`, stays
          there: its batches are streamed).
      eval_batch_size: examples per evaluation batch.
      validation: a split held out of the training split, evaluated beside the test split.
      placement: training data-parallel (`experiments.distributed.data_parallel`): every array
          is replicated on all its devices; None: on the default device.

  Returns:
      The device copies.
  """
  put = jnp.asarray if placement is None else placement.replicate

  def test_data(split: data_lib.Split) -> evaluation.TestData:
    t = evaluation.prepare_test_data(split, eval_batch_size)
    return dataclasses.replace(t, images=put(t.images), labels=put(t.labels), valid=put(t.valid))

  in_memory = isinstance(dataset.train, data_lib.Split)
  return DeviceData(
    put(dataset.train.images) if in_memory else None,
    put(dataset.train.labels) if in_memory else None,
    test_data(dataset.test),
    None if validation is None else test_data(validation),
  )


# ============================================================================ programs


def init_state(
  model: nn.Module, tx: optax.GradientTransformation, seed: int, image_shape: tuple
) -> TrainState:
  """A run's initial state: params from its seed, optimizer state, RNG key, zero sums.

  Args:
      model: the Flax model.
      tx: the run's transformation (its target sparsity is stored in the state).
      seed: the run's seed.
      image_shape: the shape of one input.

  Returns:
      The state.
  """
  init_key, rng = jax.random.split(jax.random.PRNGKey(int(seed)))
  variables = model.init(init_key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  zero = jnp.zeros((), jnp.float32)
  state = TrainState(params, model_state, tx.init(params), rng, zero, zero)
  # Strong dtypes everywhere, so that a restored state has the same jit signature.
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(x)), state)


def deployed_params(params: Any, opt_state: Any) -> Any:
  """The deployed model of a run with ephemeral masks: its dense params with the masks applied.

  Args:
      params: the run's (dense) params.
      opt_state: its optimizer state (holding the pruner).

  Returns:
      ``jaxprune.apply_masks(params, jaxprune.get_masks(opt_state))``.
  """
  return jaxprune.apply_masks(params, jaxprune.get_masks(opt_state))


def make_train_fn(
  model: nn.Module,
  tx: optax.GradientTransformation,
  ephemeral: bool = False,
  placement: Optional[distributed.DataParallel] = None,
) -> Callable:
  """The (unjitted) training of one run for a number of steps.

  Args:
      model: the Flax model.
      tx: the transformation.
      ephemeral: the pruner's masks are ephemeral: the forward pass sees
          ``jaxprune.ephemeral.masked_params(params, opt_state)`` (straight-through gradient).
      placement: train data-parallel (`experiments.distributed.DataParallel`): every batch is
          split over the devices, the state stays replicated.

  Returns:
      ``train(state, indices, num_steps, images, labels) -> state``: runs ``num_steps``
      steps (a traced count, at most ``len(indices)``), step ``i`` on the examples
      ``indices[i]`` of ``images`` / ``labels``; with ``indices=None``, on ``images[i]`` and
      ``labels[i]`` (a chunk of batches, ``[steps, batch, ...]``).
  """

  def step(state: TrainState, x, y) -> TrainState:
    if placement is not None:
      x, y = placement.constrain_batch(x), placement.constrain_batch(y)
    rng, dropout_rng = jax.random.split(state.rng)

    def loss_fn(params):
      if ephemeral:
        params = jaxprune.ephemeral.masked_params(params, state.opt_state)
      variables = {"params": params, **state.model_state}
      rngs = {"dropout": dropout_rng}
      if state.model_state:
        logits, new_model_state = model.apply(
          variables, x, train=True, rngs=rngs, mutable=list(state.model_state.keys())
        )
      else:
        logits = model.apply(variables, x, train=True, rngs=rngs)
        new_model_state = state.model_state
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, (logits, new_model_state)

    (loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
    return TrainState(
      params,
      dict(new_model_state),
      opt_state,
      rng,
      state.loss_sum + loss,
      state.accuracy_sum + accuracy,
    )

  def train(state, indices, num_steps, images, labels):
    def body(i, s):
      if indices is None:
        return step(s, images[i], labels[i])
      idx = indices[i]
      return step(s, images[idx], labels[idx])

    state = jax.lax.fori_loop(0, num_steps, body, state)
    return state if placement is None else placement.constrain_replicated(state)

  return train


class Program(NamedTuple):
  """The compiled training and evaluation of a run, or of a stacked group of runs.

  ``deploy`` (runs with ephemeral masks, else None): ``(params, opt_state) -> params`` of the
  deployed model, `deployed_params`.
  """

  train: Callable
  evaluate: Callable
  deploy: Optional[Callable] = None


_TRAIN_PROGRAMS: dict[tuple, Callable] = {}
_EVAL_PROGRAMS: dict[tuple, Callable] = {}
_DEPLOY_PROGRAMS: dict[tuple, Callable] = {}


def get_program(
  key: tuple,
  model: nn.Module,
  tx: optax.GradientTransformation,
  eval_batch_size: int,
  axes: Any = None,
  ephemeral: bool = False,
  streamed: bool = False,
  placement: Optional[distributed.DataParallel] = None,
) -> Program:
  """The jitted (and, with ``axes``, vmapped) programs, cached under ``key``.

  Cached so that every run of a method, every sparsity and every resumed run reuses one
  compiled training program, and every method one evaluation program.

  Args:
      key: what determines the training program (config fingerprint, method, ...).
      model: the Flax model (its config and the number of classes determine the
          evaluation program).
      tx: the transformation (any sparsity: it is read from the state).
      eval_batch_size: the test data's batch size.
      axes: `experiments.stacking.run_axes` of a run's `TrainState` to vmap over stacked
          runs, or None for one run.
      ephemeral: the pruner's masks are ephemeral (see `make_train_fn`; the programs include
          ``deploy``).
      streamed: the training program reads chunks of batches (``indices=None`` in
          `make_train_fn`; stacked runs: one chunk per run), not indices into a split.
      placement: train data-parallel (see `make_train_fn`).

  Returns:
      The programs.
  """
  vmapped = axes is not None
  train_key = (key, vmapped) + ((True,) if ephemeral else ())
  if streamed or placement is not None:
    train_key += (streamed, None if placement is None else placement.mesh)
  if train_key not in _TRAIN_PROGRAMS:
    train = make_train_fn(model, tx, ephemeral, placement)
    if vmapped:
      in_axes = (axes, None, None, 0, 0) if streamed else (axes, 0, None, None, None)
      train = jax.vmap(train, in_axes=in_axes, out_axes=axes)
    _TRAIN_PROGRAMS[train_key] = jax.jit(train)
  eval_key = (repr(model), vmapped, int(eval_batch_size))
  if placement is not None:
    eval_key += (placement.mesh,)
  if eval_key not in _EVAL_PROGRAMS:
    evaluate = evaluation.make_eval_fn(model, eval_batch_size, placement)
    if vmapped:
      evaluate = jax.vmap(evaluate, in_axes=(axes.params, axes.model_state, None, None, None))
    _EVAL_PROGRAMS[eval_key] = jax.jit(evaluate)
  deploy = None
  if ephemeral:
    if train_key not in _DEPLOY_PROGRAMS:
      fn = deployed_params
      if vmapped:
        fn = jax.vmap(fn, in_axes=(axes.params, axes.opt_state), out_axes=axes.params)
      _DEPLOY_PROGRAMS[train_key] = jax.jit(fn)
    deploy = _DEPLOY_PROGRAMS[train_key]
  return Program(_TRAIN_PROGRAMS[train_key], _EVAL_PROGRAMS[eval_key], deploy)


# ============================================================================ the run loop


def _next_multiple(step: int, every: int) -> float:
  return (step // every + 1) * every if every > 0 else math.inf


def _reset_sums(state: TrainState) -> TrainState:
  return state._replace(
    loss_sum=jnp.zeros_like(state.loss_sum), accuracy_sum=jnp.zeros_like(state.accuracy_sum)
  )


def _restore(
  checkpoints: Sequence[checkpointing.RunCheckpoints],
  templates: Sequence,
  fingerprint: str,
  log: Callable,
) -> tuple[int, list, list[dict]]:
  """The latest step checkpointed by every run with this fingerprint, restored."""
  common = set.intersection(*(set(c.steps()) for c in checkpoints))
  for step in sorted(common, reverse=True):
    metas = [c.read_meta(step) for c in checkpoints]
    if all(m.get("fingerprint") == fingerprint for m in metas):
      restored = [c.restore(step, t) for c, t in zip(checkpoints, templates)]
      return step, [s for s, _ in restored], [m for _, m in restored]
  if any(c.steps() for c in checkpoints):
    log(
      f"Ignoring the checkpoints in {checkpoints[0].directory.parent} of "
      f"{', '.join(c.directory.name for c in checkpoints)}: none was saved by this "
      "config at a step common to these runs; training from scratch"
    )
  return 0, list(templates), []


def train_runs(
  config: ml_collections.ConfigDict,
  dataset: data_lib.Dataset,
  runs: Sequence[RunSpec],
  setups: Sequence[RunSetup],
  *,
  data: DeviceData,
  mac_counts: dict[str, Any],
  output_dir: Path,
  vmap: bool = True,
  log: Callable[[str], None] = print,
  position: int = 1,
) -> list[dict]:
  """Trains runs of one method, as one vmapped program if ``vmap`` and there are several.

  The batches are gathered on the device from ``data.train_images`` or, with
  ``config.data_pipeline = "grain"``, read by one `experiments.pipeline.TrainStream` per run
  (seeded with the run's seed, started at its data position): each chunk's batches of every run
  are stacked on the host, padded to a fixed number of steps, and passed to the training
  program as ``[runs, steps, batch, ...]`` (the same batches, so the same results as the
  in-memory path).

  Data-parallel (`experiments.distributed.data_parallel` of the config: ``data_parallel`` or
  several processes), the states are replicated on every device and each batch is split over
  them; a stream reads only this process's rows of each batch. Only process 0 writes files and
  shows progress; all processes save the checkpoints (each its own shards).

  Resumes from the runs' latest common checkpoint in ``output_dir/checkpoints/<run>/``
  when ``config.resume`` (and the checkpoints were saved by a config with the same
  `experiments.config.fingerprint`); saves every ``checkpoint_interval(config)`` steps and
  at the end.

  Runs whose optimizer holds a ``jaxprune.imp`` state are also evaluated at the end of
  every IMP cycle; their evaluation records carry the cycle (``cycle``, ``cycle_step``,
  ``cycle_end``, ``planned_sparsity``) and the sparsity of the masks (``mask_sparsity``,
  ``mask_leaf_sparsity``, ``mask_leaf_zeros``), and the masks of every cycle are written at
  its end to ``output_dir/masks/<run>/cycle_<c>.npz`` (one bool array per pruned leaf).

  Runs with ephemeral masks (`RunSetup.ephemeral`) train with the masks applied in the forward
  pass, are evaluated and measured on their deployed params (`deployed_params`; the records add
  ``dense_kernel_sparsity``, ``ephemeral`` and ``deployed_params``), and write those at the end to
  ``output_dir/deployed/<run>.npz`` (`save_params`).

  Args:
      config: the config.
      dataset: the dataset (for its shapes and sizes).
      runs: the runs, all of the same method.
      setups: one per run (`experiments.methods.setups` for the methods of a sweep); their
          states must share their structure (the program is built from the first).
      data: the device copies of the dataset, from `prepare_data`.
      mac_counts: `experiments.evaluation.model_macs` of the model.
      output_dir: the experiment's output directory.
      vmap: train several runs as one vmapped program (else ``runs`` must hold one run).
      log: prints a line.
      position: tqdm position of the progress bar.

  Returns:
      One record per run: its evaluations, final metrics and `RunSetup.extras`.

  Raises:
      ValueError: for runs of different methods, several runs without ``vmap``, not one
          setup per run, or a bad `data_pipeline` (``"grain"`` with a validation split).
      StopRequested: after the checkpoint of ``config.stop_after_step``.
  """
  if len({r.method for r in runs}) != 1:
    raise ValueError("train_runs: the runs must share their method")
  if len(runs) > 1 and not vmap:
    raise ValueError("train_runs: several runs are only trained together when vmapped")
  if len(setups) != len(runs):
    raise ValueError("train_runs: one setup per run")
  ephemeral = bool(setups[0].ephemeral)
  if any(bool(s.ephemeral) != ephemeral for s in setups):
    raise ValueError("train_runs: the runs must all have ephemeral masks, or none")
  pipeline = data_pipeline(config)
  if pipeline == "grain" and data.validation is not None:
    raise ValueError(
      "data_pipeline='grain' streams the whole training split and cannot hold a validation "
      "split (validation_size) out of it; set validation_size=0 or data_pipeline=memory"
    )
  if pipeline == "memory" and data.train_images is None:
    raise ValueError(
      "data_pipeline='memory' needs the training split on the device; this data was prepared "
      "from a dataset whose training split was left on disk (data.load_dataset(lazy_train=True))"
    )
  method = runs[0].method
  num_steps = int(config.num_train_steps)
  eval_every = max(1, int(config.eval_every))
  checkpoint_every = config_lib.checkpoint_interval(config)
  batch_size = int(config.batch_size)
  num_examples = len(dataset.train)
  fingerprint = config_lib.fingerprint(config)
  stacked = vmap and len(runs) > 1

  placement = distributed.data_parallel(config)
  main = distributed.is_main()

  model = models.get_model(config.model, dataset.num_classes)
  program_key = (fingerprint, method, dataset.num_classes) + tuple(
    s.constants for s in setups if s.constants is not None
  )
  templates = [s.template for s in setups]
  if placement is not None:  # every run's state on every device (restored there too)
    templates = [placement.replicate(t) for t in templates]
  cycle_ends = imp_cycle_ends(templates[0].opt_state)
  axes = stacking.run_axes(templates[0]) if stacked else None
  streamed = pipeline == "grain"
  program = get_program(
    program_key, model, setups[0].tx, data.test.batch_size, axes, ephemeral, streamed, placement
  )
  evaluate_validation = None
  if data.validation is not None:  # (its own program when its batch size differs)
    evaluate_validation = get_program(
      program_key,
      model,
      setups[0].tx,
      data.validation.batch_size,
      axes,
      ephemeral,
      streamed,
      placement,
    ).evaluate

  dead_neurons = _dead_neuron_probe(config, model, dataset, templates[0], placement)

  keep = int(config.get("keep_checkpoints", 2) or 2)
  checkpoints = [
    checkpointing.RunCheckpoints(output_dir / "checkpoints" / r.name, keep) for r in runs
  ]
  evaluations: list[list[dict]] = [[] for _ in runs]
  diverged = [False] * len(runs)
  positions = [(0, 0)] * len(runs)
  since_eval, elapsed = 0, 0.0
  step = 0
  states = templates
  if config.get("resume", True):
    step, states, metas = _restore(checkpoints, templates, fingerprint, log)
  else:
    metas = []
  if metas:
    for i, m in enumerate(metas):
      evaluations[i] = list(m["evaluations"])
      diverged[i] = bool(m["diverged"])
      positions[i] = (int(m["epoch"]), int(m["index_in_epoch"]))
      if positions[i] != data_lib.data_position(step, num_examples, batch_size):
        raise ValueError(
          f"{checkpoints[i].directory}/{step}: data position "
          f"{positions[i]} does not match step {step}"
        )
    since_eval, elapsed = int(metas[0]["steps_since_eval"]), float(metas[0]["elapsed_s"])
    log(
      f"[{', '.join(r.name for r in runs)}] resuming from the checkpoint of step {step}/{num_steps}"
    )
  else:
    if main:  # (one process deletes; the others wait before saving there)
      for c, r in zip(checkpoints, runs):
        c.clear()
        if cycle_ends:
          shutil.rmtree(output_dir / "masks" / r.name, ignore_errors=True)
    distributed.barrier(f"cleared {output_dir} {','.join(r.name for r in runs)}")
  state = stacking.stack(states, axes) if stacked else states[0]
  if placement is not None and stacked:
    state = placement.replicate(state)
  capacity = min(eval_every, num_steps)
  if pipeline == "grain":  # a chunk's batches of every run, stacked (at most GRAIN_CHUNK_BYTES)
    per_step = len(runs) * batch_size * 4 * math.prod(dataset.image_shape)
    capacity = max(1, min(capacity, GRAIN_CHUNK_BYTES // per_step))
  streams: list[pipeline_lib.TrainStream] = []
  consumed = [0] * len(runs)
  stop_after = config.get("stop_after_step", None)
  stop_after = int(stop_after) if stop_after is not None and int(stop_after) > step else None

  def run_state(i: int) -> TrainState:
    return stacking.take(state, axes, i) if stacked else state

  def save(at: int) -> None:
    for i, (r, c) in enumerate(zip(runs, checkpoints)):
      epoch, index = positions[i]
      c.save(
        at,
        run_state(i),
        {
          "run": r.name,
          "method": r.method,
          "target_sparsity": r.sparsity,
          "seed": r.seed,
          "fingerprint": fingerprint,
          "epoch": epoch,
          "index_in_epoch": index,
          "steps_since_eval": since_eval,
          "evaluations": evaluations[i],
          "diverged": diverged[i],
          "elapsed_s": elapsed + time.perf_counter() - start,
        },
      )

  label = (
    runs[0].name
    if len(runs) == 1
    else (f"{method} x{len(runs)} (vmapped: {', '.join(r.name for r in runs)})")
  )
  bar = None
  if config.get("progress", True) and main:
    from tqdm import tqdm

    bar = tqdm(
      total=num_steps,
      initial=step,
      desc=label[:60],
      position=position,
      leave=False,
      unit="step",
      dynamic_ncols=True,
    )
  start = time.perf_counter()
  try:
    if pipeline == "grain" and step < num_steps:
      streams = _open_streams(config, dataset, runs, positions, num_steps, placement)
    while step < num_steps and not all(diverged):
      target = min(
        num_steps,
        step + capacity,
        _next_multiple(step, eval_every),
        _next_multiple(step, checkpoint_every),
        stop_after if stop_after is not None else math.inf,
        min((e for e in cycle_ends if e > step), default=math.inf),
      )
      count = int(target - step)
      images: Any
      labels: Any
      indices: Any = None
      if streams:  # this process's rows of every run's next batches: [runs, capacity, rows, ...]
        rows = batch_size // (1 if placement is None else jax.process_count())
        images, labels = _read_chunk(streams, count, capacity, rows, dataset.image_shape)
        if not stacked:
          images, labels = images[0], labels[0]
        if placement is None:
          images, labels = jnp.asarray(images), jnp.asarray(labels)
        else:  # the global batches, split over the devices along their batch axis
          axis = 2 if stacked else 1
          images, labels = (placement.global_batch(a, axis) for a in (images, labels))
        for i, stream in enumerate(streams):
          consumed[i] += count
          positions[i] = stream.position(consumed[i])
      else:
        indices = np.zeros((len(runs), capacity, batch_size), np.int32)
        for i, r in enumerate(runs):
          indices[i, :count], positions[i] = data_lib.batch_indices(
            num_examples, batch_size, seed=r.seed, position=positions[i], count=count
          )
        indices = indices if stacked else indices[0]
        if placement is not None:
          indices = placement.replicate(indices)
        images, labels = data.train_images, data.train_labels
      state = program.train(state, indices, np.int32(count), images, labels)
      step += count
      since_eval += count
      if bar is not None:
        bar.update(count)
      if step % eval_every == 0 or step == num_steps or step in cycle_ends:
        _evaluate(
          state,
          program,
          data,
          runs,
          axes,
          step,
          since_eval,
          evaluations,
          diverged,
          mac_counts,
          num_examples,
          batch_size,
          num_steps,
          log,
          bar,
          output_dir if cycle_ends else None,
          evaluate_validation,
          dead_neurons,
        )
        since_eval = 0
        state = _reset_sums(state)
      if (
        (checkpoint_every and step % checkpoint_every == 0)
        or step == num_steps
        or step == stop_after
        or all(diverged)
      ):
        save(step)
      if step == stop_after:
        log(
          f"[{label}] stopping after the checkpoint of step {step} "
          "(stop_after_step); rerun the same command to resume"
        )
        raise StopRequested(step)
  finally:
    if bar is not None:
      bar.close()
    for stream in streams:
      stream.close()
    for c in checkpoints:
      c.close()
  train_time = elapsed + time.perf_counter() - start

  deployed: list[dict] = [{} for _ in runs]
  if program.deploy is not None:  # ephemeral masks: write the deployed models
    params = program.deploy(state.params, state.opt_state)
    for i, r in enumerate(runs):
      path = output_dir / "deployed" / f"{r.name}.npz"
      if main:
        save_params(stacking.take(params, axes.params, i) if stacked else params, path)
      deployed[i] = {"ephemeral": True, "deployed_params": str(path.relative_to(output_dir))}

  num_params = sum(int(np.size(x)) for x in jax.tree.leaves(templates[0].params))
  records = []
  for i, r in enumerate(runs):
    evals = evaluations[i]
    if not evals:
      raise RuntimeError(f"{r.name}: finished without an evaluation")
    final = evals[-1]
    # The last evaluation measured the final params (or, for a run that diverged and
    # stopped early, the params it stopped with; a vmapped group trains on past that).
    # With ephemeral masks, the deployed params.
    zeros = int(round(final["sparsity"] * num_params))
    dense = {k: final[k] for k in ("dense_kernel_sparsity",) if k in final}
    records.append(
      {
        "name": r.name,
        "method": r.method,
        "target_sparsity": float(r.sparsity),
        "seed": int(r.seed),
        "num_train_steps": num_steps,
        "fingerprint": fingerprint,
        "trained_with": [x.name for x in runs],
        "vmapped": stacked,
        "train_time_s": train_time,
        "final": {
          "step": final["step"],
          "test_accuracy": final["test_accuracy"],
          "test_error": round(1.0 - final["test_accuracy"], 12),
          "test_loss": final["test_loss"],
          "best_test_accuracy": max(e["test_accuracy"] for e in evals),
          "loss": final["loss"],
          "sparsity": final["sparsity"],
          "kernel_sparsity": final["kernel_sparsity"],
          "zeros": zeros,
          "size": num_params,
          "compression_ratio": final["compression_ratio"],
          "theoretical_speedup": final["theoretical_speedup"],
          "leaf_sparsity": final["leaf_sparsity"],
          **dense,
          **{k: final[k] for k in ("dead_neuron_rate", "dead_neuron_rate_layers") if k in final},
        },
        "evaluations": evals,
        **deployed[i],
        **(setups[i].extras or {}),
      }
    )
  return records


def save_params(params: Any, path: Path) -> Path:
  """Writes ``params`` to ``path`` (``.npz``, one array per leaf named by its path).

  Args:
      params: the params of one run.
      path: the file.

  Returns:
      ``path``.
  """
  arrays = {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.stem}.tmp.npz")
  np.savez_compressed(tmp, **arrays)
  tmp.replace(path)
  return path


def _open_streams(
  config: ml_collections.ConfigDict,
  dataset: data_lib.Dataset,
  runs: Sequence[RunSpec],
  positions: Sequence[tuple[int, int]],
  num_steps: int,
  placement: Optional[distributed.DataParallel] = None,
) -> list[pipeline_lib.TrainStream]:
  """One training stream per run, from its seed and data position, spanning ``num_steps``: of
  whole batches, or with ``placement`` of this process's rows of every batch."""
  train_split = dataset.train
  if isinstance(train_split, data_lib.SourceSplit):
    name, split, data_dir = train_split.name, train_split.split, train_split.data_dir
  else:
    name, split = str(config.dataset), "train"
    data_dir = data_lib.resolve_data_dir(config.get("data_dir", None))
  batch_size = int(config.batch_size)
  per_epoch = data_lib.batches_per_epoch(len(train_split), batch_size)
  streams: list[pipeline_lib.TrainStream] = []
  try:
    for r, position in zip(runs, positions):
      stream = pipeline_lib.train_stream(
        name,
        batch_size=batch_size,
        seed=r.seed,
        position=position,
        epochs=-(-num_steps // per_epoch),
        data_dir=data_dir,
        split=split,
        mean=dataset.mean,
        std=dataset.std,
        process_index=0 if placement is None else jax.process_index(),
        process_count=1 if placement is None else jax.process_count(),
      )
      streams.append(stream)
      if stream.batches_per_epoch != per_epoch:
        raise ValueError(
          f"the {name}/{split} stream has {stream.batches_per_epoch} batches per epoch, the "
          f"training split of the dataset {per_epoch}"
        )
  except BaseException:
    for stream in streams:
      stream.close()
    raise
  return streams


def _read_chunk(
  streams: Sequence[pipeline_lib.TrainStream],
  count: int,
  capacity: int,
  rows: int,
  image_shape: tuple,
) -> tuple[np.ndarray, np.ndarray]:
  """The next ``count`` batches of every stream: images ``[runs, capacity, rows, *image_shape]``
  and labels ``[runs, capacity, rows]`` (``rows``: what a stream yields per batch; the steps
  past ``count`` are zeros, never read, so the shapes are the same for every chunk)."""
  images = np.zeros((len(streams), capacity, rows, *image_shape), np.float32)
  labels = np.zeros((len(streams), capacity, rows), np.int32)
  for r, stream in enumerate(streams):
    for i in range(count):
      images[r, i], labels[r, i] = next(stream)
  return images, labels


def imp_cycle_ends(opt_state: Any) -> list[int]:
  """The steps at which the cycles of a ``jaxprune.imp`` run end ([] without one).

  Args:
      opt_state: the optimizer state of one run.

  Returns:
      The cycle ends, ascending.
  """
  found = jaxprune.masks.find_states(opt_state, lambda x: isinstance(x, jaxprune.IMPState))
  if len(found) != 1:
    return []
  return [int(e) for e in np.asarray(jax.device_get(found[0].cycle_ends))]


def imp_record(opt_state: Any) -> dict[str, Any]:
  """The IMP cycle of a run and the sparsity of its masks, for its evaluation record.

  Args:
      opt_state: the optimizer state of one run (holding a ``jaxprune.imp`` state).

  Returns:
      ``cycle``, ``cycle_step``, ``cycle_end``, ``planned_sparsity`` (of the pruned
      leaves, as planned by `jaxprune.imp`), ``mask_sparsity`` (measured: pruned entries
      over the size of the pruned leaves), ``mask_leaf_sparsity`` and ``mask_leaf_zeros``
      (per pruned leaf).
  """
  info = jax.device_get(jaxprune.get_cycle(opt_state))
  summary = jaxprune.sparsity_summary(jax.device_get(jaxprune.get_masks(opt_state)))
  return {
    "cycle": int(info.cycle),
    "cycle_step": int(info.step),
    "cycle_end": bool(info.at_end),
    "planned_sparsity": float(info.sparsity),
    "mask_sparsity": float(summary.sparsity),
    "mask_leaf_sparsity": {str(k): float(v.sparsity) for k, v in summary.leaves.items()},
    "mask_leaf_zeros": {str(k): int(v.zeros) for k, v in summary.leaves.items()},
  }


def save_cycle_masks(opt_state: Any, directory: Path, cycle: int) -> Path:
  """Writes the masks of a run to ``directory/cycle_<cycle>.npz`` (one array per leaf).

  Args:
      opt_state: the optimizer state of one run.
      directory: the run's mask directory.
      cycle: the cycle the masks belong to.

  Returns:
      The file written.
  """
  masks = jax.device_get(jaxprune.get_masks(opt_state))
  arrays = {
    path_str(path): np.asarray(m, bool)
    for path, m in jax.tree_util.tree_flatten_with_path(masks)[0]
  }
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"cycle_{cycle:02d}.npz"
  tmp = directory / f".cycle_{cycle:02d}.tmp.npz"
  np.savez_compressed(tmp, **arrays)
  tmp.replace(path)
  return path


def load_cycle_masks(directory: Path, cycle: int, params: Any) -> Any:
  """The masks written by `save_cycle_masks`, as a tree like ``params`` (None elsewhere).

  Args:
      directory: the run's mask directory.
      cycle: the cycle.
      params: params (or shapes) of the run, for the tree structure.

  Returns:
      The mask tree.

  Raises:
      FileNotFoundError: if the cycle's masks were not written.
  """
  with np.load(directory / f"cycle_{cycle:02d}.npz") as f:
    arrays = {k: f[k] for k in f.files}
  paths, treedef = jax.tree_util.tree_flatten_with_path(params)
  return jax.tree.unflatten(treedef, [arrays.get(path_str(p)) for p, _ in paths])


def _dead_neuron_probe(config, model, dataset, template, placement=None) -> Optional[Callable]:
  """The probe of ``config.dead_neurons`` training images (0 or absent: None).

  The images are a fixed sample of the training split (seed 0, the same for every run), so that
  the rates of runs and of evaluations compare. Measured on the evaluated params (the deployed
  ones with ephemeral masks).

  Raises:
      ValueError: for a negative count or more than the training images, or a model with batch
          norm (its Dense/Conv outputs do not feed the ReLUs directly).
  """
  n = int(config.get("dead_neurons", 0) or 0)
  if n == 0:
    return None
  if not 0 < n <= len(dataset.train):
    raise ValueError(
      f"dead_neurons must be in [0, {len(dataset.train)}] (training images), got {n}"
    )
  if template.model_state:
    raise ValueError(
      f"dead_neurons: model {config.model!r} has {sorted(template.model_state)} (batch norm); "
      "the dead neuron rate is read from the Dense/Conv outputs that feed a ReLU directly "
      "(the LeNets, MLPs, Conv-2/4/6)"
    )
  idx = np.sort(np.random.default_rng(0).permutation(len(dataset.train))[:n])
  images, _ = dataset.train.take(idx)
  if placement is not None:
    images = placement.replicate(images)
  return evaluation.dead_neuron_probe(model, images)


def _evaluate(
  state,
  program,
  data,
  runs,
  axes,
  step,
  since_eval,
  evaluations,
  diverged,
  mac_counts,
  num_examples,
  batch_size,
  num_steps,
  log,
  bar,
  masks_dir: Optional[Path] = None,
  evaluate_validation: Optional[Callable] = None,
  dead_neurons: Optional[Callable] = None,
) -> None:
  """Appends an evaluation record to every run still training (in place).

  With ``masks_dir`` (IMP runs) the records carry `imp_record` and the masks of a cycle
  are saved at its end; with ``data.validation``, the validation loss and accuracy from
  ``evaluate_validation``; with ``dead_neurons`` (`_dead_neuron_probe`), the dead neuron rate of
  the evaluated params, in all and per layer. With ephemeral masks (``program.deploy``) the deployed params are
  evaluated and measured, and the records add ``dense_kernel_sparsity`` (of the dense weights).
  """
  # With ephemeral masks, the deployed model is evaluated and measured (the dense weights'
  # sparsity is recorded beside it).
  params = state.params if program.deploy is None else program.deploy(state.params, state.opt_state)
  correct, loss_sum = program.evaluate(
    params, state.model_state, data.test.images, data.test.labels, data.test.valid
  )
  correct, loss_sum, train_loss, train_acc = (
    np.atleast_1d(np.asarray(x))
    for x in jax.device_get((correct, loss_sum, state.loss_sum, state.accuracy_sum))
  )
  if data.validation is not None:
    val_correct, val_loss = (
      np.atleast_1d(np.asarray(x))
      for x in jax.device_get(
        evaluate_validation(
          params,
          state.model_state,
          data.validation.images,
          data.validation.labels,
          data.validation.valid,
        )
      )
    )
  for i, r in enumerate(runs):
    if diverged[i]:
      continue
    run_params = stacking.take(params, axes.params, i) if axes is not None else params
    sp = evaluation.measure(run_params, mac_counts)
    record = {
      "step": step,
      "epoch": step * batch_size / num_examples,
      "loss": float(train_loss[i]) / since_eval,
      "train_accuracy": float(train_acc[i]) / since_eval,
      "test_loss": float(loss_sum[i]) / data.test.size,
      "test_accuracy": int(correct[i]) / data.test.size,
      "sparsity": sp["sparsity"],
      "kernel_sparsity": sp["kernel_sparsity"],
      "compression_ratio": sp["compression_ratio"],
      "theoretical_speedup": sp["theoretical_speedup"],
      "leaf_sparsity": sp["leaves"],
    }
    if program.deploy is not None:
      dense = stacking.take(state.params, axes.params, i) if axes is not None else state.params
      record["dense_kernel_sparsity"] = evaluation.measure(dense, mac_counts)["kernel_sparsity"]
    if dead_neurons is not None:
      rate = dead_neurons(run_params)
      record["dead_neuron_rate"] = rate.total
      record["dead_neuron_rate_layers"] = rate.leaves
    if data.validation is not None:
      record["validation_loss"] = float(val_loss[i]) / data.validation.size
      record["validation_accuracy"] = int(val_correct[i]) / data.validation.size
    if masks_dir is not None:
      opt_state = (
        stacking.take(state.opt_state, axes.opt_state, i) if axes is not None else state.opt_state
      )
      record.update(imp_record(opt_state))
      if record["cycle_end"] and distributed.is_main():
        save_cycle_masks(opt_state, masks_dir / "masks" / r.name, record["cycle"])
    evaluations[i].append(record)
    if not math.isfinite(record["loss"]):
      log(f"[{r.name}] loss is {record['loss']}; stopping this run early")
      diverged[i] = True
      continue
    log(
      f"[{r.name}] step {step:>6d}/{num_steps}  loss {record['loss']:.4f}  "
      f"train acc {record['train_accuracy']:.4f}  test acc {record['test_accuracy']:.4f}"
      f"  sparsity {sp['sparsity']:.4f} (kernels {sp['kernel_sparsity']:.4f})  "
      f"compression {sp['compression_ratio']:.2f}x  speedup "
      f"{sp['theoretical_speedup']:.2f}x"
    )
  if bar is not None:
    best = max(range(len(runs)), key=lambda i: int(correct[i]))
    bar.set_postfix(test_acc=f"{int(correct[best]) / data.test.size:.4f}")
