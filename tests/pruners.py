"""The registry of every pruning transformation the library exports, for the conformance suite.

Each entry builds a pruner from keyword arguments shared by all (``schedule``, ``inner``, ...) and says
how many entries of each leaf it must prune at a given scheduled sparsity. Later methods add theirs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import optax

import jaxprune
from jaxprune.structured.channel_group import ChannelGroup, Member
from jaxprune.structured_pruning import structured_pruning

SPARSITY = 0.75


@dataclasses.dataclass(frozen=True)
class Pruner:
  name: str
  factory: Callable[..., Any]  # an exported jaxprune factory
  kwargs: dict[str, Any]  # its arguments in this entry
  kind: str  # 'layerwise', 'global', 'erk' or 'nm': how exact sparsity is checked
  group: tuple[int, ...] = ()  # block shape, for block patterns
  channel: bool = False
  # 'schedule' (takes schedule=), 'cycles' (imp: CYCLES), 'static' (pruned from step 0 on),
  # 'dst' (DST_STEPS; sparsity constant from step 0) or 'dst_gradual' (DST_STEPS; the schedule's ramp)
  timing: str = "schedule"
  target: float = SPARSITY  # what the schedule is applied to: the final sparsity, or imp's rate
  leaf_targets: tuple[tuple[str, float], ...] = ()  # per-leaf targets (imp's leaf_rates)
  static_args: tuple[str, ...] = ()  # arguments inject_hyperparams must not trace
  # (pruner, scheduled) -> exact zeros per leaf, for pruners whose counts the kinds do not describe
  zeros: Callable[..., dict[str, int]] | None = None
  # (pruner, step) -> exact zeros per leaf after update ``step``, for pruners whose counts change
  # with the step in ways a schedule does not describe (gap: one partition dense at a time)
  zeros_at: Callable[..., dict[str, int]] | None = None

  def make(self, **kwargs):
    return self.factory(**self.kwargs, **kwargs)

  @property
  def method(self) -> jaxprune.engine.Method:
    """The engine declaration behind the factory: the suite reads what it needs from it."""
    timing = {
      "cycles": CYCLES,
      "dst": DST_STEPS,
      "dst_gradual": DST_STEPS,
      "schedule": {"schedule": jaxprune.schedules.one_shot(0)},  # platon takes no default
    }.get(self.timing, {})
    return jaxprune.engine.method_of(self.make(**timing, inner=optax.sgd(0.1)))

  @property
  def uses_grads(self) -> bool:
    """Whether its masks depend on gradients (the chain and inner= forms then differ)."""
    return self.method.score.reads_grads or self.method.rule.reads_grads

  @property
  def persistent(self) -> bool:
    """Whether pruned weights are zero (else the masks are ephemeral, the weights dense)."""
    return self.method.application == "persistent"

  @property
  def chain(self) -> bool:
    """Whether it can be the last link of a chain (else it needs inner=)."""
    return self.method.needs_inner is None and self.method.statistics == "keep"


S = {"sparsity": SPARSITY}
# imp's timing in the suite: prunes at updates 1, 3 and 5, the update steps of the suite's schedule.
CYCLES = {"cycles": 3, "cycle_steps": [1, 2, 2, 3]}
IMP_STATIC = ("cycles", "rewind", "seed")
# Dynamic sparse training in the suite: mask updates at 1, 3 and 5 as well.
DST_STEPS = {"frequency": 2, "begin_step": 1, "end_step": 5}
DST_STATIC = ("frequency", "begin_step", "end_step", "seed")
# structured_pruning in the suite: one channel group over the hidden features of the suite's MLP
# (test_conformance.make_params): dense0's output columns and dense1's input rows, 32 channels. The
# biases stay out of it, since the suite checks that only the kernels carry masks.
_HIDDEN = np.arange(32)[:, None]
STRUCTURED_STATIC = ("round_to", "min_keep", "cycles")
HIDDEN = ChannelGroup(
  "hidden", 32, (Member("dense0/kernel", 1, _HIDDEN), Member("dense1/kernel", 0, _HIDDEN))
)


def hidden_zeros(pruner: Pruner, scheduled) -> dict[str, int]:
  """round(s * 32) channels removed: 16 entries each in dense0's kernel, 8 in dense1's."""
  removed = _round(scheduled(pruner.target), 32)
  return {"dense0/kernel": removed * 16, "dense1/kernel": removed * 8}


PRUNERS = [
  Pruner("magnitude", jaxprune.magnitude_pruning, S, "layerwise"),
  Pruner("magnitude_global", jaxprune.magnitude_pruning, {**S, "distribution": "global"}, "global"),
  Pruner("magnitude_erk", jaxprune.magnitude_pruning, {**S, "distribution": "erk"}, "erk"),
  Pruner("magnitude_packed", jaxprune.magnitude_pruning, {**S, "packed_masks": True}, "layerwise"),
  # AP with gradual pruning (Liu et al. 2023): part of each prune among negative weights, same counts.
  Pruner(
    "magnitude_activate_while_pruning",
    jaxprune.magnitude_pruning,
    {**S, "distribution": "global", "activate_while_pruning": 0.1},
    "global",
  ),
  Pruner(
    "magnitude_2:4", jaxprune.magnitude_pruning, {"pattern": jaxprune.patterns.n_m(2, 4)}, "nm"
  ),
  Pruner(
    "magnitude_block",
    jaxprune.magnitude_pruning,
    {**S, "pattern": jaxprune.patterns.block((2, 4))},
    "layerwise",
    group=(2, 4),
  ),
  Pruner(
    "magnitude_channel",
    jaxprune.magnitude_pruning,
    {**S, "pattern": jaxprune.patterns.channel()},
    "layerwise",
    channel=True,
  ),
  Pruner("random", jaxprune.random_pruning, {**S, "seed": 3}, "layerwise"),
  Pruner("saliency", jaxprune.saliency_pruning, S, "layerwise"),
  Pruner("saliency_global", jaxprune.saliency_pruning, {**S, "distribution": "global"}, "global"),
  Pruner(
    "static_sparse_random",
    jaxprune.static_sparse,
    {**S, "distribution": "uniform"},
    "layerwise",
    timing="static",
    static_args=("seed",),
  ),
  Pruner(
    "set_sparse", jaxprune.set_sparse, {**S, "seed": 2}, "erk", timing="dst", static_args=DST_STATIC
  ),
  Pruner(
    "rigl", jaxprune.rigl, {**S, "drop_fraction": 0.5}, "erk", timing="dst", static_args=DST_STATIC
  ),
  Pruner(
    "rigl_uniform_packed",
    jaxprune.rigl,
    {**S, "distribution": "uniform", "drop_schedule": "constant", "packed_masks": True},
    "layerwise",
    timing="dst",
    static_args=DST_STATIC,
  ),
  Pruner(
    "rigl_block",
    jaxprune.rigl,
    {**S, "distribution": "uniform", "pattern": jaxprune.patterns.block((2, 4))},
    "layerwise",
    group=(2, 4),
    timing="dst",
    static_args=DST_STATIC,
  ),
  Pruner(
    "set_sparse_overrides",
    jaxprune.set_sparse,
    {**S, "distribution": "uniform", "overrides": {"dense1/kernel": 0.5}, "seed": 1},
    "layerwise",
    timing="dst",
    leaf_targets=(("dense1/kernel", 0.5),),
    static_args=DST_STATIC,
  ),
  Pruner("granet", jaxprune.granet, S, "erk", timing="dst_gradual", static_args=DST_STATIC),
  Pruner(
    "imp",
    jaxprune.imp,
    {"rate": 0.4},
    "global",
    timing="cycles",
    target=0.4,
    static_args=IMP_STATIC,
  ),
  Pruner(
    "imp_rewind_layerwise",
    jaxprune.imp,
    {
      "rate": 0.5,
      "distribution": "uniform",
      "leaf_rates": {"dense1/kernel": 0.25},
      "rewind": "init",
    },
    "layerwise",
    timing="cycles",
    target=0.5,
    leaf_targets=(("dense1/kernel", 0.25),),
    static_args=IMP_STATIC,
  ),
  Pruner(
    "imp_lr_rewinding_packed",
    jaxprune.imp,
    {"sparsity": 0.75, "reset_optimizer": True, "packed_masks": True},
    "global",
    timing="cycles",
    target=1 - 0.25 ** (1 / 3),
    static_args=IMP_STATIC,
  ),
  Pruner(
    "imp_random_masks",
    jaxprune.imp,
    {"rate": 0.4, "random_masks": True, "seed": 5},
    "global",
    timing="cycles",
    target=0.4,
    static_args=IMP_STATIC,
  ),
  # AP (Liu et al. 2023): the same counts as imp, part of each prune among negative weights.
  Pruner(
    "imp_activate_while_pruning",
    jaxprune.imp,
    {"rate": 0.4, "activate_while_pruning": 0.1},
    "global",
    timing="cycles",
    target=0.4,
    static_args=IMP_STATIC,
  ),
  Pruner(
    "imp_activate_while_pruning_uniform_rewind",
    jaxprune.imp,
    {"rate": 0.5, "distribution": "uniform", "activate_while_pruning": 0.05, "rewind": "init"},
    "layerwise",
    timing="cycles",
    target=0.5,
    static_args=IMP_STATIC,
  ),
  # SAP (Diao et al. 2023): each prune's amount comes from the PQ index ('learned': no target).
  Pruner(
    "imp_pq_rate",
    jaxprune.imp,
    {"rate": jaxprune.pq_rate(0.5, 1.0), "rewind": "init"},
    "learned",
    timing="cycles",
    static_args=IMP_STATIC,
  ),
  # Ephemeral masks (dense weights, masks applied in the forward pass).
  Pruner("ste", jaxprune.ste_pruning, S, "layerwise"),
  Pruner(
    "ste_global_packed",
    jaxprune.ste_pruning,
    {**S, "distribution": "global", "packed_masks": True},
    "global",
  ),  # fmt: skip
  Pruner("sr_ste_2:4", jaxprune.sr_ste, {"n": 2, "m": 4}, "nm", static_args=("n", "m", "axis")),
  Pruner("movement", jaxprune.movement_pruning, S, "layerwise", static_args=("variant",)),
  # Learned masks: the sparsity is learned, not a target ('learned': no count to check).
  Pruner(
    "movement_soft",
    jaxprune.movement_pruning,
    {"variant": "soft", "score_optimizer": optax.adam(1.0)},
    "learned",
    static_args=("variant", "score_optimizer"),
  ),
  Pruner(
    "scl",
    jaxprune.scl,
    {"regularization": 2.0, "mask_optimizer": optax.sgd(0.5)},
    "learned",
    static_args=("mask_optimizer", "normalize"),
  ),
  # Scores with running statistics.
  Pruner("platon", jaxprune.platon, {**S, "window": 2}, "global", static_args=("window",)),
  Pruner("fisher", jaxprune.fisher_pruning, S, "layerwise", static_args=("per_example",)),
  Pruner(
    "fisher_ema_erk",
    jaxprune.fisher_pruning,
    {**S, "decay": 0.9, "distribution": "erk"},
    "erk",
    static_args=("per_example",),
  ),
  Pruner(
    "structured",
    structured_pruning,
    {**S, "groups": [HIDDEN]},
    "layerwise",
    static_args=STRUCTURED_STATIC,
    zeros=hidden_zeros,
  ),
  Pruner(
    "structured_cycles_taylor_reinit",
    structured_pruning,
    {**S, "groups": [HIDDEN], "importance": "taylor", "reinitialize": True},
    "layerwise",
    timing="cycles",
    target=1 - 0.25 ** (1 / 3),
    static_args=STRUCTURED_STATIC,
    zeros=hidden_zeros,
  ),
]


# gap in the suite: two partitions (dense0's kernel, dense1's), steps of 2 updates from update 1,
# one round: mask updates at 1 (grow dense0), 3 (prune dense0, grow dense1) and 5 (prune dense1).
GAP_STATIC = ("partitions", "step_length", "rounds", "begin_step", "seed")
GAP = {"partitions": 2, "step_length": 2, "rounds": 1, "begin_step": 1, "seed": 4}


def gap_zeros(pruner: Pruner, step: int) -> dict[str, int]:
  """Both kernels at round(0.75 n) zeros (a random start), except the dense partition."""
  sparse = {"dense0/kernel": _round(SPARSITY, 16 * 32), "dense1/kernel": _round(SPARSITY, 32 * 8)}
  dense = {1: "dense0/kernel", 2: "dense0/kernel", 3: "dense1/kernel", 4: "dense1/kernel"}
  return {k: 0 if dense.get(step) == k else v for k, v in sparse.items()}


PRUNERS.append(
  Pruner(
    "gap",
    jaxprune.gap,
    {**S, **GAP},
    "layerwise",
    timing="static",
    static_args=GAP_STATIC,
    zeros_at=gap_zeros,
  )
)


# Sup-tickets' cyclic phase on RigL in the suite: RigL's updates at 1 and 3, then one cycle whose
# re-exploration (half the active weights dropped and regrown) is at update 5.
PRUNERS.append(
  Pruner(
    "sup_tickets_rigl",
    jaxprune.sup_tickets.cyclic,
    {"factory": jaxprune.rigl, **S, "begin": 5, "cycle_steps": 2, "cycles": 1, "seed": 3},
    "erk",
    timing="dst",
    static_args=DST_STATIC + ("factory", "begin", "cycle_steps", "cycles"),
  )
)


@dataclasses.dataclass(frozen=True)
class Projection:
  """A transformation of the rank variant of the contract (tests/test_conformance_rank.py): no
  masks; after each projection step every projected kernel has exactly the rank ``ranks`` says."""

  name: str
  factory: Callable[..., Any]
  kwargs: dict[str, Any]
  ranks: dict[str, int]  # the rank of each projected kernel of the suite's MLP
  static_args: tuple[str, ...] = ()

  def make(self, **kwargs):
    return self.factory(**self.kwargs, **kwargs)


# LRPET in the suite: projections at updates 1, 3 and 5 (the suite's update steps).
PROJECTION_STEPS = {"frequency": 2, "begin_step": 1, "end_step": 5}
LRPET_STATIC = ("rank", "frequency", "begin_step", "end_step", "energy_transfer", "reduce_factor")
PROJECTIONS = [
  Projection(
    "lrpet", jaxprune.lrpet, {"rank": 4}, {"dense0/kernel": 4, "dense1/kernel": 4}, LRPET_STATIC
  ),
  Projection(
    "lrpet_ratio_truncation",
    jaxprune.lrpet,
    {"prune_ratio": 0.75, "energy_transfer": False},
    {"dense0/kernel": 4, "dense1/kernel": 2},
    LRPET_STATIC + ("prune_ratio",),
  ),
]


def num_groups(pruner: Pruner, shape: tuple[int, ...]) -> tuple[int, int]:
  """(number of groups, entries per group) of a leaf under the pruner's pattern."""
  if pruner.group:
    size = math.prod(pruner.group)
    return math.prod(shape) // size, size
  if pruner.channel:
    return shape[-1], math.prod(shape[:-1])
  return math.prod(shape), 1


