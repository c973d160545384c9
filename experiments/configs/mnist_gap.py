"""Gradual grow-and-prune (GaP) against gradual magnitude pruning, LeNet-300-100 / MNIST (issue 15).

Every method trains for the same ``num_train_steps`` (3,000 steps of batch 128, 6.4 epochs, the
DST experiment's budget) from the same initialisation and data order per seed, with the main
job's optimizer (SGD, momentum 0.9, learning rate 0.05 with cosine decay to 0):

* ``dense``: no pruning.
* ``gradual``: Zhu & Gupta's gradual magnitude pruning, dense at the start, cubic ramp from 10% to
  70% of the steps, masks every 2.5% (the main job's), then fine-tuning.
* ``gap``: cyclic GaP (``jaxprune.gap``; Ma et al. 2022), from a random sparse start at the
  target: the 3 kernels are 3 partitions; each GaP step (250 updates, 1/12 of the run) grows one
  kernel dense (its pruned weights restart from zero) and prunes the one grown before back to its
  target by magnitude; 3 rounds (9 steps, 75% of the run), then the last kernel is pruned back and
  the final masks are fine-tuned for the remaining 750 updates.

Both methods use the same per-kernel sparsities (``distribution = "erk"``, GaP needs one
target per kernel) so that only the schedule differs. Run with
``python -m experiments --config mnist_gap`` (3 sparsities x 2 methods x 3 seeds + 3 dense = 21
runs; about 10 minutes on 2 CPU cores).
"""

import ml_collections

from experiments.configs import mnist_lenet300


def get_config() -> ml_collections.ConfigDict:
  config = mnist_lenet300.get_config()
  config.output_dir = "results/mnist_gap"
  config.num_train_steps = 3000
  config.eval_every = 1000
  config.methods = ("dense", "gradual", "gap")
  config.sparsities = (0.9, 0.95, 0.98)
  config.seeds = (0, 1, 2)
  config.vmap_seeds = False
  config.distribution = "erk"  # gradual's allocation: the same per-kernel targets as GaP

  config.gap = ml_collections.ConfigDict()
  config.gap.partitions = 3  # kappa: one kernel per partition
  config.gap.rounds = 3
  config.gap.begin_fraction = 0.0
  config.gap.step_fraction = 1 / 12  # 250 updates per GaP step
  config.gap.distribution = "erk"

  config.plot_error = True
  config.published = mnist_lenet300.published("dense", "han", "snip_95", "snip_98", "dns")
  return config
