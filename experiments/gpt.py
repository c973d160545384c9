"""A GPT-style decoder trained dense and gradually magnitude-pruned on a device mesh: an example to copy.

Run ``python -m experiments.gpt [--config small|tiny] [--devices N] [--out DIR]``. On a CPU, simulate
a mesh with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.

Model: a decoder-only transformer in Flax linen. Token embeddings plus learned position embeddings,
then ``layers`` pre-LayerNorm blocks applied with ``nn.scan``, so every block parameter is one
stacked leaf ``[layers, ...]`` (the scan-over-layers layout of large transformers):
``blocks/query/kernel`` ``[layers, d_model, heads, head_dim]`` (``key``, ``value`` alike),
``blocks/out/kernel`` ``[layers, heads, head_dim, d_model]``, ``blocks/mlp_in/kernel``
``[layers, d_model, 4 d_model]`` and ``blocks/mlp_out/kernel``. Causal multi-head self-attention,
a GELU MLP, a final LayerNorm and an output head tied to the token embedding (``tied=False``: a
separate ``head/kernel``, which is then pruned too).

Data: a character-level language model on the text of this repository's own Markdown docs
(``README.md``, ``docs/**/*.md`` except generated folders, ``CHANGELOG.md``; 32 files, about 155,000 characters, 96 distinct), so it
runs offline on every machine. The files are concatenated in a fixed order; the first 90% of the
characters are the training split, the last 10% the validation split. Training batches are random
windows of ``seq_len + 1`` characters drawn with a seeded ``numpy.random.Generator`` (one stream
per process); the validation set is a fixed seeded sample of windows, the same for every run.

Training: a ``data x model`` mesh (``jax.make_mesh``, Auto axes) over the devices. Parameters are
sharded by one rule (`param_spec`): kernels and embeddings put their last axis over ``"model"`` and
their first axis after the layer axis over ``"data"`` (FSDP) where the sizes divide; vectors are
replicated. The batch is split over ``"data"``. One jitted step (``value_and_grad``, ``tx.update``,
``optax.apply_updates``) with ``in_shardings`` = ``out_shardings`` and ``donate_argnums``. The pruned
run's optimizer is ``optax.chain(clip, adamw, jaxprune.magnitude_pruning(sparsity,
distribution="global", schedule=polynomial(...), packed_masks=True))``; its masks live in the
state with the params' sharding. ``--distribution uniform`` or ``erk`` prunes each layer of the
stacked leaves as a leaf of its own (`jaxprune.allocation.stacked`). The dense and the pruned model
train in one loop, step by step on the same batches, so the step time ratio is measured under the
same machine load.

Outputs: a tqdm bar, a table (validation loss and perplexity, sparsity of the pruned kernels counted
as exact zeros in the params, parameter counts, step time and the pruned/dense ratio), and in
``--out`` (default ``experiments/results/gpt/``): ``results.json`` and ``val_loss.png``.

Configs (`CONFIGS`): ``tiny`` (2 layers, d_model 32, 2 heads, seq 32, batch 16, 30 steps, 80%
sparsity, 29,856 parameters) for the tests; ``small`` (4 layers, d_model 128, 4 heads, seq 128, batch
32, 3000 steps, 90% sparsity, 820,352 parameters) the example, sized for an accelerator. Measured on
the 2-core CPU this was written on (8 simulated devices, a 4 x 2 mesh, the machine shared with other
jobs): ``tiny`` runs in about 33 s, of which about 25 s are XLA compilation (the dense and the
pruned step, 8-11 s each) and 1-2 s the 60 training steps; validation loss 4.85 -> 3.35 nats/char
dense, 3.37 pruned, the pruned kernels exactly 80% zero (44 s with ``--heads``: both head-pruned
runs 3.35). ``small`` was not run to the end: 200 steps took 14 min for both
runs (1.9 s per step each; validation loss 4.87 -> 2.67), so its 3000 steps would take about
3 h 15 min on that CPU (extrapolated). ``--steps`` shortens a run; the masks reach the target
sparsity only if it covers ``end_step`` (update counts ``begin_step`` to ``end_step`` are the ramp).

Multi-host (a TPU pod slice or a GPU cluster): start the same command on every host with
``--distributed``; the module calls ``jax.distributed.initialize()`` (auto-detected on TPU and
SLURM; otherwise pass ``--coordinator HOST:PORT --num_processes N --process_id I``), builds the mesh
over ``jax.devices()`` of all processes, every process draws the window starts of each global
batch from the same seed and feeds its own ``batch_size / process_count`` rows with
``jax.make_array_from_process_local_data`` (so the training does not depend on the number of
processes: tests/test_gpt_example.py trains the tiny config on two processes of 4 devices and gets
the masks and losses of one process of 8), and only process 0 prints and writes files. ``--model_axis`` sets the size of the ``"model"`` axis (the rest
is ``"data"``), e.g. ``--model_axis 4`` on a slice of 4-chip hosts.

Attention-head pruning (``--heads``): `jaxprune.structured.dependency_groups` reads the model's
jaxpr and finds the heads of the stacked layout (the head axis of the query, key, value and output
kernels, and biases with ``bias=True``, in one group), and a third run removes half of the heads
with `jaxprune.structured_pruning` on the same schedule. The scanned body is one function, so a head
group spans every layer and that run removes head ``h`` from all layers at once (which
`jaxprune.structured.slim` can slice away: every layer keeps the same heads). A fourth run
(`layer_head_pruner`) prunes heads layer by layer: under `jaxprune.allocation.stacked` a group over
stacked leaves becomes one unit per layer, so every layer removes its own weakest heads; those stay
masks, since layers that keep different heads do not form one smaller stack.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune
from jaxprune import structured

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "experiments" / "results" / "gpt"
# Folders of docs/ that are generated (and ignored by git): their text differs between machines.
_GENERATED = ("_build", "_autosummary", "notebooks")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """A model, data and training configuration (see `CONFIGS`)."""

  layers: int
  d_model: int
  heads: int
  seq_len: int
  batch_size: int
  steps: int
  learning_rate: float
  sparsity: float
  begin_step: int
  end_step: int
  frequency: int
  eval_every: int
  eval_batches: int
  warmup: int = 10
  weight_decay: float = 0.1
  mlp_ratio: int = 4
  tied: bool = True
  bias: bool = False
  head_sparsity: float = 0.5
  seed: int = 0


CONFIGS = {
  "tiny": GPTConfig(
    layers=2,
    d_model=32,
    heads=2,
    seq_len=32,
    batch_size=16,
    steps=30,
    learning_rate=1e-2,
    sparsity=0.8,
    begin_step=5,
    end_step=20,
    frequency=5,
    eval_every=10,
    eval_batches=2,
    warmup=5,
  ),
  "small": GPTConfig(
    layers=4,
    d_model=128,
    heads=4,
    seq_len=128,
    batch_size=32,
    steps=3000,
    learning_rate=3e-3,
    sparsity=0.9,
    begin_step=500,
    end_step=2000,
    frequency=100,
    eval_every=250,
    eval_batches=8,
    warmup=100,
  ),
}


# --------------------------------------------------------------------------------------- data


def doc_files(root: Path = ROOT) -> list[Path]:
  """The Markdown files of the corpus, in their fixed order.

  Args:
    root: the repository root.

  Returns:
    ``README.md``, the sorted ``docs/**/*.md`` outside generated folders, ``CHANGELOG.md`` (those
    that exist).
  """
  docs = sorted(
    p
    for p in (root / "docs").rglob("*.md")
    if not any(part in _GENERATED for part in p.relative_to(root / "docs").parts)
  )
  return [p for p in [root / "README.md", *docs, root / "CHANGELOG.md"] if p.is_file()]


@dataclasses.dataclass(frozen=True)
class CharData:
  """A character-level corpus split by position into training and validation ids.

  Attributes:
    chars: the vocabulary, sorted; id ``i`` is ``chars[i]``.
    vocab_size: ``len(chars)`` rounded up to a multiple of 64 (ids past ``len(chars)`` never occur),
      so that the embedding shards evenly.
    train: the ids of the first ``1 - val_fraction`` of the text.
    val: the ids of the rest.
  """

  chars: str
  vocab_size: int
  train: np.ndarray
  val: np.ndarray

  @classmethod
  def from_text(cls, text: str, val_fraction: float = 0.1) -> CharData:
    """Builds the vocabulary and the split of ``text``.

    Args:
      text: the corpus.
      val_fraction: the fraction of the characters (at the end) held out for validation.

    Returns:
      A `CharData`.
    """
    chars = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((index[c] for c in text), np.int32, len(text))
    split = int(len(ids) * (1.0 - val_fraction))
    return cls(chars, -(-len(chars) // 64) * 64, ids[:split], ids[split:])

  def windows(
    self,
    split: str,
    count: int,
    seq_len: int,
    rng: np.random.Generator,
    rows: slice = slice(None),
  ) -> np.ndarray:
    """Random windows of ``seq_len + 1`` ids (inputs and next-character targets).

    Args:
      split: ``"train"`` or ``"val"``.
      count: the number of windows drawn (a global batch).
      seq_len: the model's context length.
      rng: the generator the window starts are drawn from.
      rows: the windows to return: a process's rows of the global batch. All ``count`` starts are
        drawn whatever the rows, so a batch does not depend on how many processes share it.

    Returns:
      An int32 array ``[rows, seq_len + 1]``.
    """
    ids = self.train if split == "train" else self.val
    starts = rng.integers(0, len(ids) - seq_len - 1, size=count)[rows]
    return ids[starts[:, None] + np.arange(seq_len + 1)[None, :]]


def load_data(root: Path = ROOT) -> CharData:
  """The corpus of `doc_files`, concatenated (two newlines between files) and split.

  Args:
    root: the repository root.

  Returns:
    A `CharData`.
  """
  text = "\n\n".join(p.read_text(encoding="utf-8") for p in doc_files(root))
  return CharData.from_text(text)


# -------------------------------------------------------------------------------------- model


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The model's shape."""

  vocab_size: int
  layers: int
  d_model: int
  heads: int
  seq_len: int
  mlp_ratio: int = 4
  tied: bool = True
  bias: bool = False


