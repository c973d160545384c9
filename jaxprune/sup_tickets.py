"""Sup-tickets: cheap tickets from the end of one dynamic sparse training run, superposed into one.

Yin et al. split one sparse-to-sparse run into a main phase and a short cyclic phase. The main
phase is ordinary dynamic sparse training (RigL, GraNet, SET). The cyclic phase repeats a cycle of
``cycle_steps`` updates ``cycles`` times: at the start of each cycle the topology is re-explored by
one large drop-and-grow (half the active weights of each leaf by default; no other mask update in
the phase), and the learning rate goes from ``low`` up to ``high`` and back down (a triangle); the
weights at the end of each cycle, at the lowest learning rate, are a *cheap ticket*. The tickets
are superposed by a running average (the authors' CAA, cumulative average) that is pruned back to
the run's parameter budget after every addition, by one global magnitude threshold, so the
superposed network is exactly as sparse as each ticket.

This module has the three pieces, around the existing transformations:

- `cyclic`: a DST transformation of the library (`jaxprune.rigl`, `jaxprune.granet`,
  `jaxprune.set_sparse`) with the cyclic phase's re-explorations added to its schedule;
- `cyclic_learning_rate`: the learning rate of the whole run, an optax schedule;
- `superpose` (running, one ticket at a time) and `superpose_all` (of a list of tickets).

References:
  Yin, Menkovski, Fang, Huang, Pei, Pechenizkiy, Mocanu & Liu, `Superposing many tickets into
  one: a performance booster for sparse neural network training
  <https://arxiv.org/abs/2205.15322>`_, UAI 2022 (code: ``luuyin/Sup-tickets``,
  ``CIFAR/main_suptickets.py``)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune import dst, engine, oneshot, rules, selection
from jaxprune import leaves as leaves_lib
from jaxprune import schedules as schedules_lib
from jaxprune.checks import check_fraction, check_int, number
from jaxprune.typing import Distribution, Masks, Params, PathSelector, Sparsity

__all__ = [
  "Superposed",
  "cycle_ends",
  "cyclic",
  "cyclic_learning_rate",
  "superpose",
  "superpose_all",
]


def _check_cycles(begin: Any, cycle_steps: Any, cycles: Any, owner: str) -> tuple[int, int, int]:
  return (
    check_int("begin", begin, 0, owner),
    check_int("cycle_steps", cycle_steps, 1, owner),
    check_int("cycles", cycles, 1, owner),
  )


def cycle_ends(begin: int, cycle_steps: int, cycles: int) -> list[int]:
  """The numbers of updates after which a ticket is collected.

  Args:
    begin: the updates of the main phase; its last weights are ticket 0.
    cycle_steps: updates per cycle.
    cycles: the number of cycles.

  Returns:
    ``[begin + k * cycle_steps for k in 0 .. cycles]``.

  Example:
    >>> from jaxprune import sup_tickets
    >>> sup_tickets.cycle_ends(900, 50, 2)
    [900, 950, 1000]
  """
  begin, cycle_steps, cycles = _check_cycles(begin, cycle_steps, cycles, "cycle_ends")
  return [begin + k * cycle_steps for k in range(cycles + 1)]


def cyclic_learning_rate(
  base: optax.ScalarOrSchedule,
  *,
  begin: int,
  cycle_steps: int,
  cycles: int,
  low: float,
  high: float,
) -> optax.Schedule:
  """The run's learning rate: ``base`` for the main phase, then triangular cycles.

  Update ``begin + k * cycle_steps + i`` (``0 <= i < cycle_steps``) of cycle ``k`` has the rate
  ``low + (high - low) * (1 - |2 t - 1|)``, ``t = i / cycle_steps``: it rises from ``low`` to
  ``high`` at mid-cycle and falls back to ``low`` at the cycle's end, where the ticket is taken
  (the authors' ``cyclic_learning_rate`` with ``lr_1 = low``, ``lr_2 = high``, as in their
  commands). After the last cycle the rate stays at ``low``.

  Args:
    base: the main phase's learning rate (a number or an optax schedule of the update count).
    begin: the updates of the main phase.
    cycle_steps: updates per cycle.
    cycles: the number of cycles.
    low: the rate at the ends of a cycle.
    high: the rate at its middle.

  Returns:
    An optax schedule of the update count.

  Raises:
    ValueError: for negative or zero counts, or rates that are not positive.
    TypeError: for non-integer counts.

  Example:
    >>> from jaxprune import sup_tickets
    >>> lr = sup_tickets.cyclic_learning_rate(0.1, begin=10, cycle_steps=4, cycles=2, low=0.001,
    ...                                       high=0.005)
    >>> [round(float(lr(t)), 4) for t in (9, 10, 11, 12, 13, 14, 18)]
    [0.1, 0.001, 0.003, 0.005, 0.003, 0.001, 0.001]
  """
  owner = "cyclic_learning_rate"
  begin, cycle_steps, cycles = _check_cycles(begin, cycle_steps, cycles, owner)
  for what, value in (("low", low), ("high", high)):
    v = number(value, f"{owner}: {what}")
    if v is not None and not v > 0:
      raise ValueError(f"{owner}: {what} must be a positive number, got {value!r}.")
  end = begin + cycles * cycle_steps

  def schedule(count):
    count = jnp.asarray(count)
    main = base(count) if callable(base) else jnp.asarray(base, jnp.float32)
    t = jnp.mod(count - begin, cycle_steps).astype(jnp.float32) / cycle_steps
    cyclic = low + (high - low) * (1.0 - jnp.abs(2.0 * t - 1.0))
    cyclic = jnp.where(count >= end, low, cyclic)
    return jnp.where(count < begin, main, cyclic)

  return schedule


def _grow_mode(rule: rules.Rule, owner: str) -> str:
  for grow in ("gradient", "random"):
    if rule.name == f"drop_and_grow({grow})":
      return grow
  raise ValueError(
    f"{owner}: factory must make a dynamic sparse transformation (jaxprune.rigl, granet, "
    f"set_sparse), got one whose rule is {rule.name!r}."
  )


def cyclic(
  factory: Callable[..., optax.GradientTransformation],
  sparsity: Sparsity,
  *,
  begin: int,
  cycle_steps: int,
  cycles: int,
  re_explore: float = 0.5,
  seed: int = 0,
  frequency: int | None = None,
  begin_step: int | None = None,
  end_step: int | None = None,
  options: Mapping[str, Any] | None = None,
  inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """A dynamic sparse transformation with Sup-tickets' cyclic phase added to its schedule.

  ``factory(sparsity, seed=seed, inner=inner, **timing, **options)`` (e.g. `jaxprune.rigl` with
  ``end_step=begin``) is the main phase, unchanged before update ``begin``. At the start of every
  cycle (updates ``begin + k * cycle_steps``, ``k < cycles``) each leaf drops the fraction
  ``re_explore`` of its active weights by magnitude and grows as many by the factory's growth
  (gradient or random), as the authors' ``truncate_weights(large_death_rate)``; there is no other
  mask update after ``begin`` (their ``no_maskupdates``). Grown weights and their optimizer
  statistics start at zero, as in every DST transformation.

  Args:
    factory: `jaxprune.rigl`, `jaxprune.granet` or `jaxprune.set_sparse` (or another factory
      built on `jaxprune.dst.dynamic_sparse`).
    sparsity: the run's sparsity.
    begin: the first update of the cyclic phase (the main phase's mask updates should end by then:
      ``end_step=begin``).
    cycle_steps: updates per cycle.
    cycles: the number of cycles.
    re_explore: the fraction dropped and regrown at the start of each cycle (the authors'
      ``large_death_rate``, 0.5).
    seed: the seed of the factory (its initial mask, random growth).
    frequency, begin_step, end_step: the main phase's mask updates, passed to the factory when
      given (every DST factory takes them; ``end_step=begin`` ends them where the cycles begin).
    options: the factory's other arguments (``{'drop_fraction': 0.3, 'distribution': 'erk'}``).
    inner: the optimizer to wrap.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a `jaxprune.PruningState`.

  Raises:
    ValueError: for counts below their minimum, ``re_explore`` outside ``[0, 1]``, or a factory
      whose transformation is not dynamic sparse training; and as the factory.
    TypeError: for non-integer counts or ``options`` that are not a mapping.

  Example:
    >>> import optax, jaxprune
    >>> tx = jaxprune.sup_tickets.cyclic(jaxprune.rigl, 0.95, begin=4000, cycle_steps=250,
    ...                                  cycles=4, end_step=4000, frequency=100,
    ...                                  inner=optax.sgd(0.01))
  """
  owner = "sup_tickets.cyclic"
  begin, cycle_steps, cycles = _check_cycles(begin, cycle_steps, cycles, owner)
  check_fraction(re_explore, f"{owner}: re_explore")
  timing = {"frequency": frequency, "begin_step": begin_step, "end_step": end_step}
  timing = {k: v for k, v in timing.items() if v is not None}
  if options is not None and not isinstance(options, Mapping):
    raise TypeError(
      f"{owner}: options must be a mapping of the factory's arguments, got {options!r}."
    )
  tx = factory(sparsity, seed=seed, inner=inner, **timing, **dict(options or {}))
  method = engine.method_of(tx)
  grow = _grow_mode(method.rule, owner)
  starts = [begin + k * cycle_steps for k in range(cycles)]
  main = method.schedule

  def is_update_step(count):
    # The constant is made in the traced step (a constant made under jax.set_mesh would carry
    # that mesh's explicit axes into the auto-mode work).
    cycle_start = jnp.any(count == jnp.asarray(starts, jnp.int32))
    return (main.is_update_step(count) & (count < begin)) | cycle_start

  schedule = schedules_lib.Schedule(is_update_step, main.sparsity, main.initial_sparsity)
  explore = rules.drop_and_grow(
    grow=grow, drop_fraction=dst.constant_drop_fraction(re_explore), seed=seed
  )
  before = method.rule

  def fn(x: rules.RuleInputs) -> rules.MaskUpdate:
    return selection.cond(x.count >= begin, lambda: explore.fn(x), lambda: before.fn(x))

  rule = before._replace(name=f"{before.name}+re_explore", fn=fn)
  return engine.transformation(method._replace(schedule=schedule, rule=rule), inner)


class Superposed(NamedTuple):
  """The running superposition of cheap tickets (`superpose`).

  Attributes:
    params: the superposed weights, pruned to the budget.
    masks: their masks (``True`` = kept), ``None`` for leaves not pruned.
    tickets: the number of tickets superposed.
  """

  params: Params
  masks: Masks
  tickets: int


def _prune(
  params: Params, sparsity: Sparsity, distribution: Distribution, prune: PathSelector
) -> tuple[Params, Masks]:
  masks = oneshot.prune(
    params, sparsity, distribution=distribution, prune=prune, name="sup_tickets"
  )
  return jax.tree.map(
    lambda w, m: w if m is None else jnp.where(m, w, jnp.zeros((), w.dtype)),
    params,
    masks,
    is_leaf=lambda x: x is None,
  ), masks


def superpose(
  running: Superposed | None,
  ticket: Params,
  sparsity: Sparsity,
  *,
  factor: float | None = None,
  distribution: Distribution = "global",
  prune: PathSelector = None,
) -> Superposed:
  """Adds a ticket to the running superposition and prunes it back to the budget.

  With ``k`` tickets superposed so far, the new weights are
  ``(1 - a) * running + a * ticket`` for every floating-point leaf (biases too), ``a = 1 / (k + 1)``
  (the authors' CAA: a cumulative average) or ``a = factor`` (their CIMA), then the pruned leaves
  are pruned by magnitude to ``sparsity`` (one global threshold by default, as their code). The
  first ticket starts the superposition (pruned the same way).

  Args:
    running: the superposition so far, or ``None``.
    ticket: the new ticket's params (its pruned weights zero).
    sparsity: the budget: the fraction of the pruned leaves' weights that are zero.
    factor: ``None`` (CAA) or a fixed weight of the new ticket in ``(0, 1]`` (CIMA).
    distribution: how the prune shares the sparsity: ``"global"`` (the code) or a per-leaf
      distribution (``"erk"``, ``"uniform"``, ...), as in `jaxprune.prune`.
    prune: which leaves are pruned (kernels by default).

  Returns:
    The new `Superposed`.

  Raises:
    ValueError: for a sparsity outside ``[0, 1)``, a ``factor`` outside ``(0, 1]``, or a ticket
      not shaped like the superposition.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import sup_tickets
    >>> a = {'w': jnp.array([[4.0, 0.0, 0.0, 2.0]])}
    >>> b = {'w': jnp.array([[0.0, 0.0, 3.0, 2.0]])}
    >>> s = sup_tickets.superpose(None, a, 0.5)
    >>> s = sup_tickets.superpose(s, b, 0.5)  # mean [2, 0, 1.5, 2], two kept
    >>> s.params['w'], s.tickets
    (Array([[2., 0., 0., 2.]], dtype=float32), 2)
  """
  owner = "superpose"
  if factor is not None:
    f = number(factor, f"{owner}: factor")
    if f is not None and not 0.0 < f <= 1.0:
      raise ValueError(f"{owner}: factor must be in (0, 1], got {factor!r}.")
  if running is None:
    params, masks = _prune(ticket, sparsity, distribution, prune)
    return Superposed(params, masks, 1)
  try:
    new = leaves_lib.flatten_up_to(jax.tree.structure(running.params), ticket)
  except (ValueError, TypeError):
    raise ValueError(
      f"{owner}: the ticket is not shaped like the superposed params: its leaves are "
      f"{[n for n, _ in leaves_lib.named_leaves(ticket)]}, the superposition's "
      f"{[n for n, _ in leaves_lib.named_leaves(running.params)]}."
    ) from None
  for (name, a), b in zip(leaves_lib.named_leaves(running.params), new):
    if jnp.shape(a) != jnp.shape(b):
      raise ValueError(
        f"{owner}: the ticket's leaf {name!r} has shape {jnp.shape(b)}, the superposition's "
        f"{jnp.shape(a)}."
      )
  a = 1.0 / (running.tickets + 1) if factor is None else float(factor)

  def mix(old, new):
    if not jnp.issubdtype(jnp.result_type(old), jnp.inexact):
      return new
    return ((1.0 - a) * old.astype(jnp.float32) + a * new.astype(jnp.float32)).astype(old.dtype)

  mixed = jax.tree.map(mix, leaves_lib.unwrap_variables(running.params), ticket)
  params, masks = _prune(mixed, sparsity, distribution, prune)
  return Superposed(params, masks, running.tickets + 1)


def superpose_all(
  tickets: Sequence[Params],
  sparsity: Sparsity,
  *,
  distribution: Distribution = "global",
  prune: PathSelector = None,
) -> tuple[Params, Masks]:
  """The plain average of ``tickets``, pruned by magnitude to ``sparsity`` once.

  The one-shot variant of `superpose` (which prunes after every addition, as the authors' code).

  Args:
    tickets: the tickets' params, at least one.
    sparsity: the budget, as in `superpose`.
    distribution, prune: as in `superpose`.

  Returns:
    ``(params, masks)``.

  Raises:
    ValueError: for no tickets or a sparsity outside ``[0, 1)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import sup_tickets
    >>> a = {'w': jnp.array([[4.0, 0.0, 0.0, 2.0]])}
    >>> b = {'w': jnp.array([[0.0, 0.0, 3.0, 2.0]])}
    >>> sup_tickets.superpose_all([a, b], 0.5)[0]['w']
    Array([[2., 0., 0., 2.]], dtype=float32)
  """
  if not tickets:
    raise ValueError("superpose_all: give at least one ticket.")
  n = len(tickets)
  mean = jax.tree.map(
    lambda *xs: (sum(x.astype(jnp.float32) for x in xs) / n).astype(jnp.result_type(xs[0])),
    *tickets,
  )
  return _prune(mean, sparsity, distribution, prune)
