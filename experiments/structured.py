"""Structured pruning experiment: channels removed physically, fine-tuned, against training the
slim architecture from scratch (``experiments/configs/mnist_structured.py``).

For one model and each seed: train the dense network (``pretrain_steps``), read its channel groups
off ``model.apply`` (`jaxprune.structured.dependency_groups`), and for each fraction of channels
removed and each method pick the channels to keep, cut them out (`jaxprune.structured.slim`),
rebuild the Flax module at its new widths (`jaxprune.structured.resize_module`, checked against the
slimmed function) and fine-tune the small network with its own training code
(``finetune_steps``). Methods:

* ``l1``: the L1 norm of each channel's producing kernels, every group at the ratio (Li et al. 2017;
  summed over a residual stream's producers, as DepGraph aggregates a group);
* ``slimming``: a second dense network trained with the L1 penalty on batch-norm scales
  (`jaxprune.network_slimming_penalty`, ``slimming.penalty``), then one global threshold over
  ``|gamma|`` (Liu et al. 2017); only for models with batch norm;
* ``taylor``: ``|sum w * g|`` over each channel's weights, gradients averaged over
  ``calibration_batches`` training batches, one global threshold over the per-group normalised
  scores (Molchanov et al. 2019);
* ``ispasp``: i-SpaSP (Wolfe & Kyrillidis 2021; `jaxprune.structured.ispasp`) on the
  ``calibration_batches`` training batches, every group at the ratio, in turn, each on the
  layers that read it (convolutions included), ``ispasp_iterations`` (20) iterations;
* ``dropnet``: DropNet (Tan & Motani 2020): cycles that each remove ``dropnet.fraction`` (20%) of
  the remaining channels with the lowest mean post-activation over ``calibration_batches`` batches,
  one threshold over all layers ("min"), training ``finetune_steps / cycles`` steps after each;
  the cycles run on the slimmed network, which shrinks at every cycle; ``dropnet_layer``: the
  same with every group losing ``dropnet.fraction`` of its own channels ("min_layer");
* ``random``: random channels, every group at the ratio;
* ``scratch_e`` / ``scratch_b``: Liu et al. (2019)'s control: the architecture ``l1`` gives, freshly
  initialised and trained for ``pretrain_steps`` (Scratch-E) or for as many multiply-adds as the
  dense training (Scratch-B: ``pretrain_steps * MACs_dense / MACs_slim`` steps, at most
  ``scratch_b_max_factor`` times ``pretrain_steps``).

Every run records the test accuracy after fine-tuning and, for the one-shot methods, right after
the cut (DropNet's cuts alternate with training, so it has none), the parameters, the multiply-adds
of one image (`jaxprune.flops.count_macs`) and the inference latency of the jitted slim network at
batch 1 and 64 against the dense one, measured side by side in the same process. Outputs under
``output_dir``: ``runs/<run>.json``, ``summary.csv``, ``summary.md`` and ``structured.png``
(accuracy against parameters, multiply-adds and latency). Finished runs and the trained dense
networks are reused by a rerun of the same config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import jaxprune
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import models
from jaxprune import flops, structured
from jaxprune.progress import progress
from jaxprune.structured import importance

METHODS = (
  "l1",
  "slimming",
  "taylor",
  "ispasp",
  "dropnet",
  "dropnet_layer",
  "random",
  "scratch_e",
  "scratch_b",
)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a structured-pruning config.

  Args:
      config: the config.

  Raises:
      ValueError: for an unknown method or model, a ratio outside (0, 1), or step counts below 1.
  """
  unknown = [m for m in config.methods if m not in METHODS]
  if unknown:
    raise ValueError(f"structured: unknown methods {unknown}; valid: {', '.join(METHODS)}")
  for r in config.ratios:
    if not 0.0 < float(r) < 1.0:
      raise ValueError(f"structured: ratios must lie in (0, 1), got {r}")
  for name in ("pretrain_steps", "finetune_steps", "calibration_batches", "batch_size"):
    if int(config[name]) < 1:
      raise ValueError(f"structured: {name} must be at least 1, got {config[name]}")
  if not 0.0 < float(config.dropnet.fraction) < 1.0:
    raise ValueError(
      f"structured: dropnet.fraction must lie in (0, 1), got {config.dropnet.fraction}"
    )
  models.get_model(config.model, 10)