def model_config(config: GPTConfig, vocab_size: int) -> ModelConfig:
  """The `ModelConfig` of a run configuration."""
  return ModelConfig(
    vocab_size,
    config.layers,
    config.d_model,
    config.heads,
    config.seq_len,
    config.mlp_ratio,
    config.tied,
    config.bias,
  )


class Block(nn.Module):
  """One pre-LayerNorm transformer block, written as an ``nn.scan`` body ``(x, _) -> (x, None)``."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
    c = self.config
    head_dim = c.d_model // c.heads
    init = nn.initializers.normal(0.02)
    residual_init = nn.initializers.normal(0.02 / math.sqrt(2 * c.layers))  # GPT-2's scaling

    h = nn.LayerNorm(use_bias=c.bias, name="ln_attn")(x)
    q, k, v = (
      nn.DenseGeneral((c.heads, head_dim), use_bias=c.bias, kernel_init=init, name=name)(h)
      for name in ("query", "key", "value")
    )  # [batch, seq, heads, head_dim]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(head_dim))
    seq = x.shape[1]
    causal = jnp.tril(jnp.ones((seq, seq), bool))[None, None]
    logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
    attention = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
    x = x + nn.DenseGeneral(
      c.d_model, axis=(-2, -1), use_bias=c.bias, kernel_init=residual_init, name="out"
    )(attention)

    h = nn.LayerNorm(use_bias=c.bias, name="ln_mlp")(x)
    h = nn.gelu(
      nn.Dense(c.mlp_ratio * c.d_model, use_bias=c.bias, kernel_init=init, name="mlp_in")(h)
    )
    x = x + nn.Dense(c.d_model, use_bias=c.bias, kernel_init=residual_init, name="mlp_out")(h)
    return x, None


class GPT(nn.Module):
  """A decoder-only transformer: ``model.apply({'params': p}, tokens) -> logits``.

  ``tokens`` is ``[batch, seq]`` (``seq <= seq_len``) of ids; logits are ``[batch, seq, vocab]``.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    c = self.config
    init = nn.initializers.normal(0.02)
    embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=init, name="embed")
    positions = self.param("pos_embedding", init, (c.seq_len, c.d_model))
    x = embed(tokens) + positions[None, : tokens.shape[1]]
    blocks = nn.scan(
      Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=c.layers
    )
    x, _ = blocks(c, name="blocks")(x, None)
    x = nn.LayerNorm(use_bias=c.bias, name="ln_final")(x)
    if c.tied:
      return embed.attend(x)
    return nn.Dense(c.vocab_size, use_bias=False, kernel_init=init, name="head")(x)


