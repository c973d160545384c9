"""Orbax checkpoints of one run: its whole training state plus a JSON record of its progress.

A run's checkpoints live in ``<output_dir>/checkpoints/<run>/<step>/`` and hold two items:

* ``state``: every array leaf of the run's training state (params, model state, the full
  optimizer state with the pruning masks and step counters, the JAX RNG key and the
  training-metric sums since the last evaluation), saved under their position in
  ``jax.tree.leaves`` so that no pytree node type (optax NamedTuples, ``None`` mask leaves)
  needs orbax support;
* ``meta``: JSON with the step, the data position (epoch and index within the epoch), the
  evaluation records so far, the config fingerprint and the leaf paths (checked on restore).

Restoring needs a template state of the same structure (a freshly initialised run); the
leaves come back with the template's dtypes, so the restored state feeds the same compiled
program as the uninterrupted run did.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

# Orbax logs every save and restore at INFO through absl; keep the run's own log readable.
logging.getLogger("absl").setLevel(logging.WARNING)


def _leaf_paths(tree: Any) -> list[str]:
  return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _target(x: Any) -> Any:
  """The restore target of a template leaf: a device array's shape, dtype and sharding."""
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  return np.zeros(np.shape(x), jnp.result_type(x))


class RunCheckpoints:
  """The orbax checkpoints of one run.

  Args:
      directory: ``<output_dir>/checkpoints/<run>``; created on the first save.
      max_to_keep: how many of the latest checkpoints are kept.
  """

  def __init__(self, directory: Path | str, max_to_keep: int = 2):
    self.directory = Path(directory).expanduser().resolve()
    self.max_to_keep = max(1, int(max_to_keep))
    self._manager: Optional[ocp.CheckpointManager] = None

  @property
  def manager(self) -> ocp.CheckpointManager:
    if self._manager is None:
      options = ocp.CheckpointManagerOptions(
        max_to_keep=self.max_to_keep,
        enable_async_checkpointing=False,
        create=True,
      )
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    return self._manager

  def steps(self) -> list[int]:
    """The steps saved so far, ascending (empty when there is no checkpoint)."""
    if not self.directory.is_dir():
      return []
    return sorted(int(s) for s in self.manager.all_steps())

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves ``state`` and ``meta`` as the checkpoint of ``step`` (synchronously).

    Args:
        step: the training step the state is at.
        state: the run's training state (a pytree of arrays).
        meta: JSON-serialisable progress record; ``step`` and ``leaves`` are added.
    """
    # Arrays are saved as they are: each device writes its own shards (no gather to the host, so
    # a state sharded over several processes saves too).
    items = {f"{i:04d}": x for i, x in enumerate(jax.tree.leaves(state))}
    meta = {**meta, "step": int(step), "leaves": _leaf_paths(state)}
    self.manager.save(
      int(step),
      args=ocp.args.Composite(state=ocp.args.StandardSave(items), meta=ocp.args.JsonSave(meta)),
      force=True,
    )
    self.manager.wait_until_finished()

  def read_meta(self, step: int) -> dict:
    """The JSON record saved with the checkpoint of ``step``.

    Args:
        step: a saved step.

    Returns:
        The record.
    """
    restored = self.manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored.meta)

  def restore(self, step: int, template: Any) -> tuple[Any, dict]:
    """Restores the checkpoint of ``step`` into the structure, dtypes and shardings of ``template``.

    Args:
        step: a saved step.
        template: a state of the same structure (e.g. a freshly initialised run); each of its
            device arrays gives the restored leaf its sharding (any mesh, whatever mesh saved it).

    Returns:
        ``(state, meta)``: the restored state (device arrays) and its JSON record.

    Raises:
        ValueError: if the checkpoint's leaves do not match the template's.
    """
    leaves, treedef = jax.tree.flatten(template)
    targets = {f"{i:04d}": _target(x) for i, x in enumerate(leaves)}
    restored = self.manager.restore(
      int(step),
      args=ocp.args.Composite(state=ocp.args.StandardRestore(targets), meta=ocp.args.JsonRestore()),
    )
    meta = dict(restored.meta)
    paths = _leaf_paths(template)
    if meta.get("leaves") != paths:
      raise ValueError(
        f"Checkpoint {self.directory}/{step} does not match the run's state "
        f"(saved leaves {meta.get('leaves')}, expected {paths})"
      )
    arrays = []
    for i, x in enumerate(leaves):
      value = restored.state[f"{i:04d}"]
      if np.shape(value) != np.shape(x):
        raise ValueError(
          f"Checkpoint {self.directory}/{step}: leaf {paths[i]} has shape "
          f"{np.shape(value)}, expected {np.shape(x)}"
        )
      arrays.append(
        value if isinstance(value, jax.Array) else jnp.asarray(value, jnp.result_type(x))
      )
    return jax.tree.unflatten(treedef, arrays), meta

  def clear(self) -> None:
    """Deletes every checkpoint of the run."""
    self.close()
    if self.directory.exists():
      shutil.rmtree(self.directory)

  def close(self) -> None:
    """Releases the orbax manager (its threads); the object stays usable."""
    if self._manager is not None:
      self._manager.close()
      self._manager = None
