"""Experiment configs: loading ``get_config()`` files, overriding fields from strings.

A config is a Python file defining ``get_config()`` that returns an
``ml_collections.ConfigDict`` (see ``experiments/configs/mnist_lenet300.py``). Any field,
nested ones included, can then be overridden from a string, e.g.
``apply_override(config, "optimizer.learning_rate", "0.1")``; the string is parsed as a
value of the field's current type.

`fingerprint` hashes the fields that change what a run computes, so that a finished run
or a checkpoint is only reused by a command that would compute the same thing.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Optional

import ml_collections

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = "mnist_lenet300"

# Fields that say where, how or which runs are executed, not what one run computes: they are
# left out of `fingerprint`. (The vmap flags are among them: a vmapped run computes what its
# sequential run computes, see experiments.sweep.)
EXECUTION_FIELDS = (
  "output_dir",
  "data_dir",
  "cache_dir",
  "progress",
  "plots",
  "resume",
  "stop_after_step",
  "checkpoint_every",
  "keep_checkpoints",
  "published",
  "methods",
  "sparsities",
  "ratios",
  "remeasure",
  "seeds",
  "vmap_seeds",
  "vmap_sparsities",
  "eval_batch_size",
  "reinit_rounds",
  # The in-memory path and the grain stream read the same batches in the same order.
  "data_pipeline",
  # Data-parallel steps compute what one device computes, up to the order of the gradient's sums.
  "data_parallel",
)

_TRUE = {"true", "t", "yes", "y", "1", "on"}
_FALSE = {"false", "f", "no", "n", "0", "off"}


def load_config(spec: Optional[str] = None) -> ml_collections.ConfigDict:
  """Loads a config from a file path or a name in ``experiments/configs``.

  Args:
      spec: a path to a ``.py`` file defining ``get_config()``, or the name of one in
          ``experiments/configs`` (with or without ``.py``); may end in ``:arg``, which is
          passed to ``get_config(arg)``. ``None`` loads the default config.

  Returns:
      The config.

  Raises:
      FileNotFoundError: if no such file or config name exists.
      ValueError: if the file defines no ``get_config()``.
  """
  spec = spec or DEFAULT_CONFIG
  arg = None
  path_part = spec
  if ":" in spec and not Path(spec).exists():
    path_part, arg = spec.split(":", 1)
  path = Path(path_part).expanduser()
  if not path.exists():
    candidates = [CONFIG_DIR / path_part, CONFIG_DIR / f"{path_part}.py"]
    found = [c for c in candidates if c.is_file()]
    if not found:
      available = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__")
      raise FileNotFoundError(
        f"Config {path_part!r} not found (neither a file nor one of "
        f"{', '.join(available)} in {CONFIG_DIR})"
      )
    path = found[0]
  module_spec = importlib.util.spec_from_file_location(f"_jaxprune_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path} defines no get_config()")
  config = module.get_config(arg) if arg is not None else module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    config = ml_collections.ConfigDict(config)
  return config


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_value(text: str, current: Any) -> Any:
  """Parses ``text`` as a value of the type of a field's current value.

  Args:
      text: the value as written on the command line: ``0.1``, ``true``, ``0.8,0.9``
          or a Python literal such as ``[{'label': 'x', 'sparsity': 0.9, 'accuracy': 98}]``.
      current: the field's current value; its type decides the parsing. Lists and tuples
          accept comma-separated values or a Python literal; ``None`` fields accept any
          literal (or ``none``).

  Returns:
      The parsed value.

  Raises:
      ValueError: if ``text`` is not a value of the expected type.
  """
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in _TRUE:
      return True
    if low in _FALSE:
      return False
    raise ValueError(f"expected a boolean, got {text!r}")
  if isinstance(current, int):
    value = _literal(text)
    if isinstance(value, float) and value.is_integer():
      value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
      raise ValueError(f"expected an integer, got {text!r}")
    return value
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    value = text
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
      value = value[1:-1]
    return value
  if isinstance(current, (tuple, list)):
    value = _literal(text.strip())
    if isinstance(value, str) and "," in text:
      value = tuple(_literal(v.strip()) for v in text.split(",") if v.strip())
    if not isinstance(value, (tuple, list)):
      value = (value,)
    return type(current)(value)
  if current is None and text.strip().lower() in ("none", "null", ""):
    return None
  return _literal(text)


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  """Sets the dotted field ``key`` (e.g. ``optimizer.learning_rate``) from a string.

  Args:
      config: the config, modified in place.
      key: the field, dotted for nested groups.
      text: the new value, parsed by `parse_value`.

  Raises:
      KeyError: for an unknown field or group, or a group given as the field.
      ValueError: if ``text`` does not parse as the field's type.
  """
  *parents, leaf = key.split(".")
  node = config
  for i, part in enumerate(parents):
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise KeyError(f"Unknown config group {'.'.join(parents[: i + 1])!r}")
    node = node[part]
  if leaf not in node:
    raise KeyError(f"Unknown config field {key!r}; fields here: {', '.join(sorted(node.keys()))}")
  current = node[leaf]
  if isinstance(current, ml_collections.ConfigDict):
    raise KeyError(f"{key!r} is a group; set one of its fields, e.g. {key}.<field>=...")
  try:
    value = parse_value(text, current)
  except ValueError as e:
    raise ValueError(f"Bad value for {key!r}: {e}") from None
  with node.unlocked():
    node[leaf] = value


def fingerprint(config: ml_collections.ConfigDict) -> str:
  """A short hash of the fields that determine what one run computes.

  Args:
      config: the config.

  Returns:
      16 hex digits; equal for configs that differ only in `EXECUTION_FIELDS`.
  """
  fields = {k: v for k, v in config.to_dict().items() if k not in EXECUTION_FIELDS}
  if not fields.get("dead_neurons"):  # off: as configs from before the field
    fields.pop("dead_neurons", None)
  text = json.dumps(fields, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_interval(config: ml_collections.ConfigDict) -> int:
  """Steps between checkpoints: ``checkpoint_every``, or ``eval_every`` when it is None.

  Args:
      config: the config.

  Returns:
      The interval; ``0`` means only the final step (and a ``stop_after_step``) is saved.

  Raises:
      ValueError: if ``checkpoint_every`` is negative.
  """
  every = config.get("checkpoint_every", None)
  if every is None:
    return max(1, int(config.eval_every))
  every = int(every)
  if every < 0:
    raise ValueError(f"checkpoint_every must be >= 0, got {every}")
  return every
