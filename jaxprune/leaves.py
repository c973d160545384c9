"""Which leaves of a parameter tree are pruned, and how they are named.

A leaf is named by its path with ``/`` between keys, e.g. ``params/Dense_0/kernel``. Flax nnx wraps
arrays in ``Variable`` objects whose array sits under the attribute ``value``; that attribute is left
out of the name, so a leaf has the same name in an ``nnx.State`` and in its pure-array form.

The default selection (``prune=None``) prunes what practitioners prune: the kernels of dense,
convolution and attention projections. A leaf is selected iff

* it is floating point,
* it has at least two dimensions, and
* the last key of its path is a kernel name (`KERNEL_NAMES`): ``kernel`` (Flax linen and nnx
  ``Dense``/``Linear``, ``Conv``, ``DenseGeneral``, ``Einsum``, attention projections, Hugging Face
  Flax models), ``weight`` (Equinox, PyTorch-style trees) or ``w`` (Haiku).

So embedding tables (``embedding``, ``embeddings``), position embeddings, ViT's ``cls_token``,
normalisation scales and biases stay dense. Fallback: when no leaf of the tree passes that rule (no
floating-point leaf with ``ndim >= 2`` has a kernel name, as in a plain dict such as
``{'a': ..., 'b': ...}``), every floating-point leaf with ``ndim >= 2`` is selected instead. See
`default_selection`. (Equinox's and PyTorch's ``Embedding`` also name their table ``weight``: select
such trees explicitly, e.g. with a regular expression.)

A `Selector` says which leaves to prune: ``None`` (the default selection), a regular expression or a
list of them matched in full against leaf names, a predicate ``(name, leaf) -> bool``, or a
`TreeSelector`, which sees the whole tree; `all_kernels`, `kernels_except`, `inner_kernels` and
`transformer_blocks` make the common ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Union

import jax
import jax.numpy as jnp

if TYPE_CHECKING:  # jaxprune.typing imports this module
  from jaxprune.typing import ArrayTree, Params

__all__ = [
  "Selector",
  "TreeSelector",
  "KERNEL_NAMES",
  "path_str",
  "named_leaves",
  "flatten_up_to",
  "natural_key",
  "is_kernel",
  "default_prunable",
  "default_selection",
  "prunable_paths",
  "selected_names",
  "all_kernels",
  "kernels_except",
  "inner_kernels",
  "transformer_blocks",
  "unwrap_variables",
  "unwrap_variable",
  "is_variable",
]

KERNEL_NAMES = frozenset({"kernel", "weight", "w"})
"""Last path keys that name a weight matrix or tensor in the default selection."""


class TreeSelector:
  """A selector that sees the whole tree: the ready-made selectors (`all_kernels`, ...) are these.

  ``select(tree)`` gives one flag per leaf (``jax.tree.leaves`` order); `prunable_paths` uses it for
  ``prune=``. A tree selector is not a ``(name, leaf)`` predicate: it may need all leaves to decide
  (e.g. which kernel comes first).

  Args:
    fn: ``fn(named) -> flags``, where ``named`` is `named_leaves` of the tree.
    description: how the selector is shown (in errors and ``repr``).
    allow_empty: whether selecting no leaf is fine; if not, `select` raises ``ValueError``.
  """

  def __init__(
    self,
    fn: Callable[[list[tuple[str, Any]]], Sequence[bool]],
    description: str,
    *,
    allow_empty: bool = False,
  ):
    self._fn = fn
    self.description = description
    self.allow_empty = allow_empty

  def select_named(self, named: list[tuple[str, Any]], *, owner: str = "select") -> list[bool]:
    """Flags for already-named leaves (see `select`)."""
    flags = [bool(f) for f in self._fn(named)]
    if len(flags) != len(named):
      raise ValueError(
        f"{owner}: selector {self.description} returned {len(flags)} flags for {len(named)} leaves."
      )
    if not self.allow_empty and named and not any(flags):
      raise ValueError(
        f"{owner}: selector {self.description} selects no leaf; leaf names are "
        f"{[name for name, _ in named]}."
      )
    return flags

  def select(self, tree: ArrayTree, *, owner: str = "select") -> list[bool]:
    """Which leaves of ``tree`` are selected, one flag per leaf in ``jax.tree.leaves`` order.

    Raises:
      ValueError: if the tree has leaves but none is selected (unless ``allow_empty``).
    """
    return self.select_named(named_leaves(tree), owner=owner)

  def __repr__(self) -> str:
    return self.description


Selector = Union[None, str, Sequence[str], Callable[[str, Any], bool], TreeSelector]
"""What to prune: ``None`` (the default selection, see `default_selection`), a regular expression or a
list of them matched in full against leaf names, a predicate ``(name, leaf) -> bool``, or a
`TreeSelector`."""


def path_str(path: tuple[Any, ...]) -> str:
  """The ``/``-joined name of a pytree key path (nnx's ``.value`` attribute left out)."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value":
      continue
    parts.append(jax.tree_util.keystr((key,), simple=True, separator="/"))
  return "/".join(parts)


def is_variable(x: Any) -> bool:
  """Whether ``x`` is a Flax nnx ``Variable`` (duck-typed, so flax is not imported)."""
  return callable(getattr(x, "get_value", None))


def unwrap_variable(x: Any) -> Any:
  """The array inside an nnx ``Variable``; anything else unchanged."""
  return x.get_value() if is_variable(x) else x


def unwrap_variables(tree: ArrayTree) -> ArrayTree:
  """``tree`` with every Flax nnx ``Variable`` replaced by the array it holds (other trees unchanged).

  ``nnx.Optimizer`` initialises optimizers with ``Variable``-wrapped params; state built from the
  unwrapped tree holds plain arrays, which nnx wraps itself.
  """
  return jax.tree.map(unwrap_variable, tree, is_leaf=is_variable)


def named_leaves(tree: ArrayTree) -> list[tuple[str, Any]]:
  """``(name, leaf)`` for every array leaf of ``tree``, in ``jax.tree.leaves`` order."""
  return [(path_str(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def flatten_up_to(treedef: Any, tree: ArrayTree) -> list[Any]:
  """``treedef.flatten_up_to(tree)``: the subtrees of ``tree`` at the leaves of the structure
  ``treedef`` (a ``jax.tree_util.PyTreeDef``), e.g. a masks tree's ``None`` entries.

  jaxlib ships no type stubs for ``PyTreeDef``, so a type checker does not see its methods; the
  library calls this one through here.
  """
  return treedef.flatten_up_to(tree)


def _is_float_matrix(leaf: Any) -> bool:
  return bool(jnp.issubdtype(jnp.result_type(leaf), jnp.floating)) and jnp.ndim(leaf) >= 2


def _last_key(name: str) -> str:
  return name.rsplit("/", 1)[-1]


def is_kernel(name: str, leaf: Any) -> bool:
  """The kernel rule of the default selection: floating point, ``ndim >= 2``, and the last key of
  ``name`` in `KERNEL_NAMES`."""
  return _last_key(name) in KERNEL_NAMES and _is_float_matrix(leaf)


def default_prunable(name: str, leaf: Any) -> bool:
  """Whether the default selection's kernel rule selects one leaf (see `is_kernel`).

  One leaf cannot tell whether its tree has kernels at all, so the fallback of the default
  selection (every floating-point leaf with ``ndim >= 2`` in a tree without kernel names) is not
  applied here; `default_selection` and ``prune=None`` apply it.
  """
  return is_kernel(name, leaf)


def _default_flags(named: list[tuple[str, Any]]) -> list[bool]:
  flags = [is_kernel(name, leaf) for name, leaf in named]
  if not any(flags):  # no kernel names in this tree: every floating-point matrix or tensor
    flags = [_is_float_matrix(leaf) for _, leaf in named]
  return flags


def default_selection(tree: ArrayTree) -> list[bool]:
  """The default selection (``prune=None``), one flag per leaf in ``jax.tree.leaves`` order.

  A leaf is selected iff it is floating point, has ``ndim >= 2`` and the last key of its path is in
  `KERNEL_NAMES` (``kernel``, ``weight``, ``w``): the kernels of dense, convolution and attention
  projections, not embeddings, ``cls_token``, position embeddings, normalisation scales or biases.

  Fallback: if no leaf of ``tree`` is selected by that rule (no kernel names, as in plain dicts of
  arrays such as ``{'a': ..., 'b': ...}``), every floating-point leaf with ``ndim >= 2`` is selected.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import leaves
    >>> params = {'embed': {'embedding': jnp.ones((10, 4))},
    ...           'Dense_0': {'kernel': jnp.ones((4, 4)), 'bias': jnp.ones(4)}}
    >>> leaves.default_selection(params)  # leaves: Dense_0/bias, Dense_0/kernel, embed/embedding
    [False, True, False]
    >>> leaves.default_selection({'a': jnp.ones((2, 2)), 'b': jnp.ones(2)})  # fallback
    [True, False]
  """
  return _default_flags(named_leaves(tree))


def _as_predicate(
  prune: str | Sequence[str] | Callable[[str, Any], bool], owner: str
) -> tuple[Callable[[str, Any], bool], list[str]]:
  if callable(prune):
    return prune, []
  patterns = [prune] if isinstance(prune, str) else list(prune)
  for pattern in patterns:
    if not isinstance(pattern, str):
      raise TypeError(
        f"{owner}: prune patterns must be strings (regular expressions), got {pattern!r}."
      )
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise ValueError(
        f"{owner}: prune pattern {pattern!r} is not a valid regular expression: {e}."
      ) from None
  return (lambda name, leaf: any(c.fullmatch(name) for c in compiled)), patterns


def prunable_paths(params: Params, prune: Selector, *, owner: str) -> list[bool]:
  """Which leaves of ``params`` are pruned, one flag per leaf in ``jax.tree.leaves`` order.

  Args:
    params: the parameter tree.
    prune: the selector (see `Selector`); ``None`` is `default_selection`.
    owner: the name of the transformation, for error messages.

  Returns:
    A list of booleans, one per leaf.

  Raises:
    ValueError: if a pattern is not a valid regular expression or matches no leaf, or a
      `TreeSelector` selects no leaf.
    TypeError: if a selected leaf is not floating point, or a pattern is not a string.
  """
  named = named_leaves(params)
  if prune is None:
    flags = _default_flags(named)
  elif isinstance(prune, TreeSelector):
    flags = prune.select_named(named, owner=owner)
  else:
    predicate, patterns = _as_predicate(prune, owner)
    for pattern in patterns:
      if not any(re.fullmatch(pattern, name) for name, _ in named):
        raise ValueError(
          f"{owner}: prune pattern {pattern!r} matches no leaf; leaf names are "
          f"{[name for name, _ in named]}."
        )
    flags = [bool(predicate(name, leaf)) for name, leaf in named]
  for (name, leaf), selected in zip(named, flags):
    if selected and not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
        f"{owner}: leaf {name!r} of dtype {jnp.result_type(leaf)} is selected for pruning, but only "
        "floating-point leaves can be pruned."
      )
  return flags


def selected_names(
  params: Params, prune: Selector = None, *, owner: str = "selected_names"
) -> list[str]:
  """The names of the leaves of ``params`` that ``prune`` selects, in ``jax.tree.leaves`` order.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxprune import leaves
    >>> params = {'Dense_0': {'kernel': jnp.ones((3, 4)), 'bias': jnp.ones(4)},
    ...           'Dense_1': {'kernel': jnp.ones((4, 4))}, 'Dense_2': {'kernel': jnp.ones((4, 2))}}
    >>> leaves.selected_names(params)
    ['Dense_0/kernel', 'Dense_1/kernel', 'Dense_2/kernel']
    >>> leaves.selected_names(params, leaves.inner_kernels())
    ['Dense_1/kernel']
  """
  named = named_leaves(params)
  return [name for (name, _), f in zip(named, prunable_paths(params, prune, owner=owner)) if f]


# ------------------------------------------------------------------------------ ready-made selectors


def all_kernels() -> TreeSelector:
  """Every kernel (`is_kernel`: floating point, ``ndim >= 2``, last key ``kernel``/``weight``/``w``).

  Unlike the default selection there is no fallback: a tree without kernels raises ``ValueError``
  when the selector is used.
  """
  return TreeSelector(lambda named: [is_kernel(n, leaf) for n, leaf in named], "all_kernels()")


_NUMBER = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
  """Sort key of a leaf name that compares its keys in turn, digit runs as numbers
  (``Dense_2`` before ``Dense_10``, ``layer/2`` before ``layer/10``)."""
  return tuple(
    tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in _NUMBER.split(key) if p)
    for key in name.split("/")
  )


def _check_count(value: Any, what: str) -> int:
  if not isinstance(value, int) or value < 0:
    raise ValueError(f"kernels_except: {what} must be a bool or a non-negative int, got {value!r}.")
  return int(value)


def kernels_except(first: bool | int = True, last: bool | int = True) -> TreeSelector:
  """Every kernel (as `all_kernels`) except the first and/or last ones.

  A parameter tree does not record the order in which the model applies its layers
  (``jax.tree.leaves`` even sorts dict keys, so ``Dense_10`` comes before ``Dense_2``), so the
  kernels are put in this order:

  1. stem kernels: a path key (outside numbered blocks) is ``stem``, ``conv_init``, ``conv_in`` or
     contains ``embed`` (a ViT's patch-embedding convolution);
  2. kernels inside numbered blocks (see `transformer_blocks`: ``h/0/...``, ``layer/3/...``,
     ``ResNetBlock_1/...``);
  3. the other kernels;
  4. head kernels: a path key (outside numbered blocks) is ``head``, ``lm_head``, ``classifier``,
     ``logits``, ``score``, ``fc``, ``qa_outputs`` or ``conv_out``;

  and within each group by the natural order of names (`natural_key`: path keys in turn, digit runs
  as numbers, so ``Dense_2`` before ``Dense_10`` and ``layers/2`` before ``layers/10``). "First" is
  the start of that order and "last" its end. For auto-named Flax linen models (``Conv_0``, ...,
  ``Dense_0``, ``Dense_1``), numbered lists of layers and ResNets (stem, blocks, ``Dense_0`` head)
  this is the order of computation; for Hugging Face ViT the first is the patch embedding and the
  last the classifier, for BERT the last is the classifier (after the pooler). A model without a
  stem kernel starts with its first kernel by name, which need not be the first computed (in BERT
  it is ``bert/encoder/layer/0/attention/output/dense/kernel``, as ``output`` sorts before
  ``self``): check what is left out with `selected_names`, or name the leaves with a regular
  expression.

  Args:
    first: leave out the first kernel (``True``) or the first ``first`` kernels (an int).
    last: leave out the last kernel (``True``) or the last ``last`` kernels (an int).

  Returns:
    A `TreeSelector`; using it on a tree where no kernel is left raises ``ValueError``.

  Raises:
    ValueError: if ``first`` or ``last`` is not a bool or a non-negative int.
  """
  n_first = _check_count(first, "first")
  n_last = _check_count(last, "last")

  def fn(named):
    kernels = sorted(
      (i for i, (n, leaf) in enumerate(named) if is_kernel(n, leaf)),
      key=lambda i: _layer_order(named[i][0]),
    )
    kept = set(kernels[n_first : max(n_first, len(kernels) - n_last)])
    return [i in kept for i in range(len(named))]

  return TreeSelector(fn, f"kernels_except(first={first!r}, last={last!r})")


_STEM_KEY = re.compile(r"(?i)stem|conv_?init|conv_?in|.*embed.*")
_HEAD_KEY = re.compile(r"(?i)head|lm_head|classifier|logits|score|fc|qa_outputs|conv_?out")


def _layer_order(name: str) -> tuple:
  if _in_block(name):
    group = 1
  else:
    keys = name.split("/")[:-1]
    group = (
      0
      if any(_STEM_KEY.fullmatch(k) for k in keys)
      else 3
      if any(_HEAD_KEY.fullmatch(k) for k in keys)
      else 2
    )
  return (group, natural_key(name))


def inner_kernels() -> TreeSelector:
  """Every kernel except the first and the last: ``kernels_except(first=True, last=True)``."""
  return kernels_except(first=True, last=True)


# A repeated block: a numeric key after a container named `h` (GPT-2) or `...layer...`/`...block...`
# (`layer/3` BERT/ViT, `layers/1` Llama/nnx lists, `block/0` T5, `resblocks/2` CLIP), or a key with
# such a name and a number (`layers_1`, `blocks_2`, `encoderblock_0`: linen submodule lists).
_BLOCK_NAME = r"(?:h|[a-z_]*(?:layer|block)s?[a-z_]*?)"
_BLOCK_KEY = re.compile(rf"(?i){_BLOCK_NAME}_\d+")
_CONTAINER = re.compile(rf"(?i){_BLOCK_NAME}")


def _in_block(name: str) -> bool:
  keys = name.split("/")[:-1]
  for i, key in enumerate(keys):
    if "norm" in key.lower():
      continue
    if _BLOCK_KEY.fullmatch(key):
      return True
    if (
      key.isdigit()
      and i > 0
      and _CONTAINER.fullmatch(keys[i - 1])
      and "norm" not in keys[i - 1].lower()
    ):
      return True
  return False


def transformer_blocks() -> TreeSelector:
  """The kernels (as `all_kernels`) inside repeated numbered blocks.

  A kernel is inside a block if a key of its path is a number after a container key named ``h`` or
  containing ``layer`` or ``block`` (``h/0/...`` GPT-2, ``layer/3/...`` BERT and ViT, ``layers/1/...``
  Llama and nnx lists, ``block/0/...`` T5, ``resblocks/2/...``), or is such a name with a number
  (``layers_1/...``, ``blocks_2/...``, ``encoderblock_0/...``: Flax linen submodule lists). Names
  containing ``norm`` (``LayerNorm_0``) are not blocks; auto-named modules such as ``Dense_0`` are
  not blocks either. So embeddings, patch-embedding convolutions, poolers and classifier heads are
  left out. Blocks stacked into one array by ``nn.scan`` have no numbered key: select those by name.

  Returns:
    A `TreeSelector`; using it on a tree with no such kernel raises ``ValueError``.
  """
  return TreeSelector(
    lambda named: [is_kernel(n, leaf) and _in_block(n) for n, leaf in named], "transformer_blocks()"
  )