def _round(sparsity, n: int) -> int:
  # The scheduled sparsity is a float32 array inside the pruner; round its product the same way.
  return int(np.round(np.float32(sparsity) * np.float32(n)))


def expected_zeros(
  pruner: Pruner, shapes: dict[str, tuple[int, ...]], scheduled, step: int | None = None
) -> dict[str, int] | int | None:
  """Exact zero counts per leaf (or in total, for global), where ``scheduled(target)`` is the
  sparsity the schedule gives a leaf whose final target is ``target``; ``None`` for learned masks,
  whose sparsity is not a target."""
  if pruner.kind == "learned":
    return None
  if pruner.zeros_at is not None and step is not None:
    return pruner.zeros_at(pruner, step)
  if pruner.zeros is not None:
    return pruner.zeros(pruner, scheduled)
  if pruner.kind == "nm":
    return {k: math.prod(s) // 2 for k, s in shapes.items()}
  if pruner.kind == "global":
    return _round(scheduled(pruner.target), sum(math.prod(s) for s in shapes.values()))
  if pruner.kind == "erk":
    per_leaf = jaxprune.allocation.erk(SPARSITY, list(shapes.values()))
    return {
      k: _round(scheduled(s), math.prod(shape)) for (k, shape), s in zip(shapes.items(), per_leaf)
    }
  out = {}
  for k, shape in shapes.items():
    groups, size = num_groups(pruner, shape)
    out[k] = _round(scheduled(dict(pruner.leaf_targets).get(k, pruner.target)), groups) * size
  return out