# --------------------------------------------------------------------------- training


@dataclasses.dataclass
class _Data:
  train_x: jax.Array
  train_y: jax.Array
  test_x: jax.Array
  test_y: jax.Array
  num_classes: int


def _load(config) -> _Data:
  ds = data_lib.load_dataset(
    config.dataset,
    data_dir=data_lib.resolve_data_dir(config.data_dir),
    cache_dir=config.cache_dir,
    progress=bool(config.progress),
  )
  return _Data(
    jnp.asarray(ds.train.images),
    jnp.asarray(ds.train.labels),
    jnp.asarray(ds.test.images),
    jnp.asarray(ds.test.labels),
    ds.num_classes,
  )


def _batches(n: int, batch: int, steps: int, seed: int) -> np.ndarray:
  """``steps`` batches of indices: epochs of fresh permutations (deterministic in ``seed``)."""
  rng = np.random.default_rng(seed)
  per_epoch = n // batch
  epochs = -(-steps // per_epoch)
  order = np.concatenate([rng.permutation(n)[: per_epoch * batch] for _ in range(epochs)])
  return order[: steps * batch].reshape(steps, batch).astype(np.int32)


def _optimizer(config, lr: float, steps: int, penalty: float = 0.0) -> optax.GradientTransformation:
  schedule = optax.cosine_decay_schedule(lr, max(1, steps))
  tx = optax.chain(
    optax.add_decayed_weights(float(config.weight_decay)),
    optax.sgd(schedule, momentum=float(config.momentum)),
  )
  if penalty:
    tx = optax.chain(jaxprune.network_slimming_penalty(penalty), tx)
  return tx


def train(
  module: nn.Module,
  variables: Any,
  data: _Data,
  *,
  steps: int,
  lr: float,
  seed: int,
  config: ml_collections.ConfigDict,
  penalty: float = 0.0,
  desc: str = "train",
) -> Any:
  """Trains ``module`` from ``variables`` for ``steps`` SGD steps; returns the new variables."""
  if steps == 0:
    return variables
  params = variables["params"]
  stats = variables.get("batch_stats", {})
  tx = _optimizer(config, lr, steps, penalty)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, stats, opt_state, idx):
    x, y = data.train_x[idx], data.train_y[idx]

    def loss_fn(p):
      v = {"params": p, **({"batch_stats": stats} if stats else {})}
      if stats:
        logits, new = module.apply(v, x, train=True, mutable=["batch_stats"])
        new_stats = new["batch_stats"]
      else:
        logits, new_stats = module.apply(v, x, train=True), stats
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_stats

    (_, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state

  order = jnp.asarray(_batches(len(data.train_y), int(config.batch_size), steps, seed))
  for i in progress(range(steps), desc=desc, enabled=config.progress):
    params, stats, opt_state = step(params, stats, opt_state, order[i])
  return {"params": params, **({"batch_stats": stats} if stats else {})}


def accuracy(module: nn.Module, variables: Any, data: _Data, batch: int = 1000) -> float:
  """Test accuracy of ``module`` (evaluation mode)."""
  run = jax.jit(lambda v, x: jnp.argmax(module.apply(v, x, train=False), -1))
  correct = 0
  for i in range(0, len(data.test_y), batch):
    correct += int(
      jnp.sum(run(variables, data.test_x[i : i + batch]) == data.test_y[i : i + batch])
    )
  return correct / len(data.test_y)


def _grads(module, variables, data, config, seed) -> Any:
  """Loss gradients of the params averaged over ``calibration_batches`` training batches."""

  @jax.jit
  def grad(params, idx):
    def loss(p):
      v = {**variables, "params": p}
      kw = {"mutable": ["batch_stats"]} if "batch_stats" in variables else {}
      out = module.apply(v, data.train_x[idx], train=True, **kw)
      logits = out[0] if kw else out
      return optax.softmax_cross_entropy_with_integer_labels(logits, data.train_y[idx]).mean()

    return jax.grad(loss)(params)

  order = _batches(len(data.train_y), int(config.batch_size), int(config.calibration_batches), seed)
  total = None
  for idx in order:
    g = grad(variables["params"], jnp.asarray(idx))
    total = g if total is None else jax.tree.map(jnp.add, total, g)
  return jax.tree.map(lambda t: t / len(order), total)


def _layer_inputs(module, variables, data, config, seed) -> dict[str, np.ndarray]:
  """Mean ``|x|`` of the input of every Dense and Conv layer, per input feature (last axis),
  over ``calibration_batches`` training batches (what the layer reads: the previous layers'
  activations after their nonlinearity, pooling and flattening)."""
  sums: dict[str, np.ndarray] = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, (nn.Dense, nn.Conv)) and context.method_name == "__call__":
      x = jnp.abs(args[0])
      key = "/".join(("params",) + tuple(context.module.path) + ("kernel",))
      m = np.asarray(jnp.mean(x.reshape(-1, x.shape[-1]), axis=0))
      sums[key] = sums.get(key, 0) + m
    return next_fun(*args, **kwargs)

  order = _batches(len(data.train_y), int(config.batch_size), int(config.calibration_batches), seed)
  for idx in order:
    with nn.intercept_methods(record):
      module.apply(variables, data.train_x[jnp.asarray(idx)], train=False)
  return {k: v / len(order) for k, v in sums.items()}