def loss_fn(model: GPT, params: Any, batch: jax.Array) -> jax.Array:
  """Mean next-character cross-entropy of ``batch`` (``[batch, seq_len + 1]`` ids)."""
  logits = model.apply({"params": params}, batch[:, :-1])
  labels = batch[:, 1:]
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# ----------------------------------------------------------------------------------- sharding


def make_mesh(devices: Sequence[Any], model_axis: int) -> Mesh:
  """A ``("data", "model")`` mesh with ``model_axis`` devices along ``"model"``.

  Args:
    devices: the devices (of all processes).
    model_axis: the size of the ``"model"`` axis; must divide ``len(devices)``.

  Returns:
    A mesh with Auto axes (the model's einsums carry no sharding annotations).

  Raises:
    ValueError: if ``model_axis`` does not divide the device count.
  """
  if model_axis < 1 or len(devices) % model_axis:
    raise ValueError(f"gpt: --model_axis {model_axis} does not divide {len(devices)} devices.")
  return jax.make_mesh(
    (len(devices) // model_axis, model_axis),
    ("data", "model"),
    axis_types=(AxisType.Auto, AxisType.Auto),
    devices=devices,
  )


def param_spec(path: str, shape: Sequence[int], mesh: Mesh) -> P:
  """The sharding rule: the last axis over ``"model"``, the first axis after the layer axis (FSDP)
  over ``"data"``, each where its size divides; arrays with fewer than two such axes replicated.

  Args:
    path: the leaf's path, e.g. ``blocks/query/kernel``; leaves under ``blocks/`` are stacked.
    shape: the leaf's shape.
    mesh: the mesh.

  Returns:
    A ``PartitionSpec``.
  """
  first = 1 if path.startswith("blocks/") else 0
  spec: list[str | None] = [None] * len(shape)
  if len(shape) - first >= 2:
    if shape[-1] % mesh.shape["model"] == 0:
      spec[-1] = "model"
    if shape[first] % mesh.shape["data"] == 0:
      spec[first] = "data"
  return P(*spec)


def path_name(path: Sequence[Any]) -> str:
  """``blocks/query/kernel`` from a ``jax.tree_util`` key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def param_shardings(params: Any, mesh: Mesh) -> Any:
  """`param_spec` of every leaf of ``params`` (arrays or shapes), as ``NamedSharding``."""
  return jax.tree_util.tree_map_with_path(
    lambda path, x: NamedSharding(mesh, param_spec(path_name(path), jnp.shape(x), mesh)), params
  )


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Batches: the leading (batch) axis over ``"data"``; a leading axis of eval batches unsplit."""
  return NamedSharding(mesh, P(*([None] * (ndim - 2)), "data", None))


def to_global(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """One process's rows of a batch as the global array (``jax.make_array_from_process_local_data``).

  Args:
    local: this process's rows (on one process: the whole batch).
    sharding: the batch's sharding; the batch axis is the one over ``"data"``.

  Returns:
    The global ``jax.Array``.
  """
  axis = list(sharding.spec).index("data")
  shape = list(local.shape)
  shape[axis] *= jax.process_count()
  return jax.make_array_from_process_local_data(sharding, local, tuple(shape))


# ----------------------------------------------------------------------------------- training


def lr_schedule(config: GPTConfig) -> optax.Schedule:
  """Linear warmup, then cosine decay to a tenth of the peak."""
  return optax.warmup_cosine_decay_schedule(
    0.0, config.learning_rate, config.warmup, config.steps, config.learning_rate / 10
  )


def _decay_mask(params: Any) -> Any:
  return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def optimizer(config: GPTConfig) -> optax.GradientTransformation:
  """The dense run's optimizer: global-norm clipping and AdamW (no decay on vectors)."""
  return optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.adamw(lr_schedule(config), b2=0.95, weight_decay=config.weight_decay, mask=_decay_mask),
  )


def pruner(config: GPTConfig, distribution: str = "global") -> optax.GradientTransformation:
  """Gradual magnitude pruning of the kernels to ``config.sparsity`` (Zhu & Gupta's cubic ramp).

  Args:
    config: the run configuration (sparsity and schedule).
    distribution: ``"global"`` (one threshold over all kernels), or ``"uniform"`` / ``"erk"``
      over the layers of the stacked leaves (`jaxprune.allocation.stacked`).

  Returns:
    The pruning transformation, with packed masks.
  """
  schedule = jaxprune.schedules.polynomial(
    begin_step=config.begin_step, end_step=config.end_step, frequency=config.frequency
  )
  dist: Any = distribution
  if distribution != "global":
    dist = jaxprune.allocation.stacked(distribution, axes={"blocks/.*": 0})
  return jaxprune.magnitude_pruning(
    config.sparsity, distribution=dist, schedule=schedule, packed_masks=True
  )


def head_groups(model: GPT, params: Any, example: jax.Array) -> list[structured.ChannelGroup]:
  """The attention-head groups of ``model`` read off its jaxpr.

  Args:
    model: the model.
    params: its params.
    example: an example batch of ids ``[batch, seq_len + 1]``.

  Returns:
    The channel groups of size ``heads`` that contain the query kernel's head axis.
  """
  fn = lambda p, tokens: model.apply({"params": p}, tokens)
  with warnings.catch_warnings():
    # The embedding lookup (a gather) feeds the residual stream, which no group may cut anyway (it
    # reaches the logits and every LayerNorm): the warning that it is not modelled is expected.
    warnings.filterwarnings("ignore", message=".*'gather' is not modelled")
    groups = structured.dependency_groups(fn, params, example[:, :-1])
  heads = model.config.heads
  query = "blocks/query/kernel"
  return [
    g
    for g in groups
    if g.size == heads and any(m.path == query and m.axis in (2, -2) for m in g.members)
  ]


def make_step(model: GPT, tx: optax.GradientTransformation, shardings: Any = None) -> Any:
  """The jitted training step ``(params, opt_state, batch) -> (params, opt_state, loss)``.

  Args:
    model: the model.
    tx: the optimizer.
    shardings: ``(params, opt_state, batch)`` shardings, kept by the outputs; ``None`` for one
      device.

  Returns:
    The step, jitted with the params and the state donated.
  """

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, batch))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  if shardings is None:
    return jax.jit(step, donate_argnums=(0, 1))
  params_sh, state_sh, batch_sh = shardings
  scalar = NamedSharding(batch_sh.mesh, P())
  return jax.jit(
    step,
    in_shardings=(params_sh, state_sh, batch_sh),
    out_shardings=(params_sh, state_sh, scalar),
    donate_argnums=(0, 1),
  )


