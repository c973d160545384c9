"""LRPET (low-rank projection with energy transfer) on LeNet-300-100 / MNIST (issue 15).

``experiments.lrpet``: per prune ratio (0.8, 0.9, 0.95 of the singular values of each hidden
kernel removed: ranks 60/20, 30/10 and 15/5 of the 300- and 100-unit layers) and seed (0, 1, 2),
``lrpet``, ``lrpet_no_transfer``, ``lrpet_plain_last`` and ``svd_retrain`` against ``dense``,
each 4,000 updates of batch 128 (8.5 epochs) with the main job's optimizer (SGD, momentum 0.9,
learning rate 0.05, cosine decay). LRPET projects after every epoch (468 updates) and at the last update, as the
authors' code after every epoch of 400. ``svd_retrain`` trains dense for 3,000 updates, then
retrains the factorised network for 1,000 (learning rate 0.01, cosine).

Run with ``python -m experiments --config mnist_lrpet`` (48 runs; about 40 minutes on 2 CPU
cores shared with other jobs).
"""

import ml_collections

from experiments.configs import mnist_lenet300


def get_config() -> ml_collections.ConfigDict:
  base = mnist_lenet300.get_config()
  config = ml_collections.ConfigDict()
  config.experiment = "lrpet"
  config.model = "lenet300_100"
  config.dataset = "mnist"
  config.data_dir = base.data_dir
  config.cache_dir = base.cache_dir
  config.output_dir = "results/mnist_lrpet"
  config.methods = ("dense", "lrpet", "lrpet_no_transfer", "lrpet_plain_last", "svd_retrain")
  config.prune_ratios = (0.8, 0.9, 0.95)
  config.seeds = (0, 1, 2)
  config.batch_size = 128
  config.num_train_steps = 4000
  config.lr = 0.05
  config.momentum = 0.9
  config.retrain_fraction = 0.25
  config.retrain_lr = 0.01
  config.progress = True
  config.plots = True
  return config
