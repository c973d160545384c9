"""Activate-while-Pruning and the dynamic dead neuron rate, LeNet-300-100 / MNIST.

Liu, Ghosh, Tan & Motani (TMLR 2023, arXiv 2212.06145; code Martin1937/AP-Activate-While-Pruning-,
resnet_20.py): each IMP cycle prunes p = 20% of the remaining weights, p_ap = 2 points of them
(AP) among the kept negative weights that moved least over the cycle, and rewinds to the
initialisation; SGD with momentum 0.9 and weight decay 5e-4, a fresh optimizer each cycle. Their
ResNet-20 run: 25 cycles of 50 epochs. Here: 17 prunes (2.3% of the weights left) of 1,000 steps
per cycle (2.1 epochs at batch 128), 2 seeds, for IMP and IMP + AP; the DNR of the two hidden ReLU
layers is measured on 10,000 training images every 250 steps. About 10 minutes on 2 CPU cores.

Run with ``python -m experiments --config mnist_ap`` (see `experiments.imp_studies`).
"""

import ml_collections

from experiments.imp_studies import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config("ap")
  config.optimizer.weight_decay = 5e-4  # the authors' SGD

  config.ap = ml_collections.ConfigDict()
  config.ap.rate = 0.2  # of the remaining weights, per cycle (the authors' prune_percent = 20)
  config.ap.activate_while_pruning = 0.02  # AP's share of it (the authors' ap_pruning_rate = 2)
  config.ap.cycles = 17  # prunes: 0.8 ** 17 = 2.3% of the weights left
  config.ap.cycle_steps = 1000
  config.ap.dnr_every = 250  # steps between DNR measurements (their mean is the dynamic DNR)
  config.ap.dnr_examples = 10_000  # training images the DNR is measured on
  config.ap.dnr_seed = 0  # which ones
  return config