def make_eval(model: GPT, mesh: Mesh) -> Any:
  """The jitted validation loss of ``[batches, batch, seq_len + 1]`` ids, one batch at a time."""

  def evaluate(params, batches):
    return jnp.mean(jax.lax.map(lambda b: loss_fn(model, params, b), batches))

  return jax.jit(evaluate, out_shardings=NamedSharding(mesh, P()))


def make_init(model: GPT, config: GPTConfig, mesh: Mesh) -> Any:
  """``key -> params``, jitted to create each leaf directly with its sharding (no full copy on one
  device)."""
  tokens = jnp.zeros((1, config.seq_len), jnp.int32)
  init = lambda key: model.init(key, tokens)["params"]
  shapes = jax.eval_shape(init, jax.random.key(0))
  return jax.jit(init, out_shardings=param_shardings(shapes, mesh))


def init_state(tx: optax.GradientTransformation, params: Any, mesh: Mesh) -> tuple[Any, Any]:
  """``tx.init(params)`` on the mesh, and its shardings.

  ``tx.init`` runs eagerly: each array made from a param (moments, masks, packed bits) then keeps
  the param's sharding. Under a ``jax.jit`` without ``out_shardings`` these leaves, whose values do
  not depend on the params, would come out on one device. Step counters are replicated over the
  mesh (`jaxprune.sharding.abstract`).
  """
  state = tx.init(params)
  shardings = jax.tree.map(lambda s: s.sharding, jaxprune.sharding.abstract(state, mesh))
  return jax.device_put(state, shardings), shardings


