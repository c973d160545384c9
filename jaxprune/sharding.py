"""Meshes with explicit axes: the library's computations run in auto mode inside them.

``jax.make_mesh`` gives a mesh whose axes are ``Explicit``: every array's type then carries its
sharding, and operations whose output sharding JAX cannot infer without collectives (the
selection's scatter-add histograms, gathers, the reshapes of N:M and block patterns, bit packing)
refuse to trace. The pruners run their work under ``jax.sharding.auto_axes`` when the arrays they
get have explicit axes, so XLA's partitioner places the intermediates as it does for an ``Auto``
mesh, and hand back every output with the sharding the user gave it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax

__all__ = [
  "abstract",
  "explicit",
  "placed_like",
  "placed_tree_like",
  "replicated",
  "resized",
  "run_in_auto_mode",
  "sharding_of",
  "shardings",
]


def sharding_of(x: Any) -> Any:
  """``x``'s sharding: a concrete array's own (on its concrete mesh), a traced array's from its type;
  ``None`` where there is none."""
  if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
    return x.sharding
  try:
    return getattr(jax.typeof(x), "sharding", None)
  except TypeError:  # not an array type (e.g. a Python object in a pytree)
    return None


def placed_like(value: jax.Array, like: Any) -> jax.Array:
  """``value``, an array of ``like``'s shape made without reading ``like`` (all ones, all zeros),
  placed where ``like`` is.

  Outside ``jit`` that is ``like``'s sharding. Inside ``jit`` without ``out_shardings``, XLA puts an
  output that depends on no input on one device (a pruner's initial masks would all land on device
  0); selecting ``value`` under a predicate computed from ``like`` (always true, but not something
  XLA folds away) makes it an elementwise function of ``like``, so the partitioner gives it
  ``like``'s sharding. The values are unchanged.

  Args:
    value: the array to place.
    like: the array to place it like (a param); anything else, or another shape, leaves ``value``
      as it is.

  Returns:
    ``value``, placed like ``like``.
  """
  if not hasattr(like, "shape") or jax.numpy.shape(value) != jax.numpy.shape(like):
    return value
  if isinstance(like, jax.core.Tracer):
    if not jax.numpy.issubdtype(like.dtype, jax.numpy.inexact):
      return value
    nan = jax.numpy.isnan(like)
    other = ~value if value.dtype == jax.numpy.bool_ else value + 1
    return jax.numpy.where(nan | ~nan, value, other)
  if isinstance(like, jax.Array):
    return jax.device_put(value, like.sharding)
  return value


def placed_tree_like(tree: Any, params: Any) -> Any:
  """Every subtree of ``tree`` with ``params``' structure (an optimizer's moments, a score's running
  statistics) placed leaf by leaf like ``params`` (`placed_like`); the rest as it is."""
  structure: Any = jax.tree.structure(params)
  if not jax.tree.leaves(params):
    return tree

  def is_like(x: Any) -> bool:
    return x is not None and jax.tree.structure(x) == structure

  def place(sub: Any) -> Any:
    if not is_like(sub):
      return sub
    return jax.tree.map(placed_like, sub, params)

  return jax.tree.map(place, tree, is_leaf=is_like)


def _is_explicit(sharding: Any) -> bool:
  if not isinstance(sharding, jax.sharding.NamedSharding):
    return False
  types = getattr(sharding.mesh, "axis_types", ())
  return any(t == jax.sharding.AxisType.Explicit for t in types)


def _explicit_mesh(tree: Any) -> Any:
  for x in jax.tree.leaves(tree):
    sharding = sharding_of(x)
    if _is_explicit(sharding):
      return sharding.mesh
  return None


def explicit(tree: Any) -> bool:
  """Whether some array of ``tree`` is sharded over a mesh with an ``Explicit`` axis."""
  return _explicit_mesh(tree) is not None


def run_in_auto_mode(fn: Callable[..., Any], out_sharding: Callable[[], Any], *args: Any) -> Any:
  """``fn(*args)``, run in auto mode if the arguments have explicit mesh axes.

  Args:
    fn: the computation.
    out_sharding: builds the tree of shardings for ``fn``'s outputs (called only in explicit mode),
      e.g. ``lambda: shardings(inputs, mesh)`` for outputs that replace their inputs.
    *args: the arguments.

  Returns:
    ``fn(*args)``, in explicit mode resharded to ``out_sharding()``.
  """
  if not explicit(args):
    return fn(*args)
  return jax.sharding.auto_axes(fn, out_sharding=out_sharding())(*args)


def shardings(tree: Any, like: Any) -> Any:
  """The sharding of every array of ``tree`` (a tree of the same structure) on the explicit mesh of
  ``like``'s arrays: an array placed elsewhere (a step counter made on one device) is replicated
  over that mesh."""
  mesh = _explicit_mesh(like)
  return jax.tree.map(lambda x: _on_mesh(x, mesh), tree)


def _on_mesh(x: Any, mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """``x``'s sharding if it is sharded over ``mesh``, else replicated over ``mesh``."""
  sharding = sharding_of(x)
  if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh == mesh:
    return sharding
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def replicated(x: Any) -> Any:
  """A sharding replicated over ``x``'s mesh."""
  return sharding_of(x).update(spec=jax.sharding.PartitionSpec())


def resized(x: Any, axis: int, length: int) -> Any:
  """``x``'s sharding for an array whose axis ``axis`` has ``length`` entries instead: that axis
  keeps its mesh axes if ``length`` divides among them and is replicated otherwise."""
  sharding = sharding_of(x)
  spec = list(sharding.spec) + [None] * (jax.numpy.ndim(x) - len(sharding.spec))
  entry = spec[axis]
  names = entry if isinstance(entry, tuple) else (entry,)
  sizes = dict(sharding.mesh.shape)
  split = math.prod(sizes[n] for n in names if n is not None)
  if length % split:
    spec[axis] = None
  return sharding.update(spec=jax.sharding.PartitionSpec(*spec))


def abstract(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """``tree``'s arrays as ``jax.ShapeDtypeStruct`` placed on ``mesh``: the targets that restore a
  checkpoint of a sharded state onto that mesh (of any size).

  An array sharded over ``mesh`` keeps its sharding; one placed elsewhere (an optimizer's step
  counter, made on the default device) is replicated over ``mesh``, so every restored leaf lives on
  the same devices and the restored state feeds one jitted step.

  Args:
    tree: a template of the state, e.g. ``tx.init(params)`` for params placed on ``mesh``.
    mesh: the mesh to restore onto.

  Returns:
    A tree of ``jax.ShapeDtypeStruct`` of ``tree``'s structure.

  Example:
    >>> import jax, jax.numpy as jnp, optax, jaxprune
    >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> tx = optax.chain(optax.adam(1e-3), jaxprune.magnitude_pruning(0.5))
    >>> state = tx.init({"w": jnp.ones((4, 4))})
    >>> target = jaxprune.sharding.abstract(state, mesh)
    >>> jaxprune.masks.find_states(target, lambda s: hasattr(s, "masks"))[0].count.sharding.spec
    P()
  """
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(jax.numpy.shape(x), x.dtype, sharding=_on_mesh(x, mesh)), tree
  )
