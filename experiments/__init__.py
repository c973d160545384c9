"""Experiments for jaxprune: models, data and the pruning sweep.

Run the main job (LeNet-300-100 on MNIST; dense vs one-shot vs gradual magnitude pruning at
80/90/95/98% sparsity) with ``python -m experiments``; the lottery-ticket experiment with
``python -m experiments --config mnist_lth``; IMP with the FT/LRW/SLR/CLR retraining schedules
against gradual pruning with ``python -m experiments --config mnist_imp_retraining``; dynamic
sparse training (static, SET, RigL, GraNet) against dense and gradual pruning with
``--config mnist_dst``; pruning at initialisation (SNIP, GraSP, SynFlow, magnitude, random)
with SNIP's recipe with ``--config mnist_at_init``.

Modules:

* `experiments.cli`: the command line of ``python -m experiments``;
* `experiments.config`: loading ``get_config()`` files, ``--config.FIELD=VALUE`` overrides,
  the config fingerprint;
* `experiments.methods`: every method name of a sweep config, declared once: its
  transformation, config group, program sharing, masks at initialisation, learning rate;
* `experiments.runner`: the scaffold of the runners (output directory, log, config.json,
  data, model, resuming finished runs);
* `experiments.sweep`: the runs of a config and how they are grouped into vmapped programs;
* `experiments.lottery`: the lottery-ticket experiment (tickets, then their random
  reinitialisation) and its per-round tables;
* `experiments.train`: the compiled training programs and the run loop;
* `experiments.optimizers`: the optimizer and learning-rate schedule of ``config.optimizer``;
* `experiments.stacking`: stacking run states along a leading axis for ``jax.vmap``;
* `experiments.distributed`: data-parallel training of the sweep over every device, of one
  process or several (``--distributed``);
* `experiments.checkpointing`: orbax checkpoints of a run;
* `experiments.evaluation`: test accuracy, sparsity, compression ratio and speedup (the
  multiply-adds counted by `jaxprune.flops`);
* `experiments.outputs`: per-run and summary JSON/CSV, the tables, the log;
* `experiments.plots`: accuracy-vs-sparsity, training-curve, learning-rate and lottery PNGs;
* `experiments.data`, `experiments.models`: datasets and Flax models;
* `experiments.pipeline`: the training batches streamed by grain from ``tfds.data_source``
  (the in-memory path's order, restartable, one shard per process) for data beyond memory.
"""