def kernels(params: Any) -> dict[str, Any]:
  """The leaves that `jaxprune.magnitude_pruning` prunes by default (the kernels), by path."""
  named = jaxprune.leaves.named_leaves(params)
  flags = jaxprune.leaves.default_selection(params)
  return {name: leaf for (name, leaf), flag in zip(named, flags) if flag}


def param_count(params: Any) -> int:
  """The number of entries of ``params``."""
  return sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(params))


@dataclasses.dataclass
class Run:
  """One model being trained: its optimizer, jitted step, params, state, step times and history."""

  name: str
  tx: optax.GradientTransformation
  step: Any
  params: Any
  state: Any
  times: list[float] = dataclasses.field(default_factory=list)
  history: list[dict[str, float]] = dataclasses.field(default_factory=list)


def _ramp(config: GPTConfig) -> jaxprune.schedules.Schedule:
  return jaxprune.schedules.polynomial(
    begin_step=config.begin_step, end_step=config.end_step, frequency=config.frequency
  )


def layer_head_pruner(
  config: GPTConfig, groups: Sequence[structured.ChannelGroup]
) -> optax.GradientTransformation:
  """Attention heads pruned layer by layer: ``config.head_sparsity`` of the heads of every layer.

  The head groups read off the jaxpr span the stacked ``[layers, ...]`` leaves; under a stacked
  distribution (`jaxprune.allocation.stacked`) each group is split into one unit per layer, so each
  layer removes its own weakest heads (by the mean magnitude of a head's query, key, value and
  output weights), not head ``h`` of every layer at once. The masks stay masks: layers that keep
  different heads cannot be sliced into one smaller stack.

  Args:
    config: the run configuration (head sparsity and schedule).
    groups: the head groups (`head_groups`).

  Returns:
    The pruning transformation.
  """
  return jaxprune.magnitude_pruning(
    config.head_sparsity,
    groups=groups,
    prune=[],
    distribution=jaxprune.allocation.stacked("uniform", axes={"blocks/.*": 0}),
    schedule=_ramp(config),
  )


