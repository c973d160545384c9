"""One-shot pruning with calibration data on MNIST (issue 14): magnitude, Wanda and SparseGPT.

::

    python -m experiments --config mnist_oneshot

Three models trained dense on MNIST (LeNet-300-100, LeNet-5 and a small ViT of 7x7 patches), then
each pruned once, without retraining, at 50% (and 70%) unstructured sparsity and at 2:4 and 4:8, by
magnitude, Wanda (Sun et al. 2023) and SparseGPT (Frantar & Alistarh 2023), from 128 training
images: the experiment of the papers' Table 1 / Table 2 (LLaMA perplexity) at MNIST scale. See
``experiments/oneshot.py`` for what is recorded and written. The training budget is small, for 2
CPU cores (see ``budgets``); raise ``train_steps`` on a faster machine.
"""

import ml_collections

from experiments import oneshot


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment = "oneshot"
  config.models = ("lenet300_100", "lenet5", "vit")
  config.dataset = "mnist"
  config.data_dir = None  # None: $TFDS_DATA_DIR, then ../shared/tensorflow_datasets, then tfds's
  config.cache_dir = None
  config.output_dir = "results/mnist_oneshot"
  config.progress = True
  config.plots = True
  config.seeds = (0,)

  # Dense training: AdamW with a linear warm-up over 5% of the steps and a cosine decay.
  config.batch_size = 128
  config.train_steps = 2000
  config.learning_rate = 1e-3
  config.weight_decay = 1e-4
  # Per model, on top of the two fields above.
  config.budgets = ml_collections.ConfigDict(
    {
      "lenet300_100": {"train_steps": 2000, "learning_rate": 1e-3},
      "lenet5": {"train_steps": 2000, "learning_rate": 1e-3},
      "vit": {"train_steps": 3000, "learning_rate": 1e-3},
    }
  )

  # Calibration: 128 training images (the papers use 128 sequences), a seeded sample.
  config.calibration_images = 128
  config.calibration_batch_size = 32
  config.calibration_seed = 1234

  config.methods = oneshot.METHODS
  # 50%, 2:4 and 4:8 as in the papers' tables; 70% where small MNIST networks begin to degrade.
  config.targets = ("0.5", "0.7", "2:4", "4:8")
  # "all": every kernel (the classifier and the first layer included); "inner": all but the first
  # and the last layer in use order (the authors' image-classifier code prunes only the linear
  # layers inside the blocks).
  config.layer_sets = ("all", "inner")
  config.block_size = 128  # SparseGPT's defaults
  config.dampening = 0.01
  # Time a second, identical call of each method too (its programs compiled by the first).
  config.warm_timing = True
  return config
