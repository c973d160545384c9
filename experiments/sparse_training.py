"""Sparse training methods of the sweep: dynamic sparse training and pruning at initialisation.

Dynamic sparse training (`DST_METHODS`; the config group ``dst``): the network is sparse from
the first step, with ERK allocation of the sparsity over the kernels, and the run's seed draws
its initial random mask:

* ``static``: one random ERK mask for the whole run (``jaxprune.static_sparse``);
* ``set``: SET (Mocanu et al. 2018), every ``dst.frequency`` steps each kernel drops
  ``dst.drop_fraction`` of its active weights (smallest magnitude) and regrows as many at random
  (``jaxprune.set_sparse``), for the whole run;
* ``rigl``: RigL (Evci et al. 2020), drop by magnitude and grow by dense-gradient magnitude every
  ``dst.frequency`` steps until ``dst.rigl_end_fraction`` of the steps, the drop fraction
  annealed from ``dst.drop_fraction`` to 0 by a cosine (``jaxprune.rigl``);
* ``granet``: GraNet (Liu et al. 2021), from dense, cubic gradual pruning between
  ``dst.granet_begin_fraction`` and ``dst.granet_end_fraction`` of the steps with regrowth by
  gradient at every mask update (drop fraction ``dst.granet_drop_fraction`` decaying to 0;
  ``jaxprune.granet``).

Pruning at initialisation (`AT_INIT_METHODS`; the config group ``at_init``): masks computed
once from each seed's initial weights (and, for SNIP and GraSP, the run's first training
batch), then trained with ``jaxprune.static_sparse(masks=...)``; the pruned weights are zeroed
before the first step:

* ``snip`` (Lee et al. 2019), ``grasp`` (Wang et al. 2020; the logits divided by
  ``at_init.grasp_temperature`` for its Hessian-gradient product, as in the authors' code with
  200), ``synflow`` (Tanaka et al. 2020, ``at_init.synflow_rounds`` rounds, no data), all with
  ``at_init.distribution`` (global);
* ``magnitude_init``: the largest ``|w|`` of the initialisation, same distribution;
* ``random_init``: uniformly random scores with ``at_init.random_distribution`` (ERK);
* ``snip_shuffled``: SNIP's masks shuffled within each kernel (``jaxprune.shuffle_masks``;
  the ablation of Frankle et al. 2021: same per-layer counts, random positions).

Each at-init run's record carries ``at_init``: the layer-collapse report of its masks
(`jaxprune.collapse.layer_collapse`) and the per-kernel counts of kept weights.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import jaxprune
from experiments import data as data_lib

DST_METHODS = ("static", "set", "rigl", "granet")
AT_INIT_METHODS = ("snip", "grasp", "synflow", "magnitude_init", "random_init", "snip_shuffled")
METHODS = DST_METHODS + AT_INIT_METHODS


def dst_steps(config: ml_collections.ConfigDict) -> dict[str, int]:
    """The step numbers of the dynamic sparse methods, from the fractions in ``config.dst``.

    Args:
        config: the config (``num_train_steps`` and the ``dst`` group).

    Returns:
        ``frequency``, ``rigl_end``, ``granet_begin`` and ``granet_end``.
    """
    n = int(config.num_train_steps)
    d = config.dst
    begin = int(round(float(d.granet_begin_fraction) * n))
    return {
        "frequency": int(d.frequency),
        "rigl_end": max(1, int(round(float(d.rigl_end_fraction) * n))),
        "granet_begin": begin,
        "granet_end": max(begin + 1, int(round(float(d.granet_end_fraction) * n))),
    }


def make_dst_tx(method: str, sparsity: float, seed: int,
                config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optimizer of ``config.optimizer`` wrapped by the dynamic sparse method.

    Args:
        method: one of `DST_METHODS`.
        sparsity: the target sparsity of the kernels (allocated by ``dst.distribution``).
        seed: the run's seed (its initial random mask and random growth).
        config: the config.

    Returns:
        The transformation.

    Raises:
        ValueError: for a method that is not in `DST_METHODS`.
    """
    from experiments import train  # (train imports this module lazily)

    inner = train.make_optimizer(config.optimizer, int(config.num_train_steps))
    d, steps = config.dst, dst_steps(config)
    common = dict(distribution=str(d.distribution), seed=int(seed), inner=inner)
    sparsity = float(sparsity)
    if method == "static":
        return jaxprune.static_sparse(sparsity, **common)
    if method == "set":
        return jaxprune.set_sparse(sparsity, drop_fraction=float(d.drop_fraction),
                                   frequency=steps["frequency"], **common)
    if method == "rigl":
        return jaxprune.rigl(sparsity, end_step=steps["rigl_end"],
                             drop_fraction=float(d.drop_fraction), drop_schedule="cosine",
                             frequency=steps["frequency"], **common)
    if method == "granet":
        return jaxprune.granet(sparsity, end_step=steps["granet_end"],
                               begin_step=steps["granet_begin"], frequency=steps["frequency"],
                               initial_sparsity=0.0,
                               drop_fraction=float(d.granet_drop_fraction), **common)
    raise ValueError(f"Unknown dynamic sparse method {method!r} ({', '.join(DST_METHODS)})")


