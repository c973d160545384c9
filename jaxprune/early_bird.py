"""Early-bird tickets (You et al. 2020): stop dense training when the masks it would prune to settle.

Once per epoch (or any interval), draw the masks that pruning the current weights would give: a
pruner's masks (`jaxprune.get_masks`) or a one-shot selection of the current weights
(``jaxprune.prune(params, sparsity, distribution="global")``, from any score). `EarlyBird` keeps the
last ``window`` of them (5) and measures the normalized Hamming distance (`mask_distance`: the
fraction of entries on which two masks differ) between the newest and each older one; the ticket has
emerged when all of them are at most ``threshold`` (0.1). Training can then stop, and the sparse
network of the newest masks be trained on (the authors fine-tune it from the weights at that epoch).

The tracker runs on the host, between training steps: it keeps the ``window`` mask trees (booleans,
as given) and reduces their differences on the devices that hold them.

References:
  You, Li, Xu, Fu, Wang, Chen, Baraniuk, Wang & Lin, `Drawing early-bird tickets: towards more
  efficient training of deep networks <https://arxiv.org/abs/1909.11957>`_, ICLR 2020; code
  `GATECH-EIC/Early-Bird-Tickets <https://github.com/GATECH-EIC/Early-Bird-Tickets>`_ (``main.py``,
  class ``EarlyBird``: ``epoch_keep=5``, distances ``1 - mean(mask_new == mask_old)``, emerged when
  every one is ``<= 0.1``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from jaxprune import masks as masks_lib
from jaxprune.typing import Masks

__all__ = ["EarlyBird", "EarlyBirdState", "mask_distance"]


def _named(masks: Masks, owner: str) -> dict[str, jnp.ndarray]:
  named = masks_lib.device_arrays(masks)
  for name, m in named.items():
    if m.dtype != jnp.bool_:
      raise TypeError(
        f"{owner}: leaf {name!r} has dtype {m.dtype}, expected boolean masks (for example from "
        "jaxprune.get_masks or jaxprune.prune)."
      )
  if not named:
    raise ValueError(f"{owner}: the masks tree has no mask (every leaf is None).")
  return named


def _distance(a: dict[str, jnp.ndarray], b: dict[str, jnp.ndarray], owner: str) -> float:
  if a.keys() != b.keys():
    raise ValueError(f"{owner}: the masks prune different leaves: {sorted(a)} vs {sorted(b)}.")
  differ, total = 0, 0
  for name, x in a.items():
    if x.shape != b[name].shape:
      raise ValueError(f"{owner}: leaf {name!r} has shape {x.shape} in one mask, {b[name].shape}.")
    differ += masks_lib.count_true(x != b[name])
    total += x.size
  return differ / total


def mask_distance(a: Masks, b: Masks) -> float:
  """The normalized Hamming distance of two mask trees: the fraction of all their entries (over
  every masked leaf) on which they differ.

  Args:
    a: a masks tree (``True`` = kept; ``None`` leaves are skipped; packed masks are unpacked).
    b: a masks tree with the same masked leaves and shapes.

  Returns:
    A float in ``[0, 1]``.

  Raises:
    ValueError: for trees with different masked leaves, a leaf whose shapes differ (naming it), or
      no mask at all.
    TypeError: for a leaf that is not boolean (naming it).

  Example:
    >>> import jax.numpy as jnp, jaxprune
    >>> a = {'w': jnp.array([True, True, False, False]), 'b': None}
    >>> b = {'w': jnp.array([True, False, True, False]), 'b': None}
    >>> jaxprune.early_bird.mask_distance(a, b)
    0.5
  """
  owner = "mask_distance"
  return _distance(_named(a, owner), _named(b, owner), owner)


class EarlyBirdState(NamedTuple):
  """What `EarlyBird` has seen.

  Attributes:
    masks: the last ``window`` mask trees recorded (as ``{leaf path: bool array}``), oldest first.
    distances: the distance of the newest masks to each older one, oldest first (``window - 1``
      entries, ``1.0`` until ``window`` masks have been recorded, as in the authors' code).
    count: how many mask trees were recorded.
    emerged: whether every distance is at most the threshold now.
    emerged_at: the ``count`` at which the ticket first emerged (``count - 1`` is the index of the
      masks that make it), or ``None``.
  """

  masks: tuple[dict[str, jnp.ndarray], ...]
  distances: tuple[float, ...]
  count: int  # type: ignore[assignment]  # shadows tuple.count, as optax states do
  emerged: bool
  emerged_at: int | None


class EarlyBird(NamedTuple):
  """The early-bird criterion: ``init()``, then ``update(state, masks)`` once per epoch.

  Attributes:
    window: how many mask trees are kept (the newest is compared with the ``window - 1`` older).
    threshold: the largest distance at which the ticket counts as drawn.

  Example:
    Masks at 50% sparsity of the current weights, once per "epoch" of a run whose weights settle
    (the noise on them halves every epoch):

    >>> import jax, jaxprune
    >>> tracker = jaxprune.early_bird.EarlyBird(window=5, threshold=0.1)
    >>> state = tracker.init()
    >>> w = jax.random.normal(jax.random.key(0), (32, 32))
    >>> for epoch in range(20):
    ...   noise = jax.random.normal(jax.random.key(epoch + 1), w.shape) * 0.5 ** epoch
    ...   params = {'w': w + noise}
    ...   state = tracker.update(state, jaxprune.prune(params, 0.5, distribution='global'))
    ...   if state.emerged:  # stop dense training here
    ...     break
    >>> epoch, [round(d, 3) for d in state.distances]
    (7, [0.062, 0.043, 0.023, 0.008])

  References:
    You et al., `Drawing early-bird tickets: towards more efficient training of deep networks
    <https://arxiv.org/abs/1909.11957>`_, ICLR 2020.
  """

  window: int = 5
  threshold: float = 0.1

  def _check(self) -> None:
    if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 2:
      raise ValueError(f"EarlyBird: window must be an int >= 2, got {self.window!r}.")
    t = self.threshold
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 <= t <= 1):
      raise ValueError(f"EarlyBird: threshold must be a number in [0, 1], got {t!r}.")

  def init(self) -> EarlyBirdState:
    """The state before any masks are recorded.

    Raises:
      ValueError: for a ``window`` below 2 or a ``threshold`` outside ``[0, 1]``.
    """
    self._check()
    return EarlyBirdState((), (1.0,) * (self.window - 1), 0, False, None)

  def update(self, state: EarlyBirdState, masks: Masks) -> EarlyBirdState:
    """Records ``masks`` and measures their distance to the older ones.

    Args:
      state: the state from `init` or the previous update.
      masks: the masks of now (a tree, ``None`` for unpruned leaves).

    Returns:
      The new state; ``state.emerged`` says whether the criterion holds.

    Raises:
      ValueError: for masks whose leaves or shapes differ from the recorded ones (naming the leaf).
      TypeError: for a leaf that is not boolean (naming it).
    """
    self._check()
    owner = "EarlyBird.update"
    named = _named(masks, owner)
    kept = (*state.masks, named)[-self.window :]
    distances = state.distances
    if len(kept) == self.window:
      distances = tuple(_distance(named, old, owner) for old in kept[:-1])
    emerged = len(kept) == self.window and all(d <= self.threshold for d in distances)
    count = state.count + 1
    first = state.emerged_at if state.emerged_at is not None else (count if emerged else None)
    return EarlyBirdState(kept, distances, count, emerged, first)