def optimizers(
  config: GPTConfig,
  methods: Sequence[str],
  distribution: str = "global",
  groups: Sequence[structured.ChannelGroup] = (),
) -> dict[str, optax.GradientTransformation]:
  """The optimizer of each method: ``"dense"``, ``"pruned"`` (`pruner`), ``"heads"`` (heads
  removed from all layers at once, `jaxprune.structured_pruning`) and ``"layer_heads"``
  (`layer_head_pruner`).

  Args:
    config: the configuration.
    methods: the methods to build.
    distribution: the pruned run's distribution.
    groups: for ``"heads"`` and ``"layer_heads"``, the head groups (`head_groups`).

  Returns:
    ``{method: optimizer}``.
  """
  txs = {}
  for method in methods:
    if method == "dense":
      txs[method] = optimizer(config)
    elif method == "pruned":
      txs[method] = optax.chain(optimizer(config), pruner(config, distribution))
    elif method == "heads":
      txs[method] = optax.chain(
        optimizer(config),
        jaxprune.structured_pruning(config.head_sparsity, groups=groups, schedule=_ramp(config)),
      )
    elif method == "layer_heads":
      txs[method] = optax.chain(optimizer(config), layer_head_pruner(config, groups))
    else:
      raise ValueError(
        f"gpt: unknown method {method!r}; expected dense, pruned, heads or layer_heads."
      )
  return txs


