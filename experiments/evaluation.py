"""Evaluating a run: test accuracy and loss, sparsity, compression ratio, speedup.

The test split is evaluated in one compiled call (``lax.map`` over fixed-size batches, the
last one padded and masked). The sparsity of the parameters is measured on the host with
``jaxprune.sparsity_summary``; the ShrinkBench compression ratio and theoretical speedup
come from `jaxprune.flops`, the speedup scaling each layer's multiply-adds (counted
once per model from its jaxpr, see `model_macs`) by the density of its weight.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune
from experiments import data as data_lib
from jaxprune import flops


@dataclasses.dataclass
class TestData:
  """A split on the device, padded to whole batches.

  Attributes:
      images: ``(num_batches * batch_size, ...)`` float32.
      labels: ``(num_batches * batch_size,)`` int32.
      valid: ``(num_batches * batch_size,)`` bool, False on the padding.
      size: the number of real examples.
      batch_size: examples per evaluation batch.
  """

  images: jax.Array
  labels: jax.Array
  valid: jax.Array
  size: int
  batch_size: int


def prepare_test_data(split: data_lib.Split, batch_size: int) -> TestData:
  """Puts a split on the device, padded to a multiple of the batch size.

  Args:
      split: the split (e.g. ``dataset.test``).
      batch_size: examples per evaluation batch (capped at the split's size).

  Returns:
      The padded split.
  """
  n = len(split)
  batch_size = max(1, min(int(batch_size), n))
  pad = -n % batch_size
  images, labels = split.images, split.labels
  valid = np.ones(n, bool)
  if pad:
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    valid = np.concatenate([valid, np.zeros(pad, bool)])
  return TestData(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(valid), n, batch_size)


def make_eval_fn(model: nn.Module, batch_size: int, placement: Any = None) -> Callable:
  """The (unjitted) evaluation of a whole padded split.

  Args:
      model: the Flax model.
      batch_size: the split's evaluation batch size (`TestData.batch_size`).
      placement: an `experiments.distributed.DataParallel`: every evaluation batch is split
          over its devices when its size allows (else each device evaluates it whole).

  Returns:
      ``evaluate(params, model_state, images, labels, valid) -> (correct, loss_sum)``:
      the number of correctly classified examples and the summed cross-entropy.
  """

  def evaluate(params, model_state, images, labels, valid):
    num_batches = images.shape[0] // batch_size
    batches = (
      images.reshape(num_batches, batch_size, *images.shape[1:]),
      labels.reshape(num_batches, batch_size),
      valid.reshape(num_batches, batch_size),
    )

    def one(batch):
      x, y, v = batch
      if placement is not None and batch_size % placement.mesh.size == 0:
        x, y, v = (placement.constrain_batch(a) for a in (x, y, v))
      logits = model.apply({"params": params, **model_state}, x, train=False)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      correct = (jnp.argmax(logits, -1) == y) & v
      return jnp.sum(correct), jnp.sum(jnp.where(v, loss, 0.0))

    correct, loss = jax.lax.map(one, batches)
    return jnp.sum(correct), jnp.sum(loss)

  return evaluate


def model_macs(model: nn.Module, variables: Any, image_shape: tuple) -> dict[str, Any]:
  """Multiply-adds of one example through ``model`` (`jaxprune.flops.count_macs`).

  Args:
      model: the Flax model.
      variables: its variables (arrays or ``jax.ShapeDtypeStruct``s) with ``params``.
      image_shape: the shape of one input, ``(H, W, C)``.

  Returns:
      The `count_macs` result for a batch of one, MACs attributed to the params leaves.
  """
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}
  example = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  return flops.count_macs(
    lambda p, x: model.apply({"params": p, **rest}, x, train=False), params, example
  )


def measure(params: Any, mac_counts: dict[str, Any]) -> dict[str, Any]:
  """Sparsity, compression ratio and theoretical speedup of a run's parameters.

  Args:
      params: the run's parameters.
      mac_counts: `model_macs` of its model.

  Returns:
      A dict with ``sparsity`` (all leaves), ``kernel_sparsity`` (floating-point leaves
      with ``ndim >= 2``), ``zeros``, ``size``, ``leaves`` (sparsity per leaf),
      ``compression_ratio`` and ``theoretical_speedup``.
  """
  params = jax.device_get(params)
  summary = jaxprune.sparsity_summary(params)
  kernels = [
    x
    for x in jax.tree.leaves(params)
    if np.issubdtype(np.asarray(x).dtype, np.floating) and np.ndim(x) >= 2
  ]
  kernel = jaxprune.sparsity_summary(kernels).sparsity if kernels else 0.0
  return {
    "sparsity": float(summary.sparsity),
    "kernel_sparsity": float(kernel),
    "zeros": int(summary.zeros),
    "size": int(summary.size),
    "leaves": {str(k): float(v.sparsity) for k, v in summary.leaves.items()},
    "compression_ratio": float(flops.compression_ratio(summary)),
    "theoretical_speedup": float(flops.theoretical_speedup(mac_counts, summary)),
  }


def dead_neuron_probe(model: nn.Module, images: Any) -> Callable[[Any], Any]:
  """``params -> jaxprune.analysis.DeadNeuronRate`` of the hidden layers on fixed ``images``.

  The hidden layers are every ``Dense`` and ``Conv`` layer but the last one called; their outputs
  are the pre-activations of the ReLUs that follow them in the models without batch norm (the
  LeNets, the MLPs, Conv-2/4/6), which is what `jaxprune.analysis.dead_neuron_rate` reads.

  Args:
      model: a Flax model without batch norm.
      images: the images, ``[n, ...]``.

  Returns:
      The probe: one run's params in, the rate (Python numbers) out.
  """
  x = jnp.asarray(images)

  @jax.jit
  def pre_activations(params):
    outputs = []

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, (nn.Dense, nn.Conv)) and context.method_name == "__call__":
        outputs.append(("/".join(context.module.path), out))
      return out

    with nn.intercept_methods(record):
      model.apply({"params": params}, x, train=False)
    return dict(outputs[:-1])

  return lambda params: jaxprune.analysis.dead_neuron_rate(pre_activations(params))
