"""SAP (the PQ index's adaptive pruning) against the lottery ticket's 20% per cycle, LeNet-300-100.

Diao et al. (ICLR 2023; code diaoenmao/Pruning-Deep-Neural-Networks-from-a-Sparsity-Perspective):
global pruning, every iteration rewound to the initialisation with a fresh optimizer; SAP with
(p, q) = (0.5, 1) and (1, 2), eta_r = 0, gamma = 1, beta = 0.9 (src/make.py, src/utils.py), against
LT at 20% per iteration; T = 30 iterations of 200 epochs each for their MLP and CNN. Here: 15
prunes of 1,000 steps (2.1 epochs at batch 128) each, 2 seeds. About 12 minutes on 2 CPU cores.

Run with ``python -m experiments --config mnist_pq`` (see `experiments.imp_studies`).
"""

import ml_collections

from experiments.imp_studies import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config("pq")
  config.pq = ml_collections.ConfigDict()
  config.pq.cycles = 15
  config.pq.cycle_steps = 1000
  config.pq.lt_rate = 0.2  # the lottery ticket's fixed fraction per cycle
  config.pq.pq_settings = ((0.5, 1.0), (1.0, 2.0))  # (p, q) of the SAP runs
  config.pq.eta = 0.0
  config.pq.gamma = 1.0
  config.pq.beta = 0.9
  return config