def first_batch(dataset: data_lib.Dataset, batch_size: int, seed: int) -> tuple:
    """The first training batch of the run with ``seed`` (the batch SNIP and GraSP score on).

    Args:
        dataset: the dataset.
        batch_size: the batch size.
        seed: the run's seed.

    Returns:
        ``(images, labels)`` as device arrays.
    """
    idx, _ = data_lib.batch_indices(len(dataset.train), batch_size, seed=seed, position=(0, 0),
                                    count=1)
    return (jnp.asarray(dataset.train.images[idx[0]]),
            jnp.asarray(dataset.train.labels[idx[0]]))


def at_init_masks(method: str, sparsity: float, params: Any, model: Any, batch: tuple,
                  image_shape: tuple, seed: int,
                  config: ml_collections.ConfigDict) -> Any:
    """The masks of a pruning-at-initialisation method for one seed's initial params.

    Args:
        method: one of `AT_INIT_METHODS`.
        sparsity: the fraction of the kernels' weights to remove.
        params: the initial params of the run.
        model: the Flax model (applied with ``train=False``).
        batch: ``(images, labels)``, the batch SNIP and GraSP take the gradient on.
        image_shape: the shape of one input (SynFlow's all-ones input).
        seed: the run's seed (random scores, the shuffle).
        config: the config (``at_init`` group).

    Returns:
        A tree like ``params``: a bool array per kernel, None elsewhere.

    Raises:
        ValueError: for a method that is not in `AT_INIT_METHODS`.
    """
    a = config.at_init
    dist = str(a.distribution)
    sparsity = float(sparsity)

    def loss_fn(p, b, temperature=1.0):
        logits = model.apply({"params": p}, b[0], train=False) / temperature
        return optax.softmax_cross_entropy_with_integer_labels(logits, b[1]).mean()

    # Collapse is reported per run (the record's ``at_init``), not as a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if method in ("snip", "snip_shuffled"):
            masks = jaxprune.snip(params, loss_fn, batch, sparsity, distribution=dist)
            if method == "snip_shuffled":
                masks = jaxprune.shuffle_masks(masks, seed=1000 + int(seed))
            return masks
        if method == "grasp":
            # The authors' code divides the logits by a temperature (200) for the Hessian-
            # gradient product; 1 is the plain loss of the formula.
            t = float(a.get("grasp_temperature", 1.0))
            grasp_loss = lambda p, b: loss_fn(p, b, t)  # noqa: E731
            return jaxprune.grasp(params, grasp_loss, batch, sparsity, distribution=dist)
        if method == "synflow":
            return jaxprune.synflow(
                params, lambda p, x: model.apply({"params": p}, x, train=False),
                (1, *image_shape), sparsity, rounds=int(a.synflow_rounds), distribution=dist)
        if method == "magnitude_init":
            scores = jax.tree.map(jnp.abs, params)
            return jaxprune.at_init.masks_from_scores(params, scores, sparsity,
                                                      distribution=dist)
        if method == "random_init":
            leaves, treedef = jax.tree.flatten(params)
            key = jax.random.key(int(seed))
            scores = jax.tree.unflatten(treedef, [
                jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(x))
                for i, x in enumerate(leaves)])
            return jaxprune.at_init.masks_from_scores(
                params, scores, sparsity, distribution=str(a.random_distribution))
    raise ValueError(f"Unknown pruning-at-initialisation method {method!r} "
                     f"({', '.join(AT_INIT_METHODS)})")


def collapse_record(masks: Any) -> dict[str, Any]:
    """The layer-collapse report of ``masks`` and their kept weights per kernel, as JSON.

    Args:
        masks: a mask tree.

    Returns:
        ``collapsed``, ``connected``, ``empty_leaves``, ``dead_outputs`` (units with no kept
        input, per kernel), ``dead_inputs``, ``description`` and ``kept`` (per kernel).
    """
    report = jaxprune.collapse.layer_collapse(masks)
    summary = jaxprune.sparsity_summary(jax.device_get(masks))
    return {
        "collapsed": bool(report.collapsed),
        "connected": bool(report.connected),
        "empty_leaves": list(report.empty_leaves),
        "dead_outputs": {str(k): int(v) for k, v in report.dead_outputs.items()},
        "dead_inputs": {str(k): int(v) for k, v in report.dead_inputs.items()},
        "description": report.describe(),
        "kept": {str(k): int(v.size - v.zeros) for k, v in summary.leaves.items()},
    }


