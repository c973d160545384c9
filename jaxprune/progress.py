"""Progress of long host-side library loops: a tqdm bar or log lines, silent under JAX tracing.

`progress` wraps the Python loop of a call that runs many rounds or passes on the host (SynFlow's
rounds today; one-shot calibration passes and structured slimming are meant to use it as well)::

    steps = progress(range(rounds), desc="synflow", unit="round", enabled=enabled, arrays=params)
    for r in steps:
      ...

``enabled`` is the caller's ``progress`` argument:

* ``None`` (the default): a tqdm bar on stderr when tqdm is installed, none of ``arrays`` is a JAX
  tracer and the loop has at least `MIN_STEPS` steps; without tqdm, an INFO log line at the start
  and one at the end (with the elapsed seconds) instead; nothing when traced.
* ``True``: the same for a loop of any length; when traced, an INFO log line at the start and one
  at the end of the tracing and no bar.
* ``False``: nothing.

Traced means that the call runs under `jax.jit` (or another JAX transformation): the loop then
runs once, at trace time, and the compiled function later runs without any Python, so a bar would
time the tracing, not the work. Pass the call's array inputs, and ideally an array the call creates
itself (a ``jnp.ones`` made inside a traced function is a tracer even when the params are closed
over), as ``arrays``.

Every call also logs its start and end at DEBUG (INFO where it is the only output) to the
``"jaxprune"`` logger, so they can be routed: ``logging.getLogger("jaxprune")``. Nothing is ever
printed to stdout. The bar is tqdm's plain text bar (``tqdm.tqdm``: the notebook widget needs
ipywidgets), written to stderr with ``leave=False``, so it erases itself when the loop ends and
leaves test output and notebook cells clean. ``TQDM_DISABLE`` (any non-empty value, as tqdm reads
it) turns every bar off.

tqdm is optional, not a core dependency: the core library needs only what it computes with, a bar
is a convenience that has a logging fallback, and tqdm comes with the ``experiments`` and ``test``
extras.

Example:
  >>> import jaxprune
  >>> [i for i in jaxprune.progress.progress(range(3), desc="demo", enabled=False)]
  [0, 1, 2]
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, TypeVar

import jax
import numpy as np

from jaxprune.checks import is_traced

__all__ = ["MIN_STEPS", "check_enabled", "progress"]

MIN_STEPS = 10
"""Loops shorter than this show no bar unless ``enabled=True``."""

logger = logging.getLogger("jaxprune")

T = TypeVar("T")


def check_enabled(enabled: Any, what: str) -> None:
  """Raises ``TypeError`` unless ``enabled`` is ``None``, ``True`` or ``False``.

  Args:
    enabled: the value of a ``progress`` argument.
    what: the call it was given to, for the message, e.g. ``"synflow"``.

  Raises:
    TypeError: for any other value (``1``, ``"yes"``, ...), named in the message.
  """
  if enabled is not None and not isinstance(enabled, (bool, np.bool_)):
    raise TypeError(
      f"{what}: progress must be True, False or None (automatic), got {enabled!r} "
      f"of type {type(enabled).__name__}."
    )


def _tqdm() -> Any:
  """tqdm's bar class, or ``None`` when tqdm is not installed (imported at each call)."""
  try:
    from tqdm import tqdm
  except ImportError:
    return None
  return tqdm


def _bars_disabled() -> bool:
  # tqdm reads TQDM_DISABLE once, at import; read it at each call too (any non-empty value, as
  # tqdm converts it with bool()).
  return bool(os.environ.get("TQDM_DISABLE"))


def progress(
  iterable: Iterable[T],
  *,
  desc: str,
  total: int | None = None,
  unit: str = "step",
  enabled: bool | None = None,
  arrays: Any = None,
) -> Iterator[T]:
  """``iterable``'s items, with a progress bar or log lines as ``enabled`` says (see the module).

  Args:
    iterable: the loop's steps.
    desc: the call's name, shown on the bar and in the log lines, e.g. ``"synflow"``.
    total: the number of steps; ``len(iterable)`` by default, where it has one.
    unit: what a step is, e.g. ``"round"`` or ``"batch"``.
    enabled: ``None`` (automatic), ``True`` (always) or ``False`` (never): the caller's
      ``progress`` argument.
    arrays: a tree of the call's arrays; when any leaf is a JAX tracer, the call is traced and
      shows no bar.

  Returns:
    An iterator over the items of ``iterable``.

  Raises:
    TypeError: for an ``enabled`` other than ``None``, ``True`` or ``False`` (raised at once, not
      at the first step).
  """
  check_enabled(enabled, desc)
  if enabled is not None:
    enabled = bool(enabled)  # numpy booleans are not `True` / `False`
  if total is None and isinstance(iterable, Sized):
    total = len(iterable)
  traced = any(is_traced(x) for x in jax.tree.leaves(arrays))
  wanted = enabled is True or (enabled is None and (total is None or total >= MIN_STEPS))
  bar: Callable[[], Any] | None
  if traced or not wanted:
    bar, level = None, logging.INFO if (traced and enabled is True) else logging.DEBUG
  else:
    tqdm = _tqdm()
    if tqdm is None:
      bar, level = None, logging.INFO
    elif _bars_disabled():
      bar, level = None, logging.DEBUG
    else:
      # `disable` is not passed, so that tqdm's own reading of TQDM_DISABLE still applies.
      bar = lambda: tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)
      level = logging.DEBUG
  return _steps(iterable, desc, total, unit, traced, bar, level)


def _steps(
  iterable: Iterable[T],
  desc: str,
  total: int | None,
  unit: str,
  traced: bool,
  make_bar: Callable[[], Any] | None,
  level: int,
) -> Iterator[T]:
  units = unit if total == 1 else f"{unit}s"
  count = "" if total is None else f"{total} "
  what = "tracing" if traced else "running"
  logger.log(level, "%s: %s %s%s", desc, what, count, units)
  start = time.perf_counter()
  bar = None if make_bar is None else make_bar()
  done, finished = 0, False
  try:
    for item in iterable:
      yield item
      done += 1
      if bar is not None:
        bar.update(1)
    finished = True
  finally:
    if bar is not None:
      bar.close()
    elapsed = time.perf_counter() - start
    if finished:
      ended = "traced" if traced else "done"
      logger.log(level, "%s: %s%s %s in %.2f s", desc, count, units, ended, elapsed)
    else:
      of = "" if total is None else f" of {total}"
      logger.log(level, "%s: stopped after %d%s %s, %.2f s", desc, done, of, units, elapsed)
