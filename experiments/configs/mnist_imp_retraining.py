"""IMP with four retraining schedules against gradual pruning, LeNet-300-100 / MNIST.

Every method trains for the same ``num_train_steps`` (6,000 steps of batch 128, about 12.8
epochs), from the same initialisation and data order per seed, with SGD (momentum 0.9) and
the main job's recipe (experiments/configs/mnist_lenet300.py) as the original schedule:

* ``dense``: no pruning, cosine decay from 0.05 over all the steps.
* ``gradual``: Zhu & Gupta's cubic schedule from 10% to 70% of the steps, masks every 2.5%,
  cosine decay over all the steps (the main job's gradual method).
* ``imp_ft``, ``imp_lrw``, ``imp_slr``, ``imp_clr``: iterative magnitude pruning
  (``jaxprune.imp``, global magnitude, no weight rewinding) with ``imp.cycles`` = 4 prunes.
  The original training is the first third of the steps (2,000) with the cosine schedule;
  each prune removes ``1 - (1 - s) ** (1/4)`` of the kept weights and is followed by a
  retraining cycle of 1,000 steps whose learning rate follows, from
  ``jaxprune.retraining`` (Zimmer et al. 2021; Renda et al. 2020): FT (constant ``lr_min``),
  LRW (the last 1,000 steps of the original schedule), SLR (the original schedule compressed
  into the cycle after a 10% warm-up), CLR (cosine from ``lr_max`` to ``lr_min`` after
  the warm-up), LLR (linear from ``lr_max`` to 0 after the warm-up; Le & Hua 2021), SILO (Liu et
  al. 2023, the authors' schedule: the peak ``alpha / (1 + (x / (1 - x)) ** -beta) + offset``
  of the fraction ``x`` pruned before the cycle's prune, a ramp cut at half the cycle, then
  ``/10`` and ``/100``; `experiments.retraining_methods`) or ALLR (LLR whose peak follows the
  prune's norm drop, Zimmer et al. 2021).

One change to the main job's recipe: the cosine decays to 1% of its peak
(``optimizer.min_lr_fraction = 0.01``) instead of 0, for every method. With a decay to 0 the
original schedule's ``lr_min`` is ~3e-8 and FT (retraining at ``lr_min``) would not train at
all; 5e-4 is the kind of final rate that the FT baselines of Renda et al. and Zimmer et al.
retrain with.

Run with ``python -m experiments --config mnist_imp_retraining`` (about 30 minutes on 2 CPU
cores for 3 sparsities x 3 seeds x 9 methods).
"""

import ml_collections

from experiments import retraining_methods
from experiments.configs import mnist_lenet300

retraining_methods.register()  # imp_silo and imp_allr


def get_config() -> ml_collections.ConfigDict:
  config = mnist_lenet300.get_config()
  config.output_dir = "results/mnist_imp_retraining"
  config.num_train_steps = 6000
  config.eval_every = 500
  config.optimizer.min_lr_fraction = 0.01

  config.methods = (
    "dense",
    "gradual",
    "imp_ft",
    "imp_lrw",
    "imp_slr",
    "imp_clr",
    "imp_llr",
    "imp_silo",
    "imp_allr",
  )
  config.sparsities = (0.9, 0.95, 0.98)
  config.seeds = (0, 1, 2)
  # The seeds of a (method, sparsity) as one vmapped program gives no speed-up on a 2-core
  # CPU; one run at a time.
  config.vmap_seeds = False

  config.imp = ml_collections.ConfigDict()
  config.imp.cycles = 4  # prunes after the original training
  config.imp.original_fraction = 1 / 3  # of num_train_steps: the original (dense) training

  config.plot_error = True  # error_vs_sparsity.png instead of accuracy_vs_sparsity.png
  # SNIP's Table 1 (SNIP, and the DNS and L-OBS results it lists) and Han et al.'s.
  config.published = mnist_lenet300.published("dense", "han", "snip_95", "snip_98", "dns", "lobs")
  return config
