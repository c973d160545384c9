"""Rebuilding a model at the widths of its slimmed params.

`jaxprune.structured.slim` returns smaller params and a function that runs them. To train the slim
network further with its own code (batch norm in training mode, dropout, a new optimizer), or to
train the slim *architecture* from scratch (Liu et al. 2019's control), one wants the model itself
at its new widths. `fit_widths` finds them for any model whose widths are integer arguments:
it builds the model's parameter shapes once per argument, each time with that argument one larger,
to learn which axes each argument sets, then solves for the values that give the slimmed shapes and
checks that every shape matches. `resize_module` does this for a Flax linen module's fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxprune import leaves as leaves_lib
from jaxprune.typing import Params

__all__ = ["fit_widths", "resize_module"]


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  tree = leaves_lib.unwrap_variables(tree)
  return {
    name: tuple(int(d) for d in np.shape(leaf)) for name, leaf in leaves_lib.named_leaves(tree)
  }


def _is_width(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _entries(widths: Mapping[str, Any]) -> list[tuple[str, int]]:
  """(argument, leaf index) of every integer inside the arguments (ints or nested tuples/lists)."""
  out = []
  for key, value in widths.items():
    leaves = jax.tree.leaves(value)
    out += [(key, i) for i, leaf in enumerate(leaves) if _is_width(leaf)]
  return out


def _with(widths: Mapping[str, Any], entry: tuple[str, int], value: int) -> dict[str, Any]:
  key, index = entry
  leaves, treedef = jax.tree.flatten(widths[key])
  leaves = list(leaves)
  leaves[index] = value
  new = dict(widths)
  new[key] = jax.tree.unflatten(treedef, leaves)
  return new


def _value(widths: Mapping[str, Any], entry: tuple[str, int]) -> int:
  return int(jax.tree.leaves(widths[entry[0]])[entry[1]])


def _label(entry: tuple[str, int], widths: Mapping[str, Any]) -> str:
  key, index = entry
  return key if _is_width(widths[key]) else f"{key}[{index}]"


def fit_widths(
  shapes_of: Callable[[dict[str, Any]], Any],
  widths: Mapping[str, Any],
  target: Params,
) -> dict[str, Any]:
  """The width arguments under which a model's parameters have the shapes of ``target``.

  ``shapes_of(widths)`` builds the model's parameters (or their shapes, e.g. with
  ``jax.eval_shape``) for a dict of arguments. Every integer in ``widths`` (ints, or ints inside
  tuples and lists) is tried one larger: the axes that grow are the ones it sets (an argument that
  changes the parameters' structure instead, such as a number of layers, or that the model
  rejects, is left as it is). Each argument then takes the value that gives the target's size on
  those axes, and the result is checked: the model built from it must have exactly the target's
  leaves and shapes.

  Args:
    shapes_of: builds the parameters (arrays or ``jax.ShapeDtypeStruct`` leaves) from a dict of
      arguments.
    widths: the arguments of the full-size model, ``{name: int or nested tuple of ints}``; other
      values are passed through unchanged.
    target: the params to fit, e.g. ``small_params`` from `jaxprune.structured.slim`.

  Returns:
    ``widths`` with the integers that set parameter sizes replaced by the slimmed sizes.

  Raises:
    ValueError: when ``target`` has other leaves than the model, when an argument would need a
      size that is not a whole positive number, or when no arguments give the target's shapes
      (the message names the first leaf that differs): the model's widths are not all arguments,
      or are tied together in a way the slimmed params are not.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> def init(w):
    ...   return {'l0': jnp.zeros((4, w['hidden'])), 'l1': jnp.zeros((w['hidden'], 2))}
    >>> small = {'l0': jnp.zeros((4, 3)), 'l1': jnp.zeros((3, 2))}
    >>> fit_widths(init, {'hidden': 8}, small)
    {'hidden': 3}
  """
  owner = "fit_widths"
  widths = dict(widths)
  want = _shapes(target)
  base = _shapes(shapes_of(widths))
  if set(base) != set(want):
    missing = sorted(set(base) - set(want))
    extra = sorted(set(want) - set(base))
    raise ValueError(
      f"{owner}: the target's leaves differ from the model's: missing {missing[:3]}, extra "
      f"{extra[:3]}."
    )
  # Which (leaf, axis) each integer sets, and by how much per unit.
  effects: dict[tuple[str, int], dict[tuple[str, int], int]] = {}
  for entry in _entries(widths):
    try:
      grown = _shapes(shapes_of(_with(widths, entry, _value(widths, entry) + 1)))
    except Exception:  # the model rejects the value (e.g. heads that must divide a width)
      continue
    if set(grown) != set(base) or any(len(grown[k]) != len(base[k]) for k in base):
      continue
    diff = {
      (k, a): grown[k][a] - base[k][a]
      for k in base
      for a in range(len(base[k]))
      if grown[k][a] != base[k][a]
    }
    if diff:
      effects[entry] = diff
  owners: dict[tuple[str, int], int] = {}
  for diff in effects.values():
    for axis in diff:
      owners[axis] = owners.get(axis, 0) + 1
  new = dict(widths)
  for entry, diff in effects.items():
    own = [axis for axis in diff if owners[axis] == 1] or list(diff)
    old = _value(widths, entry)
    values: set[int | None] = set()
    for name, a in own:
      change, rest = divmod(want[name][a] - base[name][a], diff[(name, a)])
      values.add(None if rest else old + change)
    value = values.pop() if len(values) == 1 else None
    if value is None or value < 1:
      raise ValueError(
        f"{owner}: argument {_label(entry, widths)} (now {old}) sets axes "
        f"{[f'{n}:{a}' for n, a in own]}, whose target sizes "
        f"{[want[n][a] for n, a in own]} give no single positive value for it."
      )
    new = _with(new, entry, value)
  got = _shapes(shapes_of(new))
  for name in want:
    if got[name] != want[name]:
      raise ValueError(
        f"{owner}: no width arguments give the target's shapes: with {new} the model's leaf "
        f"{name} has shape {got[name]}, the target {want[name]}. Its widths may not all be "
        "arguments, or may be tied together where the slimmed params are not."
      )
  return new


def resize_module(
  module: Any,
  small_variables: Params,
  *example_args: Any,
  fields: Sequence[str] | None = None,
  like: Callable[..., Any] | None = None,
  rtol: float = 1e-4,
  atol: float = 1e-5,
  **init_kwargs: Any,
) -> Any:
  """A Flax linen module rebuilt at the widths of slimmed variables.

  ``module.clone(**new_fields)`` where `fit_widths` finds the fields: ``new.init(key,
  *example_args, **init_kwargs)`` gives variables of exactly the shapes of ``small_variables``.
  So ``new.apply(small_variables, ...)`` runs the slim network with the module's own code (batch
  norm in training mode, ``mutable``, dropout), and ``new.init(...)`` draws a fresh slim network of
  that architecture (Liu et al. 2019's Scratch-E and Scratch-B controls).

  Shapes alone do not prove that the module wires the kept channels as the slimmed function does (a
  zero-padded shortcut that pads by width, for instance, does not): pass ``like=small_fn`` to also
  check that ``new.apply(small_variables, *example_args, **init_kwargs)`` equals
  ``small_fn(small_variables, *example_args)``.

  Args:
    module: a ``flax.linen.Module`` whose widths are fields (ints or tuples of ints).
    small_variables: the slimmed variables (``{'params': ..., 'batch_stats': ...}`` or the params
      alone, as ``module.init`` returns them minus collections absent here).
    *example_args: example inputs for ``module.init``.
    fields: the fields to fit; by default every field holding ints (``name`` and ``parent``
      excluded).
    like: the slimmed function, to check that the rebuilt module computes the same.
    rtol: relative tolerance of that check.
    atol: absolute tolerance of that check.
    **init_kwargs: keyword arguments of ``module.init`` and ``module.apply`` (e.g.
      ``train=False``).

  Returns:
    The rebuilt module.

  Raises:
    ValueError: as `fit_widths`, and when ``like`` computes something else (naming the largest
      difference).

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
    >>> from jaxprune import structured
    >>> class MLP(nn.Module):
    ...   hidden: int = 8
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return nn.Dense(2)(nn.relu(nn.Dense(self.hidden)(x)))
    >>> x = jnp.ones((1, 4))
    >>> model = MLP()
    >>> variables = model.init(jax.random.key(0), x)
    >>> fn = lambda v, x: model.apply(v, x)
    >>> groups = structured.dependency_groups(fn, variables, x)
    >>> small, small_fn = structured.slim(fn, variables, groups, [np.arange(8) < 5])
    >>> structured.resize_module(model, small, x, like=small_fn).hidden
    5

  References:
    Liu et al., `Rethinking the value of network pruning <https://arxiv.org/abs/1810.05270>`_,
    ICLR 2019
  """
  owner = "resize_module"
  names = [
    f.name for f in dataclasses.fields(module) if f.name not in ("parent", "name") and f.init
  ]
  if fields is None:
    fields = [n for n in names if any(_is_width(v) for v in jax.tree.leaves(getattr(module, n)))]
  else:
    unknown = [f for f in fields if f not in names]
    if unknown:
      raise ValueError(f"{owner}: {type(module).__name__} has no fields {unknown}; it has {names}.")
  template = leaves_lib.unwrap_variables(small_variables)
  collections = set(template) if isinstance(template, Mapping) else set()
  wrapped = "params" in collections
  key = jax.random.key(0)

  def shapes_of(widths: dict[str, Any]) -> Any:
    shapes = jax.eval_shape(lambda: module.clone(**widths).init(key, *example_args, **init_kwargs))
    shapes = dict(shapes)
    if not wrapped:
      return shapes["params"]
    return {k: v for k, v in shapes.items() if k in collections}

  widths = fit_widths(shapes_of, {f: getattr(module, f) for f in fields}, template)
  new = module.clone(**widths)
  if like is not None:
    variables = template if wrapped else {"params": template}
    got = np.asarray(new.apply(variables, *example_args, **init_kwargs))
    want = np.asarray(like(small_variables, *example_args))
    if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
      worst = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("nan")
      raise ValueError(
        f"{owner}: {type(module).__name__}({widths}) has the slimmed shapes but computes something "
        f"else (largest difference {worst:.3g}, shapes {got.shape} and {want.shape}): the module "
        "wires the kept channels differently from the slimmed function (e.g. a padding or a "
        "split that depends on the widths)."
      )
  return new
