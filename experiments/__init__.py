"""Experiments for jaxprune: models, data and the pruning sweep.

Run the main job (LeNet-300-100 on MNIST; dense vs one-shot vs gradual magnitude pruning at
80/90/95/98% sparsity) with ``python -m experiments``; the lottery-ticket experiment with
``python -m experiments --config mnist_lth``; IMP with the FT/LRW/SLR/CLR retraining schedules
against gradual pruning with ``python -m experiments --config mnist_imp_retraining``; dynamic
sparse training (static, SET, RigL, GraNet) against dense and gradual pruning with
``--config mnist_dst``; pruning at initialisation (SNIP, GraSP, SynFlow, magnitude, random)
with SNIP's recipe with ``--config mnist_at_init``.

Modules:

* `experiments.config`: loading ``get_config()`` files, ``--config.FIELD=VALUE`` overrides,
  the config fingerprint;
* `experiments.cli`: the command line of ``python -m experiments``;
* `experiments.sweep`: the runs of a config and how they are grouped into vmapped programs;
* `experiments.lottery`: the lottery-ticket experiment (tickets, then their random
  reinitialisation) and its per-round tables;
* `experiments.sparse_training`: the dynamic sparse and pruning-at-initialisation methods
  of the sweep, and the layer-collapse report of masks computed at initialisation;
* `experiments.train`: optimizers, pruners, the compiled training programs, the run loop;
* `experiments.stacking`: stacking run states along a leading axis for ``jax.vmap``;
* `experiments.checkpointing`: orbax checkpoints of a run;
* `experiments.evaluation`: test accuracy, sparsity, compression ratio and speedup;
* `experiments.outputs`: per-run and summary JSON/CSV, the table, the log;
* `experiments.plots`: accuracy-vs-sparsity, training-curve, learning-rate and lottery PNGs;
* `experiments.data`, `experiments.models`, `experiments.metrics`: datasets, Flax models,
  ShrinkBench metrics (multiply-adds from the jaxpr).
"""
