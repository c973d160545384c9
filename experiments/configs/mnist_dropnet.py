"""DropNet node pruning on MNIST (Tan & Motani 2020): LeNet-300-100, or the paper's model A.

``get_config("lenet300_100")`` (the default) or ``get_config("mlp_40_40")`` (the paper's MNIST
model A, 784-40-40-10)::

    python -m experiments --config mnist_dropnet
    python -m experiments --config mnist_dropnet:mlp_40_40

Ten cycles that each remove 20% of the remaining hidden units (down to 0.8^10 = 10.7% left, where
the paper stops), rewinding the survivors to their initial weights, 3 seeds. The paper trains
each cycle with SGD (lr 0.1) until the validation loss stops improving (patience 5, at most 100
epochs); here every cycle trains a fixed ``cycle_steps`` (about 4 epochs at batch 128) with SGD
and momentum under a cosine decay. About 10 minutes on 2 CPU cores.
"""

import ml_collections


def get_config(model: str = "lenet300_100") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment = "dropnet"
  config.model = model
  config.dataset = "mnist"
  config.data_dir = None
  config.cache_dir = None
  config.output_dir = f"results/mnist_dropnet/{model}"
  config.progress = True
  config.plots = True
  config.seeds = (0, 1, 2)
  config.methods = ("dropnet", "dropnet_layer", "random")

  config.batch_size = 128
  config.cycle_steps = 2000
  config.learning_rate = 0.05
  config.momentum = 0.9
  config.weight_decay = 0.0
  config.calibration_batches = 8

  config.cycles = 10
  config.fraction = 0.2  # of the remaining hidden units, per cycle
  config.rewind = True  # survivors restart from their initial weights (the paper)
  return config