def make_runs(config: ml_collections.ConfigDict, model: Any, runs: Sequence[Any],
              dataset: data_lib.Dataset) -> tuple[list, list, list[Optional[dict]]]:
    """The transformations, initial states and record extras of runs of one sparse method.

    Args:
        config: the config.
        model: the Flax model.
        runs: `experiments.train.RunSpec`s of one method of `METHODS`.
        dataset: the dataset.

    Returns:
        ``(txs, templates, extras)``; ``extras[i]`` is ``{"at_init": collapse_record(...)}``
        for the pruning-at-initialisation methods, else None.
    """
    from experiments import train

    method = runs[0].method
    txs, templates, extras = [], [], []
    for r in runs:
        if method in DST_METHODS:
            tx = make_dst_tx(method, r.sparsity, r.seed, config)
            txs.append(tx)
            templates.append(train.init_state(model, tx, r.seed, dataset.image_shape))
            extras.append(None)
            continue
        # The seed's initialisation, as every other method of the sweep draws it.
        dense = train.init_state(model, optax.identity(), r.seed, dataset.image_shape)
        batch = first_batch(dataset, int(config.batch_size), r.seed)
        masks = jax.device_get(at_init_masks(method, r.sparsity, dense.params, model, batch,
                                             dataset.image_shape, r.seed, config))
        tx = jaxprune.static_sparse(masks=masks, inner=train.make_optimizer(
            config.optimizer, int(config.num_train_steps)))
        state = train.init_state(model, tx, r.seed, dataset.image_shape)
        params = jax.tree.map(lambda p, m: p if m is None else jnp.where(m, p, jnp.zeros_like(p)),
                              state.params, masks)
        txs.append(tx)
        templates.append(state._replace(params=params))
        extras.append({"at_init": collapse_record(masks)})
    return txs, templates, extras


def collapse_rows(records: Sequence[dict]) -> list[dict]:
    """One row per pruning-at-initialisation run: its collapse report, flattened.

    Args:
        records: run records (those without ``at_init`` are skipped).

    Returns:
        Rows with ``method``, ``target_sparsity``, ``seed``, ``collapsed``, ``connected``,
        ``empty_leaves``, ``kept/<leaf>``, ``dead_outputs/<leaf>`` and ``test_accuracy``.
    """
    rows = []
    for r in records:
        info = r.get("at_init")
        if info is None:
            continue
        row = {"method": r["method"], "target_sparsity": r["target_sparsity"],
               "seed": r["seed"], "collapsed": info["collapsed"],
               "connected": info["connected"], "empty_leaves": ";".join(info["empty_leaves"]),
               "test_accuracy": r["final"]["test_accuracy"]}
        row.update({f"kept/{k}": v for k, v in info["kept"].items()})
        row.update({f"dead_outputs/{k}": v for k, v in info["dead_outputs"].items()})
        rows.append(row)
    return rows


def format_collapse(rows: Sequence[dict]) -> str:
    """Markdown: per (method, sparsity), the seeds whose masks collapse and the kept weights.

    Args:
        rows: `collapse_rows`.

    Returns:
        The table (no trailing newline), or "" without rows.
    """
    if not rows:
        return ""
    leaves = [k[len("kept/"):] for k in rows[0] if k.startswith("kept/")]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["target_sparsity"]), []).append(row)
    lines = ["Layer collapse of the masks at initialisation (jaxprune.collapse.layer_collapse; "
             "kept weights per kernel and units left without input, mean over seeds):", "",
             "| method | sparsity | collapsed (seeds) | "
             + " | ".join(f"kept {k}" for k in leaves) + " | dead units |",
             "|---|---|---|" + "---|" * len(leaves) + "---|"]
    for (method, target), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        collapsed = sum(r["collapsed"] for r in rs)
        kept = [f"{np.mean([r[f'kept/{k}'] for r in rs]):,.0f}" for k in leaves]
        dead = {k[len("dead_outputs/"):]: np.mean([r[k] for r in rs])
                for k in rs[0] if k.startswith("dead_outputs/")}
        dead_text = ", ".join(f"{k.split('/')[0]}: {v:.3g}" for k, v in dead.items() if v) or "0"
        lines.append(f"| {method} | {target:.1%} | {collapsed}/{len(rs)} | " + " | ".join(kept)
                     + f" | {dead_text} |")
    return "\n".join(lines)
