"""Image classification data for the experiments: TFDS data sources cached as NumPy.

Datasets are read with ``tfds.data_source`` (random access over ArrayRecord files; no
TensorFlow needed). Decoding a record means decoding one PNG, which is slow (10-15 s for the
70,000 MNIST images), so each split is decoded once into ``uint8`` NumPy arrays
and cached as an ``.npz`` file keyed on dataset name, version and split. Later runs load
the cache in well under a second.

Preprocessing: images are converted to float32 in ``[0, 1]`` (division by 255) and then
standardised per channel, ``(x - mean) / std``. For MNIST the usual constants
``mean = 0.1307``, ``std = 0.3081`` are used (the statistics of the MNIST training set);
other well-known datasets have their own constants in :data:`NORMALIZATION`, and for any
other dataset the per-channel statistics are computed from its training split.

Where the data lives (``data_dir``) is resolved in this order:

1. the explicit ``data_dir`` argument (``--data_dir`` / ``--config.data_dir`` on the CLI);
2. the ``TFDS_DATA_DIR`` environment variable;
3. ``../shared/tensorflow_datasets`` next to the repository checkout, if that folder exists
   (this is where the prepared offline copy of MNIST lives for this project);
4. TFDS's own default (``~/tensorflow_datasets``).

The cache directory is the explicit ``cache_dir`` argument, else ``JAXPRUNE_CACHE_DIR``,
else ``~/.cache/jaxprune``.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "tensorflow_datasets"
DEFAULT_CACHE_DIR = Path("~/.cache/jaxprune")

# Per-channel (mean, std) of the training split, for pixel values scaled to [0, 1].
NORMALIZATION = {
  "mnist": ((0.1307,), (0.3081,)),
  "fashion_mnist": ((0.2860,), (0.3530,)),
  "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
  "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_DECODE_CHUNK = 5000


@dataclasses.dataclass
class Split:
  """A split held in memory: ``images`` float32 (N, H, W, C), ``labels`` int32 (N,)."""

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def image_shape(self) -> tuple:
    """The shape ``(H, W, C)`` of one image."""
    return tuple(self.images.shape[1:])

  def take(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of the examples ``indices``."""
    return self.images[indices], self.labels[indices]


