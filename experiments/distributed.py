"""Data-parallel training of the sweep over every device, of one process or of several hosts.

With ``config.data_parallel = True``, or whenever the program runs in several processes (started
with ``python -m experiments --distributed`` on every host, see `initialize`), the sweep trains
data-parallel on a one-axis mesh ``("data",)`` over ``jax.devices()`` (the devices of all
processes):

* every run's state (params, optimizer state with the masks, RNG key, metric sums) is replicated
  on every device; the pruners' selections run on the replicated params, so every device computes
  the same masks;
* every training batch is split over the devices along its batch axis (each device computes the
  gradient of its rows, XLA all-reduces them), whether it is gathered on the device from the
  training split (``data_pipeline="memory"``: the split is replicated) or streamed by grain
  (``data_pipeline="grain"``: each process reads only its own rows of every batch,
  `experiments.pipeline`, and `global_batch` assembles the global array);
* the evaluation data are replicated, and what the evaluations report is read from replicated
  results, so every process logs the same numbers; only process 0 (`is_main`) writes files and
  prints, while all processes take part in the orbax checkpoints (each writes its shards; on
  several hosts ``output_dir`` must be a filesystem they share, e.g. a bucket or NFS).

The runs compute what they compute on one device up to the order of the floating-point sums of
the gradient (tests/test_experiments.py compares two processes of 4 devices with one device).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["DataParallel", "barrier", "data_parallel", "initialize", "is_main", "requested"]

AXIS = "data"


def initialize(
  coordinator: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
) -> None:
  """Joins the processes of a multi-host run (``jax.distributed.initialize``).

  On TPU pods and SLURM clusters the arguments are detected; elsewhere every process passes the
  coordinator's ``HOST:PORT``, the number of processes and its own index. On CPUs the processes
  exchange their collectives over gloo. Nothing happens when the processes are already joined.

  Args:
      coordinator: ``HOST:PORT`` of process 0.
      num_processes: the number of processes.
      process_id: this process's index.
  """
  if jax.distributed.is_initialized():  # (a second sweep in the same processes)
    return
  # CPU devices exchange their collectives over gloo (accelerators use their own).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
  )


def is_main() -> bool:
  """True in process 0, the one that writes the experiment's files and prints its log."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier ``name`` (nothing to wait for on one process).

  Args:
      name: the barrier's name, the same in every process.
  """
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class DataParallel(NamedTuple):
  """Where the sweep's arrays live when it trains data-parallel (see the module docstring)."""

  mesh: Mesh

  @property
  def replicated(self) -> NamedSharding:
    """The sharding of a state: a full copy on every device."""
    return NamedSharding(self.mesh, P())

  def batch(self, ndim: int, axis: int) -> NamedSharding:
    """The sharding of an array of rank ``ndim`` split over the devices along ``axis``."""
    return NamedSharding(self.mesh, P(*(AXIS if i == axis else None for i in range(ndim))))

  def replicate(self, tree: Any) -> Any:
    """``tree`` (host or single-device arrays, equal in every process) copied onto every device.

    Args:
        tree: a pytree of arrays; typed PRNG keys keep their implementation.

    Returns:
        The same tree of replicated global arrays.
    """

    def put(x):
      if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = put(jax.random.key_data(x))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
      if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, self.replicated)  # already global (e.g. restored)
      return jax.device_put(np.asarray(x), self.replicated)

    return jax.tree.map(put, tree)

  def global_batch(self, local: np.ndarray, axis: int) -> jax.Array:
    """The global array of a batch whose rows along ``axis`` are split among the processes.

    Args:
        local: this process's rows (process ``p`` of ``P`` holds rows ``p * B/P`` onwards, the
            layout `experiments.pipeline.train_stream` reads; on one process, all of them).
        axis: the batch axis.

    Returns:
        The global array, split over the devices along ``axis``.
    """
    shape = list(local.shape)
    shape[axis] *= jax.process_count()
    return jax.make_array_from_process_local_data(self.batch(local.ndim, axis), local, tuple(shape))

  def constrain_batch(self, x: jax.Array, axis: int = 0) -> jax.Array:
    """Inside a traced function: ``x`` split over the devices along ``axis``."""
    return jax.lax.with_sharding_constraint(x, self.batch(x.ndim, axis))

  def constrain_replicated(self, tree: Any) -> Any:
    """Inside a traced function: every leaf of ``tree`` replicated."""
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, self.replicated), tree)


def requested(config: ml_collections.ConfigDict) -> bool:
  """Whether a config's runs train data-parallel: ``config.data_parallel``, or several processes."""
  return bool(config.get("data_parallel", False)) or jax.process_count() > 1


def data_parallel(config: ml_collections.ConfigDict) -> Optional[DataParallel]:
  """The data-parallel placement of a config's runs, or None to train on the default device.

  Args:
      config: the config (``data_parallel``, ``batch_size``).

  Returns:
      A `DataParallel` over ``jax.devices()`` when ``config.data_parallel`` is true or several
      processes run (a multi-process run is always data-parallel), else None.

  Raises:
      ValueError: if ``batch_size`` does not split evenly over the devices.
  """
  if not requested(config):
    return None
  devices = jax.devices()
  batch_size = int(config.batch_size)
  if batch_size % len(devices):
    raise ValueError(
      f"data_parallel: batch_size {batch_size} does not split over the {len(devices)} devices "
      f"of {jax.process_count()} process(es); use a multiple of {len(devices)}"
    )
  mesh = Mesh(np.asarray(devices), (AXIS,), axis_types=(AxisType.Auto,))
  return DataParallel(mesh)
