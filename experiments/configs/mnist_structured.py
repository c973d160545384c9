"""Structured pruning on MNIST (issue 12): channels removed physically, then fine-tuned.

One model per command (``get_config(model)``): ``lenet5`` (the default), ``vgg_mnist`` (VGG with
batch norm, 32-64-128 channels) or ``resnet20_b`` (ResNet-20 with projection shortcuts, so that
every stage's residual stream is a channel group of its own)::

    python -m experiments --config mnist_structured             # LeNet-5
    python -m experiments --config mnist_structured:vgg_mnist
    python -m experiments --config mnist_structured:resnet20_b

Methods and outputs: see ``experiments/structured.py``. The budget here is small, for 2 CPU
cores: ``pretrain_steps`` dense steps at batch 64 (1,500 for LeNet-5, 600 for the VGG, 400 for
ResNet-20) and ``finetune_steps`` after each prune (500, 200, 150); the three models took about
15, 43 and (at 30% for three methods and 50% for seven) 37 minutes here while other jobs shared
the CPU. Raise both (``--set pretrain_steps=...``) on a faster machine. Network slimming's penalty
is the paper's VGG value (1e-4); LeNet-5 has no batch norm, so slimming is skipped for it.
"""

import ml_collections

from experiments import structured

# Steps per model on 2 CPU cores (dense training, then fine-tuning after each prune).
BUDGETS = {
  "lenet5": (1500, 500),
  "vgg_mnist": (600, 200),
  "resnet20_b": (400, 150),
}


def get_config(model: str = "lenet5") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment = "structured"
  config.model = model
  config.dataset = "mnist"
  config.data_dir = None  # None: $TFDS_DATA_DIR, then ../shared/tensorflow_datasets, then tfds's
  config.cache_dir = None
  config.output_dir = f"results/mnist_structured/{model}"
  config.progress = True
  config.plots = True
  config.seeds = (0,)

  pretrain, finetune = BUDGETS.get(model, (800, 300))
  config.batch_size = 64
  config.pretrain_steps = pretrain
  config.finetune_steps = finetune
  config.learning_rate = 0.05  # SGD with momentum, cosine decay, for dense and scratch training
  config.finetune_lr = 0.01
  config.momentum = 0.9
  config.weight_decay = 1e-4
  config.calibration_batches = 8  # batches for Taylor's gradients, DropNet's activations, i-SpaSP
  config.ispasp_iterations = 20  # T (the authors' scripts)

  config.ratios = (0.3, 0.5, 0.7)  # fraction of channels removed
  config.methods = structured.METHODS

  config.slimming = ml_collections.ConfigDict()
  config.slimming.penalty = 1e-4  # Liu et al. 2017: 1e-4 for VGG, 1e-5 for ResNets
  config.dropnet = ml_collections.ConfigDict()
  config.dropnet.fraction = 0.2  # of the remaining channels, per cycle (Tan & Motani 2020)
  # Scratch-B trains pretrain_steps * MACs_dense / MACs_slim steps; Liu et al. 2019's paper caps
  # the factor at 2 (their code does not); None: no cap.
  config.scratch_b_max_factor = 2.0

  # True: a rerun measures the latency of finished runs again (on a quiet machine), from the
  # slim networks they saved in output_dir/models/.
  config.remeasure = False
  config.latency_rounds = 5
  config.latency_min_time = 0.2  # seconds per measurement
  return config