def _member_shapes(variables) -> dict[str, tuple]:
  return {n: np.shape(leaf) for n, leaf in jaxprune.leaves.named_leaves(variables)}


def dropnet_scores(module, variables, groups, data, config, seed) -> list[np.ndarray]:
  """DropNet's score of each channel: the mean |activation| that the next layers read from it."""
  inputs = _layer_inputs(module, variables, data, config, seed)
  shapes = _member_shapes(variables)
  out = []
  for g in groups:
    reads = [m for m in g.members if m.path in inputs and m.axis == len(shapes[m.path]) - 2]
    if not reads:
      raise ValueError(f"dropnet: group {g.name} has no consuming Dense or Conv layer")
    per = [inputs[m.path][m.index].mean(axis=1) for m in reads]
    out.append(np.mean(per, axis=0).astype(np.float32))
  return out


def _only(groups, keep: Callable[[Any, tuple], bool], shapes) -> list:
  return [
    g._replace(members=tuple(m for m in g.members if keep(m, shapes[m.path]))) for g in groups
  ]


def producers(groups, variables) -> list:
  """The groups restricted to their producing kernels (a kernel's last axis)."""
  shapes = _member_shapes(variables)
  return _only(groups, lambda m, s: m.path.endswith("/kernel") and m.axis == len(s) - 1, shapes)


def params_only(groups, variables) -> list:
  shapes = _member_shapes(variables)
  return _only(groups, lambda m, s: m.path.startswith("params/"), shapes)


# --------------------------------------------------------------------------- measuring


def _count(variables) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(variables["params"])))


def _macs(module, variables, x1) -> int:
  fn = lambda v, x: module.apply(v, x, train=False)
  return int(flops.count_macs(fn, variables, x1)["total"])


def _time(fn, variables, x, min_time: float) -> float:
  fn(variables, x).block_until_ready()
  n, t = 0, time.perf_counter()
  while True:
    out = fn(variables, x)
    n += 1
    if time.perf_counter() - t >= min_time:
      break
  out.block_until_ready()
  return (time.perf_counter() - t) / n


def latency(dense, small, x, rounds: int, min_time: float) -> dict:
  """Seconds per forward pass of the jitted dense and slim networks at ``x``'s batch, measured in
  alternation; the speedup is the median over rounds of dense / slim."""
  f_dense = jax.jit(lambda v, x: dense[0].apply(v, x, train=False))
  f_small = jax.jit(lambda v, x: small[0].apply(v, x, train=False))
  ds, ss, ratios = [], [], []
  for _ in range(rounds):
    d = _time(f_dense, dense[1], x, min_time)
    s = _time(f_small, small[1], x, min_time)
    ds.append(d)
    ss.append(s)
    ratios.append(d / s)
  return {
    "dense_ms": 1e3 * statistics.median(ds),
    "slim_ms": 1e3 * statistics.median(ss),
    "speedup": statistics.median(ratios),
  }


