"""Lottery tickets on LeNet-300-100 / MNIST: winning tickets against random reinitialisation.

Frankle & Carbin (2019), "The lottery ticket hypothesis: finding sparse, trainable neural
networks" (ICLR 2019), Sec. 2, Figs. 3-4: Adam 1.2e-3, batch 60, Glorot-normal init; each
round prunes 20% of the remaining weights of the hidden kernels and 10% of the output kernel
(layer-wise, by magnitude), rewinds the kept weights to their initial values and restarts
Adam. The control trains the same masks from a fresh random initialisation. 18 prunes take
the kernels from 100% to 1.9% of their weights remaining (the paper's 100, 51.3, 21.1, 7.0,
3.6, 1.9% are rounds 0, 3, 7, 12, 15, 18). Early stopping uses the minimum loss on 5,000
training examples held out for validation, as in the paper.

The paper trains 50,000 iterations per round; here ``lottery.round_steps`` = 4,000 iterations
(4.4 epochs of the 55,000 training examples) keeps the whole experiment (3 seeds x (19 ticket
rounds + 18 reinit runs) = 444,000 steps of batch 60) at about 15 minutes on 2 CPU cores. Run with
``python -m experiments --config mnist_lth`` (see `experiments.lottery`).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment = "lottery"  # the runner: experiments.lottery

  config.model = "lenet300_100"
  config.dataset = "mnist"
  config.data_dir = None  # None: $TFDS_DATA_DIR, then ../shared/tensorflow_datasets, ...
  config.cache_dir = None
  config.output_dir = "results/mnist_lth"

  config.batch_size = 60
  config.eval_batch_size = 5000
  # Evaluations (test and validation) every eval_every steps and at the end of every round;
  # the early-stopping iteration is the evaluation of minimum validation loss in a round.
  config.eval_every = 500
  config.validation_size = 5000  # held out of the 60,000 training images (0: none)
  config.validation_seed = 0
  # "memory" or "grain" (streamed batches, see mnist_lenet300; only with validation_size=0).
  config.data_pipeline = "memory"
  config.data_parallel = False  # (the lottery experiment trains on one device)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1.2e-3
  config.optimizer.schedule = "constant"
  config.optimizer.warmup_steps = 0
  config.optimizer.weight_decay = 0.0

  config.lottery = ml_collections.ConfigDict()
  config.lottery.rounds = 18  # prunes; rounds + 1 training rounds including the dense one
  config.lottery.round_steps = 4000  # training iterations per round (the paper: 50,000)
  config.lottery.rate = 0.2  # fraction of the remaining weights pruned per round
  config.lottery.output_rate = 0.1  # ... in the output layer
  config.lottery.output_layer = "Dense_2/kernel"
  config.lottery.reinit = True  # also train the random-reinitialisation control
  # The rounds whose masks are also trained from a fresh initialisation (empty: all).
  config.reinit_rounds = ()

  config.seeds = (0, 1, 2)
  # The seeds of a phase (and of a reinit round) as one vmapped program. On a 2-core CPU
  # this is no faster than one run at a time; kept off.
  config.vmap_seeds = False

  config.checkpoint_every = 4000  # steps between checkpoints (once per round)
  config.keep_checkpoints = 2
  config.resume = True
  config.stop_after_step = None

  config.progress = True
  config.plots = True
  return config
