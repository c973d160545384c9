"""Early-bird tickets, LeNet-300-100 / MNIST.

You et al. (ICLR 2020; code GATECH-EIC/Early-Bird-Tickets, main.py): at the start of every epoch
the masks of the current weights at a pruning ratio p; the ticket has emerged when the newest
masks are within a normalized Hamming distance of 0.1 of each of the 4 before (FIFO of 5). Their
masks are channels chosen by batch-norm scales (VGG, PreResNet on CIFAR; p = 30, 50, 70%) over
160 epochs (SGD 0.1, /10 at epochs 80 and 120, batch 256). LeNet-300-100 has no batch norm: here
the masks are the global magnitude masks of the weights (`jaxprune.prune`), p = 50, 70, 90%, over
12 epochs (SGD 0.05, momentum 0.9, weight decay 1e-4, /10 at 50% and 75% of the steps), drawn 4
times per epoch, 2 seeds.
About 10 minutes on 2 CPU cores.

Run with ``python -m experiments --config mnist_early_bird`` (see `experiments.imp_studies`).
"""

import ml_collections

from experiments.imp_studies import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config("early_bird")
  config.optimizer.schedule = "step"  # /10 at 50% and 75% of the steps (the authors' 80, 120)
  config.optimizer.weight_decay = 1e-4
  config.early_bird = ml_collections.ConfigDict()
  config.early_bird.epochs = 12
  # Masks drawn (and the criterion checked) this many times per epoch: the authors' 160 epochs
  # give the criterion 160 chances; 12 epochs x 4 give it 48.
  config.early_bird.draws_per_epoch = 4
  config.early_bird.ratios = (0.5, 0.7, 0.9)  # pruned fraction of the masks tracked
  config.early_bird.window = 5  # the FIFO of masks (the authors' epoch_keep)
  config.early_bird.threshold = 0.1
  return config
