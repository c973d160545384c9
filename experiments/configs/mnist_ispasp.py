"""i-SpaSP against L1 and random structured pruning of hidden units on MNIST (issue 15).

``experiments.ispasp``: a two-layer network (784-500-10) and LeNet-300-100, trained dense for
4,000 updates (batch 128, SGD with momentum 0.9, learning rate 0.05, cosine) per seed (0, 1, 2);
then every hidden layer loses 50%, 75% or 90% of its units, chosen by i-SpaSP (20 iterations on
1,280 training images: the authors' 5 batches of 256), by the L1 norm of their weights, or at
random, and the slimmed network is evaluated before and after 500 updates of fine-tuning
(learning rate 0.01, cosine).

Run with ``python -m experiments --config mnist_ispasp`` (6 dense runs, 54 prunes; about 10
minutes on 2 CPU cores).
"""

import ml_collections

from experiments.configs import mnist_lenet300


def get_config() -> ml_collections.ConfigDict:
  base = mnist_lenet300.get_config()
  config = ml_collections.ConfigDict()
  config.experiment = "ispasp"
  config.model = "lenet300_100"  # checked by the command line; the runner trains config.networks
  config.networks = ("two_layer", "lenet300_100")
  config.dataset = "mnist"
  config.data_dir = base.data_dir
  config.cache_dir = base.cache_dir
  config.output_dir = "results/mnist_ispasp"
  config.methods = ("ispasp", "l1", "random")
  config.ratios = (0.5, 0.75, 0.9)
  config.seeds = (0, 1, 2)
  config.batch_size = 128
  config.num_train_steps = 4000
  config.lr = 0.05
  config.momentum = 0.9
  config.calibration = 1280
  config.iterations = 20
  config.finetune_steps = 500
  config.finetune_lr = 0.01
  config.progress = True
  config.plots = True
  return config
