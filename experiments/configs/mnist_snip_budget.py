"""SNIP's Table 1 at its budget: LeNet-300-100 / MNIST at 95% and 98%, 100,000 iterations (issue 16).

The recipe of Lee et al. (2019, SNIP, `../shared/REFERENCES.md`): 10% of the training set held out
for validation (6,000 images), SGD with momentum 0.9, learning rate 0.1 divided by 10 every 25,000
iterations, batch 100, weight decay 5e-4. The paper gives the decay interval but not the total
number of iterations; this config trains 100,000 (the learning rate ends at 1e-4 after three
decays, at 25K, 50K and 75K). Masks at initialisation as in ``mnist_at_init`` (global SNIP on the
seed's first batch of 100, SynFlow with 100 rounds, random with ERK allocation), dense beside them,
3 seeds.

Run with ``python -m experiments --config mnist_snip_budget`` (21 runs of 100,000 iterations;
about an hour on 2 CPU cores). A killed run resumes from its checkpoint.
"""

import ml_collections

from experiments.configs import mnist_at_init


def get_config() -> ml_collections.ConfigDict:
  config = mnist_at_init.get_config()
  config.output_dir = "results/mnist_snip_budget"
  config.num_train_steps = 100_000
  config.eval_every = 5_000
  config.optimizer.decay_boundaries = (0.25, 0.5, 0.75)  # every 25,000 iterations
  config.validation_size = 6_000
  config.methods = ("dense", "snip", "synflow", "random_init")
  config.sparsities = (0.95, 0.98)
  config.seeds = (0, 1, 2)
  return config
