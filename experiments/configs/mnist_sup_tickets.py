"""Sup-tickets against the single final ticket, LeNet-300-100 / MNIST (issue 15).

``experiments.sup_tickets``: per method (RigL, GraNet), sparsity (95%, 98%) and seed (0, 1, 2),
a Sup-tickets run and a baseline run of 4,000 updates each (batch 128, 8.5 epochs, SGD with
momentum 0.9, learning rate 0.05 divided by 10 at 50% and 75% of the main phase or, for the
baseline, of the run). The Sup-tickets run has a main phase of 3,000 updates and 4 cycles of 250
(25% of the run; the paper's CIFAR runs give the cycles 10% of 250 epochs, 3 cycles of 8 epochs:
a shorter run needs a larger share for several cycles), each starting with a re-exploration of
half the active weights, with a triangular learning rate 0.0005 -> 0.005 -> 0.0005 (the authors'
commands go 0.001 -> 0.005 -> 0.001 after a main phase ending at 0.001; ours ends at 0.0005). RigL:
ERK, every 100 updates, drop fraction 0.3 annealed to 0 at 75% of the main phase; GraNet: from
dense, cubic pruning over 10%-70% of the main phase, regrowth fraction 0.5.

Run with ``python -m experiments --config mnist_sup_tickets`` (24 runs of 4,000 updates; about
10 minutes on 2 CPU cores).
"""

import ml_collections

from experiments.configs import mnist_lenet300


def get_config() -> ml_collections.ConfigDict:
  base = mnist_lenet300.get_config()
  config = ml_collections.ConfigDict()
  config.experiment = "sup_tickets"
  config.model = "lenet300_100"
  config.dataset = "mnist"
  config.data_dir = base.data_dir
  config.cache_dir = base.cache_dir
  config.output_dir = "results/mnist_sup_tickets"
  config.methods = ("rigl", "granet")
  config.sparsities = (0.95, 0.98)
  config.seeds = (0, 1, 2)
  config.batch_size = 128
  config.num_train_steps = 4000
  config.lr = 0.05
  config.momentum = 0.9
  config.cycles = 4
  config.cycle_steps = 250
  config.low = 0.0005
  config.high = 0.005
  config.re_explore = 0.5  # the authors' large_death_rate
  config.dst = ml_collections.ConfigDict()
  config.dst.frequency = 100
  config.dst.drop_fraction = 0.3
  config.dst.rigl_end_fraction = 0.75
  config.dst.granet_begin_fraction = 0.1
  config.dst.granet_end_fraction = 0.7
  config.dst.granet_drop_fraction = 0.5
  config.progress = True
  config.plots = True
  return config
