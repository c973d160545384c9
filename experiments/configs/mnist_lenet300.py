"""The main job: LeNet-300-100 on MNIST, dense vs one-shot vs gradual magnitude pruning.

Methods (all trained for the same ``num_train_steps``, from the same initialisation per seed):

* ``dense``: no pruning (reference).
* ``one_shot``: train dense until ``one_shot.prune_fraction * num_train_steps``, prune to the
  target sparsity by weight magnitude once, then fine-tune the remaining weights (masks fixed).
* ``gradual``: Zhu & Gupta (2017) gradual magnitude pruning: sparsity follows the cubic ramp
  ``s_t = s_f * (1 - (1 - (t - t0) / (t1 - t0))^3)`` from ``t0 = begin_fraction * steps`` to
  ``t1 = end_fraction * steps``, masks recomputed every ``frequency_fraction * steps`` steps,
  then fine-tuning with the final masks.

Pruning is global (one magnitude threshold over all kernels; biases are not pruned).

With the defaults below (batch 128, 4,000 steps, about 8.5 epochs, SGD with momentum and a
cosine learning-rate decay) dense LeNet-300-100 reaches about 98.3% test accuracy; the 9 runs
take about 3 minutes on 2 CPU cores.
"""

import ml_collections

# Published LeNet-300-100 / MNIST results, from ../shared/REFERENCES.md:
# Lee, Ajanthan & Torr, "SNIP: Single-shot network pruning based on connection sensitivity",
# ICLR 2019, Table 1 (SNIP, and the DNS and L-OBS results it lists);
# Han, Pool, Tran & Dally, "Learning both weights and connections for efficient neural
# networks", NeurIPS 2015, Table 1 (LeNet-300-100: 12x fewer weights, 1.59% error).
PUBLISHED = {
  "dense": dict(label="dense (Lee et al. 2019)", sparsity=0.0, error=1.7, source="SNIP, Table 1"),
  "snip_95": dict(label="SNIP (Lee et al. 2019)", sparsity=0.95, error=1.6, source="SNIP, Table 1"),
  "snip_98": dict(label="SNIP (Lee et al. 2019)", sparsity=0.98, error=2.4, source="SNIP, Table 1"),
  "han": dict(
    label="magnitude + retraining (Han et al. 2015)",
    sparsity=0.918,
    error=1.59,
    source="Han et al. 2015, Table 1",
  ),
  "dns": dict(label="DNS (in SNIP, Table 1)", sparsity=0.982, error=2.0, source="SNIP, Table 1"),
  "lobs": dict(label="L-OBS (in SNIP, Table 1)", sparsity=0.985, error=2.0, source="SNIP, Table 1"),
}


def published(*keys: str) -> list[dict]:
  """Copies of the `PUBLISHED` points ``keys``, in that order (for ``config.published``)."""
  return [dict(PUBLISHED[k]) for k in keys]


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.model = "lenet300_100"
  config.dataset = "mnist"
  # None: $TFDS_DATA_DIR, then ../shared/tensorflow_datasets, then the tfds default.
  config.data_dir = None
  config.cache_dir = None  # None: $JAXPRUNE_CACHE_DIR, then ~/.cache/jaxprune
  config.output_dir = "results/mnist_lenet300"

  config.batch_size = 128
  config.eval_batch_size = 2000
  # Where the training batches come from: "memory" decodes the training split once and gathers
  # the batches on the device (fast for MNIST); "grain" streams each run's batches from the
  # prepared files (experiments.pipeline), the same batches in the same order.
  config.data_pipeline = "memory"
  # True: train data-parallel over every device (each batch split over them, the state
  # replicated; experiments.distributed). A run over several processes (--distributed) always is.
  config.data_parallel = False
  config.num_train_steps = 4000
  config.eval_every = 500  # steps between evaluations (the last step is always evaluated)
  # Training images on which every evaluation also measures the dead neuron rate of the hidden
  # layers (jaxprune.analysis.dead_neuron_rate; models without batch norm); 0: not measured.
  config.dead_neurons = 0

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # "sgd" or "adam"
  config.optimizer.learning_rate = 0.05
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 0.0
  config.optimizer.schedule = "cosine"  # "constant", "cosine" or "step"
  config.optimizer.warmup_steps = 0
  config.optimizer.decay_boundaries = (0.5, 0.75)  # fractions of the steps ("step" only)
  config.optimizer.decay_factor = 0.1  # ("step" only)

  config.methods = ("dense", "one_shot", "gradual")
  config.sparsities = (0.8, 0.9, 0.95, 0.98)
  config.seeds = (0,)
  # How the target sparsity is spread over the kernels: "global" = one magnitude threshold
  # over all of them. ("uniform" prunes every layer to the same sparsity, which leaves the
  # 100x10 output layer only 20 weights at 98% and costs ~10 points of accuracy there;
  # "erk" is also available.)
  config.distribution = "global"

  config.one_shot = ml_collections.ConfigDict()
  config.one_shot.prune_fraction = 0.5  # prune at this fraction of the steps, then fine-tune

  config.gradual = ml_collections.ConfigDict()
  config.gradual.begin_fraction = 0.1
  config.gradual.end_fraction = 0.7
  config.gradual.frequency_fraction = 0.025  # masks updated every 2.5% of the steps
  config.gradual.power = 3.0

  # Checkpoints (orbax) in output_dir/checkpoints/<run>/: params, the full optimizer state
  # (masks included), data position, RNG key and evaluations so far. A rerun of the same
  # command resumes from them; finished runs (runs/<run>.json) are reported, not retrained.
  config.checkpoint_every = None  # steps between checkpoints; None: at every evaluation
  config.keep_checkpoints = 2  # latest checkpoints kept per run
  config.resume = True  # False: ignore existing checkpoints and results, train from scratch
  config.stop_after_step = None  # testing hook: stop (as if killed) after saving this step

  # Runs trained together as one jax.vmap-ped program (each run keeps its own init, data
  # order and target sparsity; results equal those of sequential runs).
  config.vmap_seeds = True  # the seeds of a (method, sparsity)
  config.vmap_sparsities = False  # also the sparsities of a method

  # Published results drawn on the accuracy-vs-sparsity plot (accuracy in %; sparsity 0
  # is drawn as a line).
  config.published = published("dense", "snip_95", "snip_98", "han")

  config.progress = True  # tqdm progress bars
  config.plots = True  # write the PNG plots (False: only JSON/CSV, for quick runs)
  return config
