"""IMP with SLR against gradual magnitude pruning at a converged budget (issue 16; Zimmer et al.).

Zimmer et al. (2021, "How I learned to stop worrying and love retraining") find that IMP whose
retraining restarts at a high learning rate (SLR, and their ALLR) is as good as or better than
gradual pruning given the same budget. ``mnist_imp_retraining`` compares them at 6,000 steps
(12.8 epochs), where dense LeNet-300-100 has not converged; this config gives both 15,000 steps
of batch 128 on the 55,000 training images left after holding out 5,000 for validation (34.9
epochs in all), with the recipe and schedules of ``mnist_imp_retraining``:

* ``dense`` and ``gradual`` (cubic ramp from 10% to 70% of the steps, masks every 2.5%): SGD
  with momentum 0.9, cosine decay from the peak learning rate to 1% of it over all the steps.
* ``imp_slr``: the original (dense) training is the first third (5,000 steps, the same cosine
  over those steps), then 4 cycles of 2,500 steps, each a global magnitude prune of
  ``1 - (1 - s) ** (1/4)`` of the kept weights followed by SLR (the original schedule
  compressed into the cycle after a 10% warm-up).

Both methods are tuned by the same learning-rate sweep: the peak learning rate
(``optimizer.learning_rate``) is 0.025, 0.05 or 0.1, one output directory per value, and for
every method and sparsity the report takes the value with the best mean validation accuracy at
the end of training and reports its test error:

  for lr in 0.025 0.05 0.1; do
    python -m experiments --config mnist_imp_vs_gradual --set optimizer.learning_rate=$lr \\
      --output_dir results/mnist_imp_vs_gradual/lr$lr
  done
  python -m experiments.model_selection sweep results/mnist_imp_vs_gradual/lr* \\
    --field optimizer.learning_rate --output_dir results/mnist_imp_vs_gradual

(63 runs of 15,000 steps; about 30 minutes on 2 CPU cores.)
"""

import ml_collections

from experiments.configs import mnist_imp_retraining


def get_config() -> ml_collections.ConfigDict:
  config = mnist_imp_retraining.get_config()
  config.output_dir = "results/mnist_imp_vs_gradual"
  config.num_train_steps = 15_000
  config.eval_every = 1_500
  config.validation_size = 5_000  # held out of the 60,000 training images, for the lr choice
  config.validation_seed = 0
  config.methods = ("dense", "gradual", "imp_slr")
  return config
