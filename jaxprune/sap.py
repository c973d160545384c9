"""The PQ index of sparsity and the adaptive pruning amount it sets (SAP, Diao et al. 2023).

For a vector ``w`` of ``d`` entries and ``0 < p < q``, the PQ index is

``I(w) = 1 - d ** (1/q - 1/p) * ||w||_p / ||w||_q``,

in ``[0, 1)``: ``0`` when all ``|w_i|`` are equal, near ``1`` when a few entries carry the norm. In
the authors' code ``d`` counts the entries still kept by the mask (pruned entries are zero and add
nothing to the norms). Sparsity-informed adaptive pruning (SAP) turns it into the number of entries
to keep and to prune at one iteration of iterative pruning:

``r = d * (1 + eta) ** (-q / (q - p)) * (1 - I) ** (q * p / (q - p))`` (rounded up),
``c = floor(d * min(gamma * (1 - r / d), beta))`` pruned (by magnitude) out of the ``d`` kept.

`pq_rate` declares those hyperparameters; ``jaxprune.imp(rate=jaxprune.pq_rate(...))`` prunes each
cycle by them (`sap_prune_count`), and `jaxprune.analysis.pq_index` measures the index of a tree.

References:
  Diao, Wang, Zhang, Yang, Ding & Tarokh, `Pruning deep neural networks from a sparsity perspective
  <https://arxiv.org/abs/2302.05601>`_, ICLR 2023; code
  `diaoenmao/Pruning-Deep-Neural-Networks-from-a-Sparsity-Perspective
  <https://github.com/diaoenmao/Pruning-Deep-Neural-Networks-from-a-Sparsity-Perspective>`_
  (``src/modules/sparsity_index.py`` for the index, ``src/modules/compression.py`` for the bound
  and the count, ``src/utils.py`` for ``beta = 0.9``, ``src/make.py`` for the main settings
  ``(p, q, eta, gamma) = (0.5, 1, 0, 1)`` and ``(1, 2, 0, 1)``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["PQRate", "pq_index_of", "pq_rate", "sap_prune_count"]


class PQRate(NamedTuple):
  """The per-cycle pruning amount of SAP (build it with `pq_rate`).

  Attributes:
    p, q: the norms of the PQ index, ``0 < p < q``.
    eta: ``eta_r >= 0``, which lowers the bound on the entries to keep.
    gamma: ``gamma > 0``, the scale of the pruned fraction ``1 - r / d``.
    beta: ``0 < beta < 1``, the largest fraction of the kept entries one cycle prunes.
  """

  p: float
  q: float
  eta: float
  gamma: float
  beta: float


def _positive(name: str, value: Any, owner: str, *, zero: bool = False) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise TypeError(f"{owner}: {name} must be a finite number, got {value!r}.")
  if value < 0 or (value == 0 and not zero):
    raise ValueError(f"{owner}: {name} must be {'>= 0' if zero else '> 0'}, got {value!r}.")
  return float(value)


def pq_rate(
  p: float = 1.0, q: float = 2.0, *, eta: float = 0.0, gamma: float = 1.0, beta: float = 0.9
) -> PQRate:
  """SAP's adaptive amount for ``jaxprune.imp(rate=...)``: each cycle prunes the count that the PQ
  index of the kept weights gives (`sap_prune_count`), not a fixed fraction.

  Args:
    p: the smaller norm of the index (``0 < p < q``).
    q: the larger norm.
    eta: ``eta_r`` of the keep bound (``>= 0``; ``0`` in the authors' main runs).
    gamma: the scale of the pruned fraction (``> 0``; ``1`` in the main runs).
    beta: the cap on the fraction one cycle prunes (``(0, 1)``; the code's ``0.9``).

  Returns:
    A `PQRate`.

  Raises:
    TypeError: for a value that is not a finite number.
    ValueError: for ``p <= 0``, ``q <= p``, ``eta < 0``, ``gamma <= 0`` or ``beta`` outside ``(0, 1)``.

  Example:
    >>> import optax, jaxprune
    >>> tx = jaxprune.imp(rate=jaxprune.pq_rate(0.5, 1.0), cycles=30, cycle_steps=1000,
    ...                   rewind='init', reset_optimizer=True, inner=optax.sgd(0.1))

  References:
    Diao et al., `Pruning deep neural networks from a sparsity perspective
    <https://arxiv.org/abs/2302.05601>`_, ICLR 2023.
  """
  owner = "pq_rate"
  p = _positive("p", p, owner)
  q = _positive("q", q, owner)
  if q <= p:
    raise ValueError(f"{owner}: q must be larger than p, got p={p!r}, q={q!r}.")
  eta = _positive("eta", eta, owner, zero=True)
  gamma = _positive("gamma", gamma, owner)
  beta = _positive("beta", beta, owner)
  if beta >= 1:
    raise ValueError(f"{owner}: beta must be in (0, 1), got {beta!r}.")
  return PQRate(p, q, eta, gamma, beta)


def _norm_power(x: jax.Array, power: float) -> jax.Array:
  """``sum |x| ** power`` in float32 (entries at 0 add 0 for any positive power)."""
  return jnp.sum(jnp.abs(x.astype(jnp.float32)) ** power)


def pq_index_of(parts: list[jax.Array], kept: jax.Array | float, p: float, q: float) -> jax.Array:
  """The PQ index of the concatenation of ``parts`` with ``kept`` entries counted as ``d``.

  Args:
    parts: arrays whose pruned entries are zero (they add nothing to the norms).
    kept: ``d``, the number of entries the mask keeps.
    p: the smaller norm.
    q: the larger norm.

  Returns:
    ``1 - d ** (1/q - 1/p) * ||w||_p / ||w||_q`` as a float32 scalar; NaN when every entry is zero.
  """
  d = jnp.asarray(kept, jnp.float32)
  sum_p = sum(_norm_power(x, p) for x in parts)
  sum_q = sum(_norm_power(x, q) for x in parts)
  # log-space: ||w||_p = exp(log(sum_p) / p); the ratio stays finite for large d and small p.
  log_ratio = (1 / q - 1 / p) * jnp.log(d) + jnp.log(sum_p) / p - jnp.log(sum_q) / q
  return (1.0 - jnp.exp(log_ratio)).astype(jnp.float32)


def sap_prune_count(kept: jax.Array, index: jax.Array, rate: PQRate) -> jax.Array:
  """How many of ``kept`` entries SAP prunes, given their PQ index.

  ``r = ceil(d * (1 + eta) ** (-q / (q - p)) * (1 - I) ** (q p / (q - p)))`` entries are kept at
  least, and ``c = floor(min(gamma * (d - r), beta * d))`` pruned, clipped to ``[0, d]`` (written
  as ``gamma * (d - r)`` rather than the code's ``d * gamma * (1 - r / d)``, which is the same
  number without the rounding of a division: with ``gamma = 1`` exactly ``d - r``). A NaN index
  (all entries zero) prunes nothing.

  Args:
    kept: ``d`` (an integer scalar, may be traced).
    index: the PQ index of the kept entries.
    rate: the `PQRate`.

  Returns:
    The int32 count.
  """
  p, q = rate.p, rate.q
  d = jnp.asarray(kept, jnp.float32)
  scale = (1.0 + rate.eta) ** (-q / (q - p))
  one_minus = jnp.clip(1.0 - jnp.asarray(index, jnp.float32), 0.0, 1.0)
  bound = jnp.ceil(d * scale * one_minus ** (q * p / (q - p)))
  count = jnp.floor(jnp.minimum(rate.gamma * (d - bound), rate.beta * d))
  count = jnp.where(jnp.isnan(count), 0.0, count)
  return jnp.clip(count, 0.0, d).astype(jnp.int32)
