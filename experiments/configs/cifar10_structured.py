"""Structured pruning on CIFAR-10, for machines that have the data (tfds downloads it).

The MNIST experiment's methods (``experiments/structured.py``) at the published recipe's length:
network slimming trains VGG on CIFAR-10 for 160 epochs with SGD (lr 0.1, momentum 0.9, batch
64, weight decay 1e-4) and penalty 1e-4, then fine-tunes the pruned network for 160 epochs
(Liu et al. 2017, ``../shared/REFERENCES.md``); Scratch-E trains the slim architecture for the
same 160 epochs (Liu et al. 2019). The learning rate here decays by a cosine rather than
x0.1 at 50% and 75%. Models: ``vgg_small`` (64-128-256 with batch norm) or ``resnet20_b``::

    python -m experiments --config cifar10_structured:vgg_small
    python -m experiments --config cifar10_structured:resnet20_b   # penalty 1e-5 for ResNets

Not run on the development machine (no CIFAR-10 there; on 2 CPU cores one VGG epoch takes
about 15 minutes).
"""

import ml_collections

from experiments.configs import mnist_structured

EPOCH = 50_000 // 64  # steps per epoch at batch 64


def get_config(model: str = "vgg_small") -> ml_collections.ConfigDict:
  config = mnist_structured.get_config(model)
  config.dataset = "cifar10"
  config.output_dir = f"results/cifar10_structured/{model}"
  config.batch_size = 64
  config.pretrain_steps = 160 * EPOCH
  config.finetune_steps = 160 * EPOCH
  config.learning_rate = 0.1
  config.finetune_lr = 0.01
  config.weight_decay = 1e-4
  config.slimming.penalty = 1e-4 if model.startswith("vgg") else 1e-5
  config.calibration_batches = 32
  return config