# --------------------------------------------------------------------------- the experiment


def _save_variables(path: Path, variables) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_bytes(flax.serialization.to_bytes(variables))
  tmp.replace(path)


def _dense(config, data, module, seed, name, penalty, ckpt: Path):
  """The trained dense variables of seed ``seed`` (reused from ``ckpt`` when there)."""
  init = module.init(jax.random.key(seed), data.train_x[:2], train=False)
  init = _fresh(init)
  if ckpt.exists():
    return flax.serialization.from_bytes(init, ckpt.read_bytes())
  trained = train(
    module,
    init,
    data,
    steps=int(config.pretrain_steps),
    lr=float(config.learning_rate),
    seed=seed,
    config=config,
    penalty=penalty,
    desc=f"{name} s{seed}",
  )
  _save_variables(ckpt, trained)
  return trained


class _Runner:
  def __init__(self, config, data, module, out: Path):
    self.config, self.data, self.module, self.out = config, data, module, out
    self.fingerprint = config_lib.fingerprint(config)
    self.x1 = data.test_x[:1]
    self.x64 = data.test_x[:64]
    self.fn = lambda v, x: module.apply(v, x, train=False)

  def cut(self, variables, groups, keeps):
    """Slim ``variables`` and rebuild the module at the new widths (checked to compute the same)."""
    small, small_fn = structured.slim(
      self.fn, variables, groups, keeps, progress_bar=bool(self.config.progress)
    )
    resized = structured.resize_module(
      self.module, small, self.x64, like=small_fn, train=False, rtol=1e-3, atol=1e-4
    )
    return resized, _fresh(small)

  def measure(self, dense, small) -> dict:
    c = self.config
    row = {
      "params": _count(small[1]),
      "macs": _macs(small[0], small[1], self.x1),
    }
    for b, x in (("1", self.x1), ("64", self.x64)):
      lat = latency(dense, small, x, int(c.latency_rounds), float(c.latency_min_time))
      row[f"latency_b{b}_ms"] = lat["slim_ms"]
      row[f"dense_latency_b{b}_ms"] = lat["dense_ms"]
      row[f"speedup_b{b}"] = lat["speedup"]
    return row

  def finished(self, name, dense=None) -> Optional[dict]:
    """The record of a finished run of this config; with ``remeasure``, its latency measured
    again (from the slim network saved beside it)."""
    path = self.out / "runs" / f"{name}.json"
    if not path.exists():
      return None
    record = json.loads(path.read_text())
    if record.get("fingerprint") != self.fingerprint:
      return None
    if self.config.get("remeasure") and dense is not None:
      small = dense if record["method"] == "dense" else self.load(record)
      record.update(
        {k: v for k, v in self.measure(dense, small).items() if "latency" in k or "speedup" in k}
      )
      path.write_text(json.dumps(record, indent=1))
    return record

  def load(self, record) -> tuple:
    """The slim network a run saved: its module (at the recorded widths) and variables (for a
    run that saved none, fresh ones of the same shapes, which run exactly as fast)."""
    module = self.module.clone(**_tuples(record.get("widths", {})))
    template = _fresh(module.init(jax.random.key(0), self.x1, train=False))
    path = self.out / "models" / f"{record['run']}.msgpack"
    if not path.exists():
      return module, template
    return module, flax.serialization.from_bytes(template, path.read_bytes())

  def write(self, record, variables=None) -> dict:
    record["fingerprint"] = self.fingerprint
    path = self.out / "runs" / f"{record['run']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if variables is not None:
      _save_variables(self.out / "models" / f"{record['run']}.msgpack", variables)
    text = json.dumps(record, indent=1)
    path.write_text(text)
    return json.loads(text)  # as a rerun reads it back (tuples as lists)


def _tuples(x):
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return tuple(_tuples(v) for v in x)
  return x