class SourceSplit:
  """A split left in its prepared files: its size and image shape, and random access to its
  normalised examples (`take`) without decoding the whole split.

  `load_dataset` returns the training split this way with ``lazy_train=True``, for runs that stream
  their batches with `experiments.pipeline` (``config.data_pipeline = "grain"``).

  Attributes:
    name: the TFDS dataset, as given to `load_dataset`.
    split: the TFDS split.
    data_dir: the resolved data directory.
    mean: per-channel means of the normalisation.
    std: per-channel standard deviations.
    image_shape: the shape ``(H, W, C)`` of one image.
  """

  def __init__(
    self,
    name: str,
    split: str,
    data_dir: Optional[str],
    mean: Sequence[float],
    std: Sequence[float],
  ):
    self.name, self.split, self.data_dir = name, split, data_dir
    self.mean, self.std = tuple(mean), tuple(std)
    builder = _builder(name, data_dir)
    self.keys = _feature_keys(builder)
    self.image_shape = tuple(builder.info.features[self.keys[0]].shape)
    if None in self.image_shape:
      raise ValueError(f"{name}: images of variable shape {self.image_shape} are not supported")
    self.source = open_source(name, split, data_dir, self.keys[0])
    self._size = len(self.source)

  def __len__(self) -> int:
    return self._size

  def take(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images (read, decoded and normalised as `load_dataset` does) and labels of the
    examples ``indices`` (a 1-D sequence of ints)."""
    images, labels = read_records(self.source, self.keys, self.image_shape, indices)
    return normalize(images, self.mean, self.std), labels


@dataclasses.dataclass
class Dataset:
  """Normalised train and test splits plus the metadata the runner needs (the training split
  is a `SourceSplit`, left on disk, when loaded with ``lazy_train=True``)."""

  name: str
  version: str
  train: Split | SourceSplit
  test: Split
  num_classes: int
  mean: tuple
  std: tuple

  @property
  def image_shape(self) -> tuple:
    return self.train.image_shape


# --------------------------------------------------------------------------- locations


def resolve_data_dir(data_dir: Optional[os.PathLike | str] = None) -> Optional[str]:
  """Returns the TFDS data directory to read from (see the module docstring).

  ``None`` means "TFDS's own default", which TFDS resolves itself.
  """
  if data_dir:
    return str(Path(data_dir).expanduser())
  env = os.environ.get("TFDS_DATA_DIR")
  if env:
    return str(Path(env).expanduser())
  if SHARED_DATA_DIR.is_dir():
    return str(SHARED_DATA_DIR)
  return None


def resolve_cache_dir(cache_dir: Optional[os.PathLike | str] = None) -> Path:
  if cache_dir:
    return Path(cache_dir).expanduser()
  env = os.environ.get("JAXPRUNE_CACHE_DIR")
  if env:
    return Path(env).expanduser()
  return DEFAULT_CACHE_DIR.expanduser()


def _tfds():
  # Imported lazily: tensorflow_datasets is slow-ish to import and noisy.
  import tensorflow_datasets as tfds

  return tfds


def _default_tfds_data_dir() -> str:
  try:
    return str(_tfds().core.constants.DATA_DIR)
  except AttributeError:  # pragma: no cover - very old/new tfds
    return str(Path("~/tensorflow_datasets").expanduser())


def _missing_dataset_message(name: str, looked_in: str, detail: str = "") -> str:
  base = name.split(":")[0]
  msg = (
    f"Dataset {name!r} is not prepared in {looked_in!r}"
    + (f" ({detail})" if detail else "")
    + ". Prepare it on a machine with internet access with\n"
    f"    tfds build {base} --data_dir <DIR> --file_format=array_record\n"
    "and copy <DIR> here, then pass it with --data_dir <DIR> (or "
    "--config.data_dir=<DIR>) or set the TFDS_DATA_DIR environment variable."
  )
  return msg


def _builder(name: str, data_dir: Optional[str]):
  """A TFDS builder for an already prepared dataset, or a clear FileNotFoundError."""
  tfds = _tfds()
  looked_in = data_dir or _default_tfds_data_dir()
  if data_dir is not None and not Path(data_dir).is_dir():
    raise FileNotFoundError(
      _missing_dataset_message(name, looked_in, "the directory does not exist")
    )
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # unknown dataset name, unreadable metadata, ...
    raise ValueError(
      f"Cannot open TFDS dataset {name!r} in {looked_in!r}: {str(e).splitlines()[0]}"
    ) from e
  if not builder.is_prepared():
    raise FileNotFoundError(
      _missing_dataset_message(name, looked_in, f"nothing at {builder.data_dir}")
    )
  return builder


def _feature_keys(builder) -> tuple[str, str]:
  keys = builder.info.supervised_keys
  if keys and len(keys) == 2 and all(isinstance(k, str) for k in keys):
    return keys
  return "image", "label"


# --------------------------------------------------------------------------- loading


def _decode_image(value, shape: tuple) -> np.ndarray:
  if isinstance(value, (bytes, bytearray)):
    from PIL import Image

    with Image.open(io.BytesIO(value)) as img:
      mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(shape[-1])
      if mode and img.mode != mode:  # e.g. palette PNGs
        img = img.convert(mode)
      value = np.asarray(img)
  return np.asarray(value, np.uint8).reshape(shape)


def open_source(name: str, split: str, data_dir: Optional[str], image_key: str) -> Any:
  """``tfds.data_source`` of a prepared split, its images left encoded (see `read_records`).

  Args:
    name: the TFDS dataset.
    split: the split.
    data_dir: the resolved data directory.
    image_key: the image feature, whose decoding is skipped.

  Returns:
    The random-access source.
  """
  tfds = _tfds()
  # Skip tfds' own image decoding and decode the PNG/JPEG bytes with Pillow directly:
  # the same pixels, about twice as fast.
  return tfds.data_source(
    name,
    split=split,
    data_dir=data_dir,
    download=False,
    decoders={image_key: tfds.decode.SkipDecoding()},
  )


def read_records(
  source: Any, keys: Sequence[str], shape: tuple, indices: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """The decoded ``uint8`` images and ``int32`` labels of the records ``indices`` of ``source``.

  Args:
    source: a source from `open_source`.
    keys: the image and label features.
    shape: the shape of one image.
    indices: the records (a 1-D sequence of ints).

  Returns:
    ``(images, labels)`` of shapes ``(n, *shape)`` and ``(n,)``.
  """
  idx = [int(i) for i in indices]
  if hasattr(source, "__getitems__"):  # batched read
    records = source.__getitems__(idx)
  else:
    records = [source[i] for i in idx]
  image_key, label_key = keys
  images = np.empty((len(idx), *shape), np.uint8)
  for j, record in enumerate(records):
    images[j] = _decode_image(record[image_key], shape)
  labels = np.asarray([record[label_key] for record in records], np.int32).reshape(len(idx))
  return images, labels


def _decode_split(name: str, split: str, data_dir: Optional[str], builder, progress: bool):
  image_key, label_key = _feature_keys(builder)
  shape = tuple(builder.info.features[image_key].shape)
  if None in shape:
    raise ValueError(f"{name}: images of variable shape {shape} are not supported")
  source = open_source(name, split, data_dir, image_key)
  n = len(source)
  images = np.empty((n, *shape), np.uint8)
  labels = np.empty((n,), np.int32)
  chunks = range(0, n, _DECODE_CHUNK)
  if progress:
    from tqdm import tqdm

    chunks = tqdm(
      chunks,
      desc=f"decoding {name}/{split} (once; cached after)",
      unit="chunk",
      leave=False,
    )
  for start in chunks:
    idx = list(range(start, min(start + _DECODE_CHUNK, n)))
    if hasattr(source, "__getitems__"):  # batched read
      records = source.__getitems__(idx)
    else:
      records = [source[i] for i in idx]
    for j, rec in zip(idx, records, strict=True):
      images[j] = _decode_image(rec[image_key], shape)
      labels[j] = rec[label_key]
  return images, labels


def load_split_arrays(
  name: str,
  split: str,
  *,
  data_dir: Optional[os.PathLike | str] = None,
  cache_dir: Optional[os.PathLike | str] = None,
  progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict]:
  """Raw ``uint8`` images (N, H, W, C) and ``int32`` labels of one split, cached.

  Returns ``(images, labels, info)`` where ``info`` has ``version`` and ``num_classes``.
  """
  data_dir = resolve_data_dir(data_dir)
  builder = _builder(name, data_dir)
  version = str(builder.info.version)
  _, label_key = _feature_keys(builder)
  num_classes = int(builder.info.features[label_key].num_classes)
  info = {"version": version, "num_classes": num_classes}

  base = name.split(":")[0].replace("/", "_")
  cache_file = resolve_cache_dir(cache_dir) / f"{base}-{version}-{split}.npz"
  if cache_file.is_file():
    try:
      with np.load(cache_file) as z:
        return z["images"], z["labels"], info
    except Exception as e:  # corrupt cache: decode again
      log.warning("Ignoring unreadable cache file %s (%s)", cache_file, e)

  images, labels = _decode_split(name, split, data_dir, builder, progress)
  cache_file.parent.mkdir(parents=True, exist_ok=True)
  # Write to a temporary file then rename, so an interrupted run leaves no half file.
  fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".npz.tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, images=images, labels=labels)
    os.replace(tmp, cache_file)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return images, labels, info


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """uint8 -> float32 in [0, 1] -> per-channel standardisation."""
  x = images.astype(np.float32) / 255.0
  x -= np.asarray(mean, np.float32)
  x /= np.asarray(std, np.float32)
  return x


def load_dataset(
  name: str = "mnist",
  *,
  data_dir: Optional[os.PathLike | str] = None,
  cache_dir: Optional[os.PathLike | str] = None,
  train_split: str = "train",
  test_split: str = "test",
  progress: bool = True,
  lazy_train: bool = False,
) -> Dataset:
  """Loads a TFDS image classification dataset as normalised in-memory arrays.

  Args:
    name: the TFDS dataset.
    data_dir: where it is prepared (see `resolve_data_dir`).
    cache_dir: where decoded splits are cached (see `resolve_cache_dir`).
    train_split: the training split.
    test_split: the test split.
    progress: show a progress bar while a split is decoded.
    lazy_train: leave the training split on disk, as a `SourceSplit` (its batches are then read
      by `experiments.pipeline`); the test split is still loaded into memory.

  Returns:
    The dataset.

  Raises:
    FileNotFoundError: if the dataset is not prepared in the data directory.
    ValueError: with ``lazy_train``, for a dataset without known `NORMALIZATION` (its statistics
      would be computed from the decoded training split).
  """
  kw = dict(data_dir=data_dir, cache_dir=cache_dir, progress=progress)
  base = name.split(":")[0]
  if lazy_train:
    if base not in NORMALIZATION:
      raise ValueError(
        f"{name}: no known normalisation ({', '.join(NORMALIZATION)}); its per-channel "
        "statistics are computed from the decoded training split, which lazy_train leaves on disk"
      )
    mean, std = NORMALIZATION[base]
    test_x, test_y, info = load_split_arrays(
      name, test_split, data_dir=data_dir, cache_dir=cache_dir, progress=progress
    )
    train: Split | SourceSplit = SourceSplit(
      name, train_split, resolve_data_dir(data_dir), mean, std
    )
    return Dataset(
      name=base,
      version=info["version"],
      train=train,
      test=Split(normalize(test_x, mean, std), test_y),
      num_classes=info["num_classes"],
      mean=tuple(mean),
      std=tuple(std),
    )
  train_x, train_y, info = load_split_arrays(name, train_split, **kw)
  test_x, test_y, _ = load_split_arrays(name, test_split, **kw)
  if base in NORMALIZATION:
    mean, std = NORMALIZATION[base]
  else:
    flat = train_x.reshape(-1, train_x.shape[-1]).astype(np.float64) / 255.0
    mean = tuple(float(m) for m in flat.mean(0))
    std = tuple(float(s) for s in flat.std(0))
  return Dataset(
    name=base,
    version=info["version"],
    train=Split(normalize(train_x, mean, std), train_y),
    test=Split(normalize(test_x, mean, std), test_y),
    num_classes=info["num_classes"],
    mean=tuple(mean),
    std=tuple(std),
  )


def unit_scaled(dataset: Dataset) -> Dataset:
  """The dataset with its images back in ``[0, 1]`` (the standardisation undone), as pipelines
  that feed raw pixel intensities do (e.g. TF's MNIST ``input_data``, which RigL's code reads).

  Raises:
      ValueError: if the training split is not in memory (``lazy_train``).
  """
  if not isinstance(dataset.train, Split):
    raise ValueError("unit_scaled: the training split is not in memory (lazy_train)")
  mean = np.asarray(dataset.mean, np.float32)
  std = np.asarray(dataset.std, np.float32)

  def undo(split: Split) -> Split:
    return Split((split.images * std + mean).astype(np.float32), split.labels)

  return dataclasses.replace(dataset, train=undo(dataset.train), test=undo(dataset.test))


def split_validation(dataset: Dataset, size: int, seed: int) -> tuple[Dataset, Optional[Split]]:
  """Holds ``size`` examples out of the training split, chosen by a seeded permutation.

  Args:
      dataset: the dataset.
      size: examples held out (0: none).
      seed: the permutation's seed.

  Returns:
      The dataset with the reduced training split, and the held-out split (or None).

  Raises:
      ValueError: for ``size > 0`` and a training split left on disk (a `SourceSplit`).
  """
  if size <= 0:
    return dataset, None
  if not isinstance(dataset.train, Split):
    raise ValueError("split_validation: the training split is not in memory (lazy_train)")
  order = np.random.default_rng(seed).permutation(len(dataset.train))
  held, kept = np.sort(order[:size]), np.sort(order[size:])
  train = Split(dataset.train.images[kept], dataset.train.labels[kept])
  validation = Split(dataset.train.images[held], dataset.train.labels[held])
  return dataclasses.replace(dataset, train=train), validation


def symmetric_label_noise(
  labels: np.ndarray, fraction: float, num_classes: int, seed: int
) -> np.ndarray:
  """Labels with symmetric noise: each one, with probability ``fraction``, replaced by one of the
  ``num_classes - 1`` other classes drawn uniformly (He et al. 2022, "Sparse double descent",
  ``symmetric_noisy_labels`` of their code: the transition matrix ``1 - fraction`` on the diagonal,
  ``fraction / (num_classes - 1)`` elsewhere). Deterministic given ``seed``.

  Args:
      labels: int labels in ``[0, num_classes)``.
      fraction: the noise rate, in ``[0, 1]``.
      num_classes: the number of classes (at least 2).
      seed: the generator's seed.

  Returns:
      A new int32 array (``labels`` is not changed).

  Raises:
      ValueError: for a fraction outside ``[0, 1]``, fewer than 2 classes, or labels out of range.
  """
  if not 0.0 <= float(fraction) <= 1.0:
    raise ValueError(f"label noise: fraction must be in [0, 1], got {fraction!r}")
  if int(num_classes) < 2:
    raise ValueError(f"label noise: num_classes must be >= 2, got {num_classes!r}")
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
      f"label noise: labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
    )
  rng = np.random.default_rng([int(seed), 0x5EED])
  flip = rng.random(labels.shape) < float(fraction)
  # An offset in 1..K-1 added modulo K: uniform over the other classes.
  offset = rng.integers(1, int(num_classes), size=labels.shape)
  return np.where(flip, (labels + offset) % int(num_classes), labels).astype(np.int32)


def with_label_noise(dataset: Dataset, fraction: float, seed: int) -> Dataset:
  """``dataset`` with symmetric label noise (`symmetric_label_noise`) on its training split only.

  Args:
      dataset: the dataset (its training split in memory).
      fraction: the noise rate, in ``[0, 1]`` (0 returns ``dataset`` itself).
      seed: the noise's seed.

  Returns:
      The dataset with noisy training labels; images and the test split are shared, not copied.

  Raises:
      ValueError: for a training split left on disk, or a bad fraction.
  """
  if float(fraction) == 0.0:
    return dataset
  if not isinstance(dataset.train, Split):
    raise ValueError("label noise: the training split is not in memory (lazy_train)")
  noisy = symmetric_label_noise(dataset.train.labels, fraction, dataset.num_classes, seed)
  return dataclasses.replace(dataset, train=Split(dataset.train.images, noisy))


# --------------------------------------------------------------------------- batching


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
  """The generator that shuffles epoch ``epoch`` of a run with seed ``seed``."""
  return np.random.default_rng([int(seed), int(epoch)])


def batch_iterator(
  images: np.ndarray,
  labels: np.ndarray,
  batch_size: int,
  *,
  seed: int = 0,
  epoch: int = 0,
  shuffle: bool = True,
  drop_remainder: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """One pass over the data in batches, shuffled with ``epoch_rng(seed, epoch)``."""
  n = len(labels)
  order = epoch_rng(seed, epoch).permutation(n) if shuffle else np.arange(n)
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    idx = order[start : start + batch_size]
    yield images[idx], labels[idx]


def train_batches(
  images: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Endless shuffled training batches (drop_remainder), reshuffled every epoch."""
  if len(labels) < batch_size:
    raise ValueError(f"batch_size {batch_size} exceeds the {len(labels)} examples")
  epoch = 0
  while True:
    yield from batch_iterator(
      images,
      labels,
      batch_size,
      seed=seed,
      epoch=epoch,
      shuffle=True,
      drop_remainder=True,
    )
    epoch += 1


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
  """Number of full batches in one epoch (the remainder is dropped, as in `train_batches`).

  Args:
      num_examples: size of the training split.
      batch_size: examples per batch.

  Returns:
      ``num_examples // batch_size``.

  Raises:
      ValueError: if the split holds fewer than ``batch_size`` examples.
  """
  if num_examples < batch_size:
    raise ValueError(f"batch_size {batch_size} exceeds the {num_examples} examples")
  return num_examples // batch_size


def data_position(step: int, num_examples: int, batch_size: int) -> tuple[int, int]:
  """Where the data stream of a run stands after ``step`` training steps.

  Args:
      step: number of batches consumed so far.
      num_examples: size of the training split.
      batch_size: examples per batch.

  Returns:
      ``(epoch, index)``: the next batch is batch ``index`` of epoch ``epoch``.
  """
  return divmod(int(step), batches_per_epoch(num_examples, batch_size))


def batch_indices(
  num_examples: int,
  batch_size: int,
  *,
  seed: int,
  position: tuple[int, int],
  count: int,
) -> tuple[np.ndarray, tuple[int, int]]:
  """Example indices of the next ``count`` training batches of a run, from ``position``.

  The order is exactly that of `train_batches` with the same seed (epoch ``e`` is shuffled
  with ``epoch_rng(seed, e)``, the last partial batch of each epoch is dropped), so a run can
  gather its batches on the device and restart from a saved position.

  Args:
      num_examples: size of the training split.
      batch_size: examples per batch.
      seed: the run's seed.
      position: ``(epoch, index)`` of the first batch wanted, see `data_position`.
      count: number of batches.

  Returns:
      ``(indices, position)``: an int32 array of shape ``(count, batch_size)`` and the
      position of the batch after the last one returned.

  Raises:
      ValueError: if the split holds fewer than ``batch_size`` examples or ``position``
          is outside an epoch.
  """
  per_epoch = batches_per_epoch(num_examples, batch_size)
  epoch, index = (int(p) for p in position)
  if epoch < 0 or not 0 <= index < per_epoch:
    raise ValueError(f"position {position} is outside an epoch of {per_epoch} batches")
  out = np.empty((int(count), batch_size), np.int32)
  done = 0
  while done < count:
    order = epoch_rng(seed, epoch).permutation(num_examples)
    take = min(count - done, per_epoch - index)
    block = order[index * batch_size : (index + take) * batch_size]
    out[done : done + take] = block.reshape(take, batch_size)
    done += take
    index += take
    if index == per_epoch:
      epoch, index = epoch + 1, 0
  return out, (epoch, index)
