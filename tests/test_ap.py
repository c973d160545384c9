"""Activate-while-Pruning with gradual magnitude pruning (`jaxprune.magnitude_pruning`,
``activate_while_pruning=``; IMP's AP is tested in test_imp.py): each mask update of the schedule
takes ``floor(p_ap * d)`` of its prune among the kept negative weights that moved least since the
previous mask update, with the counts of plain gradual pruning."""

import jax
import numpy as np
import optax
import pytest

import jaxprune

SHAPES = {"hidden": (12, 10), "output": (10, 4)}
# Mask updates at 1 (the ramp's start, 0%), 3 (the cubic ramp's value there) and 5 (the target).
SCHEDULE = dict(begin_step=1, end_step=5, frequency=2)


def make_params():
  keys = jax.random.split(jax.random.key(0), len(SHAPES))
  return {k: {"kernel": jax.random.normal(key, s)} for key, (k, s) in zip(keys, SHAPES.items())}


def run(tx, params, steps, jit):
  """``(params before update c, masks after update c)`` for c = 0 .. steps - 1."""
  state = tx.init(params)
  step = jax.jit(tx.update) if jit else tx.update
  out = []
  for c in range(steps):
    grads = jax.tree.map(lambda w: jax.random.normal(jax.random.key(100 + c), w.shape), params)
    updates, state = step(grads, state, params)
    out.append((params, jaxprune.get_masks(state)))
    params = optax.apply_updates(params, updates)
  return out


def reference(w_end, w_start, kept, keep, p_ap):
  """AP's prune in NumPy: magnitude keeps keep + n of the kept weights, then the n kept negative
  weights of smallest |w_end - w_start| go; n = min(floor(p_ap * d), d - keep)."""
  d = int(kept.sum())
  n = min(int(np.floor(p_ap * d)), d - keep)
  flat = w_end.ravel()
  order = np.flatnonzero(kept.ravel())[np.argsort(-np.abs(flat[kept.ravel()]), kind="stable")]
  mask = np.zeros(flat.size, bool)
  mask[order[: keep + n]] = True
  negative = np.flatnonzero(mask & (flat < 0))
  moved = np.abs(flat - w_start.ravel())[negative]
  mask[negative[np.argsort(moved, kind="stable")[:n]]] = False
  return mask.reshape(w_end.shape), n


@pytest.mark.parametrize("jit", [False, True], ids=["nojit", "jit"])
def test_gradual_ap_prunes_the_negative_weights_that_moved_least_since_the_last_update(jit):
  sparsity, p_ap = 0.6, 0.1
  schedule = jaxprune.schedules.polynomial(**SCHEDULE)
  tx = jaxprune.magnitude_pruning(
    sparsity, schedule=schedule, activate_while_pruning=p_ap, inner=optax.sgd(0.1)
  )
  history = run(tx, make_params(), 6, jit)
  plain = run(
    jaxprune.magnitude_pruning(sparsity, schedule=schedule, inner=optax.sgd(0.1)),
    make_params(),
    4,
    jit,
  )
  for name, shape in SHAPES.items():
    size = int(np.prod(shape))
    kept = np.ones(shape, bool)  # update 1 prunes nothing (the ramp's start)
    np.testing.assert_array_equal(np.asarray(history[1][1][name]["kernel"]), kept)
    for count, target in ((3, float(schedule.sparsity(3, sparsity))), (5, sparsity)):
      # The prune at `count` reads the weights it receives; the movement is measured from the
      # weights after the previous mask update (those update count - 1 received).
      keep = size - round(target * size)
      expected, n = reference(
        np.asarray(history[count][0][name]["kernel"]),
        np.asarray(history[count - 1][0][name]["kernel"]),
        kept,
        keep,
        p_ap,
      )
      mask = np.asarray(history[count][1][name]["kernel"])
      np.testing.assert_array_equal(mask, expected, err_msg=f"{name}, update {count}")
      assert n > 0 and (~mask).sum() == size - keep  # the count of plain gradual pruning
      assert not (mask & ~kept).any()  # pruned weights stay pruned
      assert np.all(np.asarray(history[count][0][name]["kernel"])[~kept] == 0)
      kept = mask
    # AP changed which weights the first real prune removed.
    assert (np.asarray(history[3][1][name]["kernel"]) != plain[3][1][name]["kernel"]).any()


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(activate_while_pruning=1.0), "activate_while_pruning must be in"),
    (dict(activate_while_pruning=0.1, pattern=jaxprune.patterns.block((2, 2))), "pattern=Block"),
    (dict(activate_while_pruning=0.1, application="ephemeral"), "application='ephemeral'"),
  ],
)
def test_gradual_ap_errors_name_the_value(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jaxprune.magnitude_pruning(0.5, **kwargs)


def test_pruning_rejects_a_rule_that_is_not_a_rule():
  with pytest.raises(TypeError, match="rule must be a jaxprune.rules.Rule, got 'prune'"):
    jaxprune.pruning(jaxprune.scores.magnitude, 0.5, rule="prune")


def test_gradual_ap_is_exact_with_a_global_threshold():
  tx = jaxprune.magnitude_pruning(
    0.7,
    distribution="global",
    schedule=jaxprune.schedules.polynomial(**SCHEDULE),
    activate_while_pruning=0.05,
    inner=optax.sgd(0.1),
  )
  history = run(tx, make_params(), 6, jit=True)
  masks = history[-1][1]
  total = sum(int(np.prod(s)) for s in SHAPES.values())
  assert sum(int((~masks[k]["kernel"]).sum()) for k in SHAPES) == round(0.7 * total)
  plain = run(
    jaxprune.magnitude_pruning(
      0.7,
      distribution="global",
      schedule=jaxprune.schedules.polynomial(**SCHEDULE),
      inner=optax.sgd(0.1),
    ),
    make_params(),
    6,
    jit=True,
  )[-1][1]
  assert any((masks[k]["kernel"] != plain[k]["kernel"]).any() for k in SHAPES)