def _fresh(variables):
  return jax.tree.map(jnp.asarray, flax.core.unfreeze(variables))


def _channels(groups, keeps) -> float:
  return 1.0 - sum(int(np.sum(k)) for k in keeps) / sum(g.size for g in groups)


def _keeps(method, ratio, variables, groups, r: _Runner, seed):
  c = r.config
  if method == "l1":
    scores = importance.magnitude(variables, producers(groups, variables), p=1)
    return importance.select(groups, scores, ratio, scope="per_group")
  if method == "random":
    return importance.select(groups, importance.random(groups, seed), ratio, scope="per_group")
  if method == "taylor":
    grads = _grads(r.module, variables, r.data, c, seed)
    pg = params_only(groups, variables)
    scores = importance.taylor({"params": variables["params"]}, {"params": grads}, pg)
    return importance.select(groups, scores, ratio, scope="global", normalize="mean")
  if method == "ispasp":
    n = len(r.data.train_y)
    order = _batches(n, int(c.batch_size), int(c.calibration_batches), seed)
    x = r.data.train_x[jnp.asarray(order.ravel())]
    return structured.ispasp(
      r.fn, variables, groups, ratio, x, iterations=int(c.get("ispasp_iterations", 20))
    )
  if method == "slimming":
    scores = importance.norm_scale(variables, groups)
    return importance.select(groups, scores, ratio, scope="global", normalize=None)
  raise AssertionError(method)


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs the structured-pruning experiment of ``config`` and writes its outputs.

  Args:
      config: a structured config (``experiments/configs/mnist_structured.py``).

  Returns:
      ``records`` (one per run), ``rows`` (the summary), ``wall_time_s`` and ``output_dir``.

  Raises:
      ValueError: for a bad config.
      FileNotFoundError: if the dataset is not prepared.
  """
  validate(config)
  start = time.time()
  out = Path(config.output_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "config.json").write_text(config.to_json_best_effort(indent=1))
  data = _load(config)
  module = models.get_model(config.model, data.num_classes)
  r = _Runner(config, data, module, out)
  methods = list(config.methods)
  records = []
  log = open(out / "log.txt", "a")

  def emit(record):
    records.append(record)
    msg = (
      f"{record['run']}: acc {100 * record['test_accuracy']:.2f}% (no fine-tuning "
      f"{100 * record.get('accuracy_before_finetune', record['test_accuracy']):.2f}%), channels "
      f"removed {100 * record['channels_removed']:.1f}%, params {record['params']:,}, MACs "
      f"{record['macs']:,}, speedup b1 {record['speedup_b1']:.2f}x b64 {record['speedup_b64']:.2f}x"
    )
    print(msg, file=log, flush=True)
    if config.progress:
      tqdm_write(msg)

  for seed in config.seeds:
    seed = int(seed)
    dense_vars = _dense(
      config,
      data,
      module,
      seed,
      "dense",
      0.0,
      out / "checkpoints" / f"dense_s{seed}_{r.fingerprint}.msgpack",
    )
    dense = (module, dense_vars)
    name = f"dense_s{seed}"
    rec = r.finished(name, dense)
    if rec is None:
      rec = {"run": name, "method": "dense", "ratio": 0.0, "seed": seed, "channels_removed": 0.0}
      rec["test_accuracy"] = accuracy(module, dense_vars, data)
      rec.update(r.measure(dense, dense))
      rec = r.write(rec)
    emit(rec)
    groups = structured.dependency_groups(r.fn, dense_vars, r.x64)
    slim_vars = None
    has_scale = all(any(m.path.rsplit("/", 1)[-1] == "scale" for m in g.members) for g in groups)
    for ratio in config.ratios:
      ratio = float(ratio)
      arch = None  # the l1 architecture, for the scratch controls
      for method in methods:
        if method == "slimming" and not has_scale:
          continue  # no batch norm: network slimming does not apply
        name = f"{method}_{int(round(100 * ratio))}_s{seed}"
        rec = r.finished(name, dense)
        if rec is not None:
          emit(rec)
          continue
        rec = {"run": name, "method": method, "ratio": ratio, "seed": seed}
        t0 = time.time()
        steps = int(config.finetune_steps)
        if method in ("scratch_e", "scratch_b"):
          if arch is None:
            keeps = _keeps("l1", ratio, dense_vars, groups, r, seed)
            arch = r.cut(dense_vars, groups, keeps)[0], _channels(groups, keeps)
          small_module, removed = arch
          fresh = small_module.init(jax.random.key(seed), data.train_x[:2], train=False)
          fresh = _fresh(fresh)
          steps = int(config.pretrain_steps)
          if method == "scratch_b":
            factor = _macs(module, dense_vars, r.x1) / _macs(small_module, fresh, r.x1)
            cap = config.get("scratch_b_max_factor")
            factor = factor if cap is None else min(factor, float(cap))
            steps = int(round(steps * factor))
          trained = train(
            small_module,
            fresh,
            data,
            steps=steps,
            lr=float(config.learning_rate),
            seed=seed + 1,
            config=config,
            desc=name,
          )
          small = (small_module, trained)
          rec["channels_removed"] = removed
        elif method in ("dropnet", "dropnet_layer"):
          small = dense
          cycles = max(1, round(math.log(1 - ratio) / math.log(1 - float(config.dropnet.fraction))))
          q = 1 - (1 - ratio) ** (1 / cycles)
          sizes = sum(g.size for g in groups)
          per_cycle = [steps // cycles + (i < steps % cycles) for i in range(cycles)]
          for k in range(cycles):
            fn_k = lambda v, x, m=small[0]: m.apply(v, x, train=False)
            groups_k = structured.dependency_groups(fn_k, small[1], r.x64)
            scores = dropnet_scores(small[0], small[1], groups_k, data, config, seed + k)
            scope = "global" if method == "dropnet" else "per_group"
            keeps = importance.select(groups_k, scores, q, scope=scope, normalize=None)
            small_vars, small_fn = structured.slim(
              fn_k, small[1], groups_k, keeps, progress_bar=bool(config.progress)
            )
            m = structured.resize_module(
              small[0], small_vars, r.x64, like=small_fn, train=False, rtol=1e-3, atol=1e-4
            )
            small_vars = _fresh(small_vars)
            small = (
              m,
              train(
                m,
                small_vars,
                data,
                steps=per_cycle[k],
                lr=float(config.finetune_lr),
                seed=seed + 100 + k,
                config=config,
                desc=f"{name} cycle {k + 1}/{cycles}",
              ),
            )
          # The last cut's keeps are the slim network's channels.
          rec["channels_removed"] = 1.0 - sum(int(np.sum(k)) for k in keeps) / sizes
          rec["cycles"] = cycles
        else:
          source = dense_vars
          if method == "slimming":
            if slim_vars is None:
              slim_vars = _dense(
                config,
                data,
                module,
                seed,
                "slimming",
                float(config.slimming.penalty),
                out / "checkpoints" / f"slimming_s{seed}_{r.fingerprint}.msgpack",
              )
            source = slim_vars
          keeps = _keeps(method, ratio, source, groups, r, seed)
          rec["channels_removed"] = _channels(groups, keeps)
          small = r.cut(source, groups, keeps)
          rec["accuracy_before_finetune"] = accuracy(*small, data)
          small = (
            small[0],
            train(
              small[0],
              small[1],
              data,
              steps=steps,
              lr=float(config.finetune_lr),
              seed=seed + 100,
              config=config,
              desc=name,
            ),
          )
          if method == "l1":
            arch = small[0], rec["channels_removed"]
        rec["train_steps"] = steps
        rec["test_accuracy"] = accuracy(*small, data)
        rec["widths"] = {
          f.name: getattr(small[0], f.name)
          for f in dataclasses.fields(small[0])
          if f.name not in ("parent", "name")
          and any(
            structured.widths._is_width(v) for v in jax.tree.leaves(getattr(small[0], f.name))
          )
        }
        rec.update(r.measure(dense, small))
        rec["wall_s"] = time.time() - t0
        emit(r.write(rec, small[1]))
  rows = summarize(records)
  write_outputs(rows, records, out, config)
  log.close()
  return {
    "records": records,
    "rows": rows,
    "wall_time_s": time.time() - start,
    "output_dir": str(out),
  }


def tqdm_write(msg: str) -> None:
  try:
    from tqdm import tqdm

    tqdm.write(msg)
  except ImportError:  # pragma: no cover
    print(msg)


# --------------------------------------------------------------------------- outputs

_FIELDS = (
  "test_accuracy",
  "accuracy_before_finetune",
  "channels_removed",
  "params",
  "macs",
  "latency_b1_ms",
  "latency_b64_ms",
  "speedup_b1",
  "speedup_b64",
)


def summarize(records: Sequence[dict]) -> list[dict]:
  """Mean and standard deviation over seeds per (method, ratio)."""
  keys = list(dict.fromkeys((r["method"], r["ratio"]) for r in records))
  rows = []
  for method, ratio in keys:
    group = [r for r in records if (r["method"], r["ratio"]) == (method, ratio)]
    row = {"method": method, "ratio": ratio, "seeds": len(group)}
    for f in _FIELDS:
      vals = [r[f] for r in group if r.get(f) is not None]
      if vals:
        row[f] = float(np.mean(vals))
        row[f + "_std"] = float(np.std(vals))
    rows.append(row)
  return rows


def format_markdown(rows: Sequence[dict]) -> str:
  head = (
    "| method | target | channels removed | test acc. (%) | before FT (%) | params | MACs | "
    "speedup b1 | speedup b64 |\n|---|---|---|---|---|---|---|---|---|\n"
  )
  lines = []
  for r in rows:
    acc = f"{100 * r['test_accuracy']:.2f}"
    if r["seeds"] > 1:
      acc += f" ± {100 * r['test_accuracy_std']:.2f}"
    before = r.get("accuracy_before_finetune")
    lines.append(
      f"| {r['method']} | {100 * r['ratio']:.0f}% | {100 * r['channels_removed']:.1f}% | {acc} | "
      f"{'' if before is None else f'{100 * before:.2f}'} | {r['params']:,.0f} | {r['macs'] / 1e6:.2f}M | "
      f"{r['speedup_b1']:.2f}x | {r['speedup_b64']:.2f}x |"
    )
  return head + "\n".join(lines) + "\n"


def plot(rows: Sequence[dict], path: Path, title: str) -> None:
  """Test accuracy against parameters, multiply-adds and batch-64 latency, one marker per method."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), sharey=True)
  panels = (
    ("params", "parameters"),
    ("macs", "multiply-adds per image"),
    ("latency_b64_ms", "latency, batch 64 (ms)"),
  )
  methods = list(dict.fromkeys(r["method"] for r in rows))
  markers = "*osD^vPX<>"
  for ax, (field, label) in zip(axes, panels):
    for i, m in enumerate(methods):
      pts = sorted((r for r in rows if r["method"] == m), key=lambda r: r["ratio"])
      ax.errorbar(
        [r[field] for r in pts],
        [100 * r["test_accuracy"] for r in pts],
        yerr=[100 * r.get("test_accuracy_std", 0.0) for r in pts],
        marker=markers[i % len(markers)],
        markersize=10 if m == "dense" else 6,
        linestyle="none" if m == "dense" else "-",
        label=m,
        capsize=2,
      )
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("test accuracy (%)")
  axes[-1].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_outputs(rows, records, out: Path, config) -> None:
  import csv

  with open(out / "summary.csv", "w", newline="") as f:
    fields = ["method", "ratio", "seeds"] + [k for f_ in _FIELDS for k in (f_, f_ + "_std")]
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  table = format_markdown(rows)
  (out / "summary.md").write_text(
    f"# Structured pruning, {config.model} on {config.dataset}\n\n"
    f"{config.pretrain_steps} dense steps, {config.finetune_steps} fine-tuning steps, batch "
    f"{config.batch_size}, seeds {list(config.seeds)}.\n\n" + table
  )
  print(table)
  if config.plots:
    plot(rows, out / "structured.png", f"Structured pruning: {config.model} on {config.dataset}")
