"""Training batches streamed from a ``tfds.data_source`` by grain, for data that does not fit in memory.

The in-memory path (`experiments.data.load_dataset` and `data.batch_indices`) decodes whole
splits once and gathers batches on the device: the fast default for MNIST. This module reads the
same records lazily instead. A `grain.MapDataset` maps global batch number ``b`` to the example
indices `data.batch_indices` gives that batch (epoch ``b // per_epoch`` shuffled with
``data.epoch_rng(seed, epoch)``, the last partial batch of every epoch dropped), reads and decodes
only those records, and normalises them as `data.normalize` does. So:

* the batches are exactly those of the in-memory path with the same seed (a run can switch paths);
* the pipeline is deterministic and restarts from a data position ``(epoch, index)`` or from its
  iterator's state (`grain.DatasetIterator.get_state`), which a run checkpoints with its step;
* with several processes, each reads only its own rows of every global batch (process ``p`` of
  ``P`` reads rows ``p * B/P`` to ``(p + 1) * B/P``), the layout `jax.make_array_from_process_local_data`
  expects for a batch sharded over the processes.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from experiments import data as data_lib

__all__ = ["TrainStream", "train_stream"]


class _Batches:
  """Random access to the process's rows of every global training batch (a grain map source)."""

  def __init__(self, source, keys, shape, num_batches, batch_size, seed, mean, std, shard):
    self.source, self.keys, self.shape = source, keys, shape
    self.num_batches, self.batch_size, self.seed = num_batches, batch_size, seed
    self.mean, self.std = mean, std
    self.per_epoch = data_lib.batches_per_epoch(len(source), batch_size)
    index, count = shard
    rows = batch_size // count
    self.rows = slice(index * rows, (index + 1) * rows)
    self._orders: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return self.num_batches

  def _order(self, epoch: int) -> np.ndarray:
    # One permutation per epoch, kept while its batches are read (threads read neighbours).
    order = self._orders.get(epoch)
    if order is None:
      order = data_lib.epoch_rng(self.seed, epoch).permutation(len(self.source))
      self._orders = {**{e: o for e, o in self._orders.items() if e >= epoch - 1}, epoch: order}
    return order

  def indices(self, batch: int) -> np.ndarray:
    epoch, index = divmod(int(batch), self.per_epoch)
    start = index * self.batch_size
    return self._order(epoch)[start : start + self.batch_size][self.rows]

  def __getitem__(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = data_lib.read_records(self.source, self.keys, self.shape, self.indices(batch))
    return data_lib.normalize(images, self.mean, self.std), labels


class TrainStream:
  """An iterator over training batches ``(images, labels)`` read by grain; see `train_stream`.

  Attributes:
    batches_per_epoch: full global batches in one epoch.
  """

  def __init__(self, batches: _Batches, start: int, threads: int, prefetch: int):
    import grain

    self._batches = batches
    self._start = int(start)
    self.batches_per_epoch = batches.per_epoch
    dataset = grain.MapDataset.source(batches)[self._start :]
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
    self._iterator = iter(dataset.to_iter_dataset(options))

  def __iter__(self) -> "TrainStream":
    return self

  def __next__(self) -> tuple[np.ndarray, np.ndarray]:
    return next(self._iterator)

  def get_state(self) -> dict:
    """The iterator's state (JSON-serialisable): `set_state` resumes from it."""
    return {"start": self._start, "grain": self._iterator.get_state()}

  def set_state(self, state: dict) -> None:
    """Resumes from a state returned by `get_state` of a stream built with the same arguments.

    Raises:
      ValueError: if the state comes from a stream that started at another batch.
    """
    if int(state["start"]) != self._start:
      raise ValueError(
        f"the state was saved by a stream starting at batch {state['start']}, this one starts at "
        f"batch {self._start}"
      )
    self._iterator.set_state(state["grain"])

  def position(self, consumed: int) -> tuple[int, int]:
    """The data position ``(epoch, index)`` after ``consumed`` batches of this stream."""
    return divmod(self._start + int(consumed), self.batches_per_epoch)

  def close(self) -> None:
    """Stops the reading threads (the stream yields nothing after)."""
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()


def train_stream(
  name: str = "mnist",
  *,
  batch_size: int,
  seed: int,
  position: tuple[int, int] = (0, 0),
  epochs: int = 1_000_000,
  data_dir: Optional[os.PathLike | str] = None,
  split: str = "train",
  mean: Optional[Sequence[float]] = None,
  std: Optional[Sequence[float]] = None,
  process_index: Optional[int] = None,
  process_count: Optional[int] = None,
  threads: int = 8,
  prefetch: int = 16,
) -> TrainStream:
  """Shuffled training batches of a TFDS split, read lazily by grain from ``tfds.data_source``.

  Args:
    name: the TFDS dataset (prepared in ArrayRecord format, see `experiments.data`).
    batch_size: examples per global batch (all processes together).
    seed: the run's seed: the order is that of `data.batch_indices` with this seed.
    position: ``(epoch, index)`` of the first batch, see `data.data_position`.
    epochs: how many epochs the stream spans (it ends after them).
    data_dir: where the dataset is prepared (resolved as in `experiments.data`).
    split: the TFDS split.
    mean: per-channel means of the normalisation (default: `data.NORMALIZATION` of the dataset).
    std: per-channel standard deviations (default as ``mean``).
    process_index: this process's index (default ``jax.process_index()``).
    process_count: number of processes (default ``jax.process_count()``).
    threads: grain's reading threads.
    prefetch: batches read ahead.

  Returns:
    A `TrainStream` yielding float32 images ``(batch_size / process_count, H, W, C)`` and int32
    labels: this process's rows of each global batch.

  Raises:
    ValueError: if the batch does not split evenly among the processes, if ``position`` is
      outside an epoch, or if the dataset has no known normalisation and none is given.
    FileNotFoundError: if the dataset is not prepared in the data directory.
  """
  import jax

  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} does not split among {process_count} processes")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  data_dir = data_lib.resolve_data_dir(data_dir)
  builder = data_lib._builder(name, data_dir)
  keys = data_lib._feature_keys(builder)
  shape = tuple(builder.info.features[keys[0]].shape)
  base = name.split(":")[0]
  if mean is None or std is None:
    if base not in data_lib.NORMALIZATION:
      raise ValueError(f"{name}: no known normalisation; pass mean= and std=")
    mean, std = data_lib.NORMALIZATION[base]
  source = data_lib.open_source(name, split, data_dir, keys[0])
  per_epoch = data_lib.batches_per_epoch(len(source), batch_size)
  epoch, index = (int(p) for p in position)
  if epoch < 0 or not 0 <= index < per_epoch:
    raise ValueError(f"position {position} is outside an epoch of {per_epoch} batches")
  batches = _Batches(
    source,
    keys,
    shape,
    int(epochs) * per_epoch,
    batch_size,
    seed,
    tuple(mean),
    tuple(std),
    (process_index, process_count),
  )
  return TrainStream(batches, epoch * per_epoch + index, threads, prefetch)