def train(
  config: GPTConfig,
  *,
  methods: Sequence[str] = ("dense", "pruned"),
  devices: Sequence[Any] | None = None,
  model_axis: int | None = None,
  distribution: str = "global",
  progress: bool = True,
  root: Path = ROOT,
) -> dict[str, Any]:
  """Trains one model per method side by side, step by step on the same batches.

  Args:
    config: the configuration.
    methods: ``"dense"``, ``"pruned"`` (magnitude pruning), ``"heads"`` and/or ``"layer_heads"``
      (attention heads, from all layers at once or layer by layer).
    devices: the devices of the mesh (of all processes); default ``jax.devices()``.
    model_axis: the size of the ``"model"`` axis; default 2 when the device count is even, else 1.
    distribution: the pruned run's distribution (see `pruner`).
    progress: show a tqdm bar.
    root: the repository root (the corpus).

  Returns:
    A dict: ``mesh``, ``model``, ``data``, ``init`` (`make_init`), ``runs`` (method -> `Run`, with
    the final params and state), ``val`` (the validation batches), ``batches`` (`training_batches`) and ``metrics`` (what
    `report` prints and saves).

  Raises:
    ValueError: for a batch that does not split over the data shards and processes.
  """
  from tqdm import tqdm

  devices = list(jax.devices() if devices is None else devices)
  if model_axis is None:
    model_axis = 2 if len(devices) % 2 == 0 else 1
  mesh = make_mesh(devices, model_axis)
  if config.batch_size % mesh.shape["data"] or config.batch_size % jax.process_count():
    raise ValueError(
      f"gpt: batch_size {config.batch_size} must divide over {mesh.shape['data']} data shards and "
      f"{jax.process_count()} processes."
    )
  data = load_data(root)
  model = GPT(model_config(config, data.vocab_size))
  rows = process_rows(config.batch_size)
  val_rng = np.random.default_rng([config.seed, 1])
  val_local = np.stack(
    [
      data.windows("val", config.batch_size, config.seq_len, val_rng, rows)
      for _ in range(config.eval_batches)
    ]
  )
  val = to_global(val_local, batch_sharding(mesh, 3))
  batches = training_batches(config, data)

  init = make_init(model, config, mesh)
  key = jax.random.key(config.seed)
  groups = []
  if "heads" in methods or "layer_heads" in methods:
    groups = head_groups(model, init(key), jnp.asarray(next(batches())))
    if not groups:
      raise ValueError("gpt: no attention-head group found in the model's jaxpr.")
  runs = {}
  for name, tx in optimizers(config, methods, distribution, groups).items():
    params = init(key)  # the same values for every run, in buffers of its own
    state, state_shardings = init_state(tx, params, mesh)
    shardings = (param_shardings(params, mesh), state_shardings, batch_sharding(mesh))
    runs[name] = Run(name, tx, make_step(model, tx, shardings), params, state)
  evaluate = make_eval(model, mesh)

  def record(step: int, losses: dict[str, float]) -> None:
    for run in runs.values():
      entry = {"step": step, "val_loss": float(evaluate(run.params, val))}
      if run.name in losses:
        entry["train_loss"] = losses[run.name]
      run.history.append(entry)

  record(0, {})
  bar = tqdm(range(1, config.steps + 1), desc="gpt", disable=not progress, mininterval=1.0)
  stream = batches()
  for step in bar:
    batch = to_global(next(stream), batch_sharding(mesh))
    losses = {}
    for run in runs.values():
      start = time.perf_counter()
      run.params, run.state, loss = run.step(run.params, run.state, batch)
      jax.block_until_ready((run.params, run.state, loss))
      run.times.append(time.perf_counter() - start)
      losses[run.name] = float(loss)
    bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
    if step % config.eval_every == 0 or step == config.steps:
      record(step, losses)
  bar.close()
  return {
    "mesh": mesh,
    "model": model,
    "data": data,
    "init": init,
    "runs": runs,
    "val": val,
    "batches": batches,
    "metrics": metrics(config, mesh, runs, distribution),
  }


def process_rows(batch_size: int) -> slice:
  """This process's rows of a global batch (all of them on one process)."""
  local = batch_size // jax.process_count()
  return slice(jax.process_index() * local, (jax.process_index() + 1) * local)


def training_batches(config: GPTConfig, data: CharData) -> Callable[[], Iterator[np.ndarray]]:
  """A function returning a fresh iterator of this process's training batches, the same sequence on
  every call: each global batch's windows are drawn with a generator seeded with ``seed`` (on every
  process alike) and each process keeps its rows, so the batches, and the training, do not depend
  on the number of processes."""
  rows = process_rows(config.batch_size)

  def batches() -> Iterator[np.ndarray]:
    rng = np.random.default_rng([config.seed, 0])
    while True:
      yield data.windows("train", config.batch_size, config.seq_len, rng, rows)

  return batches


def metrics(config: GPTConfig, mesh: Mesh, runs: dict[str, Run], distribution: str) -> dict:
  """The numbers of the final table, as a JSON-ready dict (``runs``: one entry per method).

  Sparsities count exact zeros in the params of the kernels (`kernels`), whatever pruned them.
  ``step_time_s`` is the median over the steps after the first two (which compile).
  """
  out: dict[str, Any] = {
    "config": dataclasses.asdict(config),
    "distribution": distribution,
    "mesh": dict(mesh.shape),
    "process_count": jax.process_count(),
    "platform": mesh.devices.flat[0].platform,
    "runs": {},
  }
  times = {name: float(np.median(run.times[2:] or run.times)) for name, run in runs.items()}
  for name, run in runs.items():
    summary = jaxprune.sparsity_summary(kernels(run.params))
    warm = run.times[2:] or run.times
    val_loss = run.history[-1]["val_loss"]
    params = param_count(run.params)
    entry = {
      "val_loss": val_loss,
      "val_perplexity": math.exp(val_loss),
      "train_loss": run.history[-1].get("train_loss"),
      "kernel_sparsity": summary.sparsity,
      "kernel_size": summary.size,
      "kernel_zeros": summary.zeros,
      "params": params,
      "nonzero_params": params - jaxprune.sparsity_summary(run.params).zeros,
      "step_time_s": times[name],
      "mean_step_time_s": float(np.mean(warm)),
      "first_step_time_s": run.times[0],
      "total_time_s": float(np.sum(run.times)),
      "step_time_ratio": times[name] / times["dense"] if "dense" in times else None,
      "history": run.history,
    }
    if name != "dense":
      entry["mask_sparsity"] = jaxprune.sparsity_summary(jaxprune.get_masks(run.state)).sparsity
    out["runs"][name] = entry
  return out


