"""jaxprune: neural-network pruning and sparse training as optax gradient transformations."""

from jaxprune import allocation as allocation
from jaxprune import analysis as analysis
from jaxprune import ap as ap
from jaxprune import at_init as at_init
from jaxprune import calibration as calibration
from jaxprune import collapse as collapse
from jaxprune import dst as dst
from jaxprune import early_bird as early_bird
from jaxprune import engine as engine
from jaxprune import ephemeral as ephemeral
from jaxprune import fisher as fisher
from jaxprune import flops as flops
from jaxprune import groups as groups
from jaxprune import grow_and_prune as grow_and_prune
from jaxprune import learned as learned
from jaxprune import leaves as leaves
from jaxprune import low_rank as low_rank
from jaxprune import masks as masks
from jaxprune import patterns as patterns
from jaxprune import plan as plan
from jaxprune import progress as progress
from jaxprune import retraining as retraining
from jaxprune import rules as rules
from jaxprune import sap as sap
from jaxprune import schedules as schedules
from jaxprune import scores as scores
from jaxprune import selection as selection
from jaxprune import structured as structured
from jaxprune import sup_tickets as sup_tickets
from jaxprune import typing as typing
from jaxprune.at_init import grasp as grasp
from jaxprune.at_init import prospr as prospr
from jaxprune.at_init import prune_at_init as prune_at_init
from jaxprune.at_init import shuffle_masks as shuffle_masks
from jaxprune.at_init import snip as snip
from jaxprune.at_init import synflow as synflow
from jaxprune.engine import PruningState as PruningState
from jaxprune.ephemeral import masked_apply as masked_apply
from jaxprune.fisher import fisher_pruning as fisher_pruning
from jaxprune.granet import granet as granet
from jaxprune.grow_and_prune import gap as gap
from jaxprune.imp import CycleInfo as CycleInfo
from jaxprune.imp import IMPState as IMPState
from jaxprune.imp import get_cycle as get_cycle
from jaxprune.imp import imp as imp
from jaxprune.low_rank import lrpet as lrpet
from jaxprune.magnitude import magnitude_pruning as magnitude_pruning
from jaxprune.masks import PackedMask as PackedMask
from jaxprune.masks import apply_masks as apply_masks
from jaxprune.masks import get_masks as get_masks
from jaxprune.movement import movement_pruning as movement_pruning
from jaxprune.oneshot import prune as prune
from jaxprune.platon import PlatonState as PlatonState
from jaxprune.platon import platon as platon
from jaxprune.platon import platon_score as platon_score
from jaxprune.pruning import pruning as pruning
from jaxprune.random_pruning import random_pruning as random_pruning
from jaxprune.rigl import rigl as rigl
from jaxprune.saliency import saliency_pruning as saliency_pruning
from jaxprune.sap import pq_rate as pq_rate
from jaxprune.scl import scl as scl
from jaxprune.set_sparse import set_sparse as set_sparse
from jaxprune.sparsegpt import sparsegpt as sparsegpt
from jaxprune.static import static_sparse as static_sparse
from jaxprune.ste import sr_ste as sr_ste
from jaxprune.ste import ste_pruning as ste_pruning
from jaxprune.structured_pruning import keeps_from_state as keeps_from_state
from jaxprune.structured_pruning import network_slimming_penalty as network_slimming_penalty
from jaxprune.structured_pruning import structured_pruning as structured_pruning
from jaxprune.summary import SparsitySummary as SparsitySummary
from jaxprune.summary import sparsity_summary as sparsity_summary
from jaxprune.summary import sparsity_table as sparsity_table
from jaxprune.wanda import wanda as wanda

__version__ = "0.1.0"

__all__ = [
  "CycleInfo",
  "IMPState",
  "PackedMask",
  "PlatonState",
  "PruningState",
  "SparsitySummary",
  "allocation",
  "analysis",
  "ap",
  "apply_masks",
  "at_init",
  "calibration",
  "collapse",
  "dst",
  "early_bird",
  "engine",
  "ephemeral",
  "fisher",
  "fisher_pruning",
  "flops",
  "gap",
  "get_cycle",
  "get_masks",
  "granet",
  "grasp",
  "groups",
  "grow_and_prune",
  "imp",
  "learned",
  "leaves",
  "low_rank",
  "lrpet",
  "keeps_from_state",
  "magnitude_pruning",
  "masked_apply",
  "masks",
  "movement_pruning",
  "network_slimming_penalty",
  "patterns",
  "platon",
  "platon_score",
  "plan",
  "progress",
  "pq_rate",
  "prune",
  "prospr",
  "prune_at_init",
  "pruning",
  "random_pruning",
  "retraining",
  "rules",
  "rigl",
  "saliency_pruning",
  "sap",
  "schedules",
  "scl",
  "scores",
  "selection",
  "set_sparse",
  "shuffle_masks",
  "snip",
  "sparsegpt",
  "sparsity_summary",
  "sparsity_table",
  "sr_ste",
  "static_sparse",
  "ste_pruning",
  "structured",
  "structured_pruning",
  "sup_tickets",
  "synflow",
  "typing",
  "wanda",
]
