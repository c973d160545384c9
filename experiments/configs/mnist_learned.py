"""Learned, ephemeral and second-order masks on LeNet-300-100 / MNIST against gradual pruning
(issue 14).

Every method trains for the same ``num_train_steps`` (3,000 steps of batch 128, 6.4 epochs, as
``mnist_dst``) from the same initialisation and data order per seed, with the main job's optimizer
(SGD, momentum 0.9, learning rate 0.05 with cosine decay to 0), dense at the start, with global
allocation over the kernels (biases are dense):

* ``dense``; ``gradual``: the main job's method (global magnitude, cubic ramp from 10% to 70% of
  the steps, masks every 2.5% = 75 steps).
* ``ste``: straight-through magnitude masks (dense weights all train), the sparsity on the same
  cubic ramp with masks recomputed at every step, fixed after 70% of the steps.
* ``movement``: hard movement pruning, top-k of ``-sum_t w_t g_t`` on the same ramp, every step.
* ``platon``: PLATON, windows of 10 updates, beta1 0.85, beta2 0.95, masks at the end of every
  window on the same ramp.
* ``fisher``: OBD saliency ``1/2 F w^2`` with the running mean of the squared mini-batch
  gradients, on gradual's schedule (every 75 steps).
* ``movement_soft`` and ``scl`` learn their sparsity: no target. Each target sparsity of
  ``sparsities`` picks the regularisation ``lambda`` tuned (seed 0) to land near it, in
  ``learned.movement_soft_regularization`` and ``learned.scl_regularization``; the reports give
  the sparsity each run reaches. Soft movement: ``tau`` ramped to 0.1 on the same cubic ramp,
  scores trained by Adam 1e-2 (the paper's SQuAD setting). SCL: masks trained by SGD 1e-2 from
  the first step to 70% of the steps, then fixed.
* N:M, 2:4 and 1:4 (sparsity 50% and 75%; groups of 4 along the input axis), masks at every step
  from the first: ``nm_magnitude`` (N:M magnitude masks with persistent zeros), ``ste_nm``
  (straight-through N:M) and ``sr_ste`` (SR-STE, decay 2e-4).

Run with ``python -m experiments --config mnist_learned`` (11 methods, 84 runs; about an hour on
2 CPU cores).
"""

import ml_collections

from experiments.configs import mnist_lenet300


def get_config() -> ml_collections.ConfigDict:
  config = mnist_lenet300.get_config()
  config.output_dir = "results/mnist_learned"
  config.num_train_steps = 3000
  config.eval_every = 1000
  config.methods = (
    "dense",
    "gradual",
    "ste",
    "movement",
    "platon",
    "fisher",
    "movement_soft",
    "scl",
    "nm_magnitude",
    "ste_nm",
    "sr_ste",
  )
  config.sparsities = (0.9, 0.95, 0.98)
  config.seeds = (0, 1, 2)
  # One run at a time (no speed-up from vmapping on a 2-core CPU); the runs of a method share one
  # compiled program (their sparsity and regularisation are optimizer-state hyperparameters).
  config.vmap_seeds = False

  config.learned = ml_collections.ConfigDict()
  config.learned.frequency = 1  # STE, movement: masks at every step of the ramp
  config.learned.platon_window = 10  # PLATON's Delta T (masks at the end of every window)
  config.learned.platon_beta1 = 0.85
  config.learned.platon_beta2 = 0.95
  config.learned.fisher_decay = None  # None: the mean of the squared gradients over all steps
  config.learned.soft_threshold = 0.1  # soft movement's final tau
  config.learned.soft_score_lr = 1e-2  # Adam on the scores
  # (target sparsity, lambda): tuned on seed 0 (docs/experiments/learned_masks.md).
  config.learned.movement_soft_regularization = ((0.9, 67.0), (0.95, 110.0), (0.98, 195.0))
  config.learned.scl_regularization = ((0.9, 0.087), (0.95, 0.13), (0.98, 0.23))
  config.learned.scl_init_value = 1.0
  config.learned.scl_mask_lr = 1e-2
  config.learned.nm_m = 4
  config.learned.nm_n = (2, 1)  # 2:4 and 1:4
  config.learned.nm_begin_fraction = 0.0  # N:M masks from the first step (from scratch)
  config.learned.sr_ste_decay = 2e-4

  config.plot_error = True
  # From ../shared/REFERENCES.md (LeNet-300-100 / MNIST; L-OBS is second order, as OBD/Fisher).
  config.published = mnist_lenet300.published("dense", "han", "snip_95", "snip_98", "dns", "lobs")
  return config