def table(metrics: dict) -> str:
  """The final table (markdown) of `metrics`."""
  lines = [
    "| run | val loss | val ppl | kernel sparsity | nonzero / params | step ms (median) | / dense |",
    "|---|---|---|---|---|---|---|",
  ]
  for name, m in metrics["runs"].items():
    lines.append(
      f"| {name} | {m['val_loss']:.4f} | {m['val_perplexity']:.2f} | {m['kernel_sparsity']:.4f} "
      f"| {m['nonzero_params']:,} / {m['params']:,} | {1000 * m['step_time_s']:.1f} "
      f"| {'-' if m['step_time_ratio'] is None else format(m['step_time_ratio'], '.2f')} |"
    )
  return "\n".join(lines)


def report(result: dict[str, Any], out: Path) -> Path:
  """Prints the table and writes ``results.json`` and ``val_loss.png`` into ``out`` (process 0).

  Args:
    result: what `train` returns.
    out: the output folder.

  Returns:
    The path of ``results.json``.
  """
  m = result["metrics"]
  path = out / "results.json"
  if jax.process_index() != 0:
    return path
  mesh = "x".join(f"{k}={v}" for k, v in m["mesh"].items())
  print(f"GPT on a {mesh} mesh, {m['distribution']} magnitude pruning (exact zeros counted):")
  print(table(m))
  out.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(m, indent=2) + "\n")

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, run in m["runs"].items():
    steps = [h["step"] for h in run["history"]]
    ax.plot(steps, [h["val_loss"] for h in run["history"]], marker=".", label=name)
  cfg = m["config"]
  ax.axvspan(cfg["begin_step"], cfg["end_step"], color="0.9", label="pruning ramp")
  ax.set_xlabel("step")
  ax.set_ylabel("validation loss (nats/char)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(out / "val_loss.png", dpi=120)
  plt.close(fig)
  return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """The command line: ``python -m experiments.gpt --help``."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", choices=sorted(CONFIGS), default="small")
  p.add_argument("--devices", type=int, default=None, help="use the first N devices (default all)")
  p.add_argument("--model_axis", type=int, default=None, help='size of the "model" mesh axis')
  p.add_argument("--out", type=Path, default=DEFAULT_OUT)
  p.add_argument("--steps", type=int, default=None, help="override the config's step count")
  p.add_argument("--distribution", choices=("global", "uniform", "erk"), default="global")
  p.add_argument(
    "--heads",
    action="store_true",
    help="also train two attention-head-pruned models (heads removed from all layers at once, and layer by layer)",
  )
  p.add_argument("--seed", type=int, default=None)
  p.add_argument("--no_progress", action="store_true")
  p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize()")
  p.add_argument("--coordinator", default=None, help="with --distributed: HOST:PORT")
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  args = p.parse_args(argv)
  if args.distributed:
    jax.distributed.initialize(
      coordinator_address=args.coordinator,
      num_processes=args.num_processes,
      process_id=args.process_id,
    )
  config = CONFIGS[args.config]
  if args.steps is not None:
    config = dataclasses.replace(
      config,
      steps=args.steps,
      eval_every=min(config.eval_every, args.steps),
    )
  if args.seed is not None:
    config = dataclasses.replace(config, seed=args.seed)
  devices = jax.devices()
  if args.devices is not None:
    if args.devices > len(devices):
      raise SystemExit(
        f"gpt: {args.devices} devices asked for, {len(devices)} available (on a CPU, set "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={args.devices})."
      )
    devices = devices[: args.devices]
  result = train(
    config,
    methods=("dense", "pruned", "heads", "layer_heads") if args.heads else ("dense", "pruned"),
    devices=devices,
    model_axis=args.model_axis,
    distribution=args.distribution,
    progress=not args.no_progress and jax.process_index() == 0,
  )
  report(result, args.out)
  return result


if __name__ == "__main__":
  main()
