"""Sparse double descent, LeNet-300-100 / MNIST with symmetric label noise.

He, Xie, Zhu & Qin (ICML 2022, arXiv 2206.08684; code he-zh/sparse-double-descent): symmetric
label noise on the training set (each label, with probability eps, moved to one of the other
classes), IMP with global magnitude pruning of 20% per round, the output layer unpruned, to
99.9%; their LeNet-300-100 (mnist_mlp_300_100): SGD 0.1, batch 128, 160 epochs per round on the
60,000 training images. Here: 31 prunes (0.8 ** 31 = 0.1% of the hidden weights left), rounds of
3,000 steps of SGD 0.1 (no momentum, constant rate) on a 10,000-image training subset (38 epochs of
it, enough for the dense network to fit 98% of 40%-noisy labels), rewound to the initialisation
(the lottery-ticket retraining of the paper), noise 20% and 40%, seed 0. About 20 minutes on 2 CPU
cores.

Run with ``python -m experiments --config mnist_double_descent`` (see `experiments.imp_studies`).
"""

import ml_collections

from experiments.imp_studies import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config("double_descent")
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = None
  config.optimizer.schedule = "constant"
  config.seeds = (0,)
  config.double_descent = ml_collections.ConfigDict()
  config.double_descent.noise = (0.2, 0.4)
  config.double_descent.noise_seed = 0
  config.double_descent.train_examples = 10_000
  config.double_descent.subset_seed = 0
  config.double_descent.rounds = 31  # prunes
  config.double_descent.round_steps = 3000
  config.double_descent.rate = 0.2
  config.double_descent.prune = "Dense_[01]/kernel"  # the output layer (Dense_2) stays dense
  return config
