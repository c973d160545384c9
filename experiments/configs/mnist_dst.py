"""Dynamic sparse training on LeNet-300-100 / MNIST against dense and gradual pruning (issue 5).

Every method trains for the same ``num_train_steps`` (3,000 steps of batch 128, 6.4 epochs;
the main job trains 4,000, but 48 runs of 4,000 steps take ~20 minutes on 2 CPU cores) from
the same initialisation and data order per seed, with the main job's optimizer (SGD,
momentum 0.9, learning rate 0.05 with cosine decay to 0):

* ``dense``: no pruning.
* ``gradual``: the main job's method (Zhu & Gupta: global magnitude, cubic ramp from 10% to
  70% of the steps, masks every 2.5%), dense at the start.
* ``static``: a random ERK mask, fixed for the whole run (``jaxprune.static_sparse``).
* ``set``: SET (``jaxprune.set_sparse``): every 100 steps drop 30% of the active weights of
  each kernel by magnitude, regrow as many at random, for the whole run.
* ``rigl``: RigL (``jaxprune.rigl``): every 100 steps drop by magnitude and grow by
  dense-gradient magnitude, drop fraction 0.3 annealed by a cosine to 0 at 75% of the steps
  (the paper's ``T_end``); ERK. At 98% this is the authors' MNIST setting (98%, dT = 100,
  alpha = 0.3, ERK).
* ``granet``: GraNet (``jaxprune.granet``): from dense, cubic gradual pruning over the same
  10%-70% of the steps as ``gradual``, with regrowth by gradient at every mask update (every
  100 steps; drop fraction 0.5 decaying to 0), ERK.

The sparse-from-scratch methods (static, SET, RigL) use ERK allocation (the RigL default);
gradual uses the main job's global allocation. Sparsity is that of the kernels; biases
are dense.

Run with ``python -m experiments --config mnist_dst`` (3 sparsities x 5 sparse methods x 3
seeds + 3 dense runs = 48 runs; about 15 minutes on 2 CPU cores).
"""

import ml_collections

from experiments.configs import mnist_lenet300


def get_config() -> ml_collections.ConfigDict:
  config = mnist_lenet300.get_config()
  config.output_dir = "results/mnist_dst"
  config.num_train_steps = 3000
  config.eval_every = 1000
  config.methods = ("dense", "gradual", "static", "set", "rigl", "granet")
  config.sparsities = (0.9, 0.95, 0.98)
  config.seeds = (0, 1, 2)
  # One run at a time: vmapping seeds gives no speed-up on a 2-core CPU, and each DST run's
  # sparsity and mask seed are constants of its transformation.
  config.vmap_seeds = False

  config.dst = ml_collections.ConfigDict()
  config.dst.distribution = "erk"
  config.dst.frequency = 100  # steps between mask updates (dT)
  config.dst.drop_fraction = 0.3  # SET's zeta, RigL's alpha
  config.dst.rigl_end_fraction = 0.75  # RigL's T_end, as a fraction of the steps
  config.dst.granet_begin_fraction = 0.1  # GraNet's pruning window (as gradual's)
  config.dst.granet_end_fraction = 0.7
  config.dst.granet_drop_fraction = 0.5

  config.plot_error = True
  # From ../shared/REFERENCES.md (LeNet-300-100 / MNIST; no DST numbers are listed for it:
  # RigL's MNIST result is only given as a figure, its published table is ResNet-50).
  config.published = mnist_lenet300.published("dense", "han", "snip_95", "snip_98", "dns")
  return config
