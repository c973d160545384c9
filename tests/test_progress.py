"""Progress of long library calls (`jaxprune.progress`): a bar on stderr, log lines, silent in jit."""

from __future__ import annotations

import logging
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune import progress as progress_lib

ROUNDS = progress_lib.MIN_STEPS  # long enough for the default to show a bar


def make_params():
  k = jax.random.split(jax.random.key(0), 2)
  return {
    "l1": {"kernel": jax.random.normal(k[0], (4, 5)), "bias": jnp.zeros(5)},
    "l2": {"kernel": jax.random.normal(k[1], (5, 3)), "bias": jnp.zeros(3)},
  }


def apply(params, x):
  h = jax.nn.relu(x @ params["l1"]["kernel"] + params["l1"]["bias"][None, :])
  return h @ params["l2"]["kernel"] + params["l2"]["bias"][None, :]


def synflow(params, rounds=ROUNDS, **kwargs):
  return jaxprune.synflow(params, apply, (1, 4), 0.7, rounds=rounds, **kwargs)


def records(caplog, level=None):
  return [
    r.getMessage()
    for r in caplog.records
    if r.name == "jaxprune" and (level is None or r.levelno == level)
  ]


@pytest.fixture
def no_tqdm(monkeypatch):
  """tqdm not installed: ``import tqdm`` raises ImportError."""
  monkeypatch.setitem(sys.modules, "tqdm", None)


@pytest.fixture(autouse=True)
def bars_allowed(monkeypatch):
  monkeypatch.delenv("TQDM_DISABLE", raising=False)


@pytest.fixture(scope="module")
def reference_masks():
  return synflow(make_params(), progress=False)


@pytest.mark.parametrize("enabled", [True, None])
def test_synflow_bar_on_stderr_and_same_masks(capsys, enabled, reference_masks):
  masks = synflow(make_params(), progress=enabled)
  out, err = capsys.readouterr()
  assert out == ""
  assert "synflow:" in err and f"/{ROUNDS}" in err and "round" in err
  for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(reference_masks)):
    np.testing.assert_array_equal(a, b)


def test_synflow_silent_when_disabled(capsys, caplog):
  caplog.set_level(logging.DEBUG, logger="jaxprune")
  synflow(make_params(), progress=False)
  assert capsys.readouterr() == ("", "")
  # Still routable: the start and the end, at DEBUG.
  messages = records(caplog)
  assert records(caplog, logging.DEBUG) == messages and len(messages) == 2, messages
  assert messages[0] == f"synflow: running {ROUNDS} rounds"
  assert messages[1].startswith(f"synflow: {ROUNDS} rounds done in ")


def test_short_loops_show_no_bar_by_default(capsys):
  list(progress_lib.progress(range(progress_lib.MIN_STEPS - 1), desc="demo"))
  assert capsys.readouterr().err == ""
  list(progress_lib.progress(range(2), desc="demo", enabled=True))
  assert "demo:" in capsys.readouterr().err


def test_prune_at_init_passes_progress_through(capsys):
  for progress, shows_bar in ((True, True), (False, False)):
    tx = jaxprune.prune_at_init(
      make_params(),
      0.7,
      method="synflow",
      apply_fn=apply,
      input_shape=(1, 4),
      rounds=ROUNDS,
      progress=progress,
      inner=optax.sgd(0.1),
    )
    err = capsys.readouterr().err
    assert ("synflow:" in err) if shows_bar else err == ""
    assert tx is not None


@pytest.mark.parametrize("closed_over", [False, True], ids=["traced-params", "closed-over-params"])
def test_synflow_silent_under_jit_by_default(monkeypatch, capsys, caplog, closed_over):
  # Two rounds count as long here, so the same call outside jit shows a bar (and traces fast).
  monkeypatch.setattr(progress_lib, "MIN_STEPS", 2)
  params = make_params()
  eager = synflow(params, rounds=2)
  assert "synflow:" in capsys.readouterr().err
  caplog.set_level(logging.INFO, logger="jaxprune")
  # The collapse check reads the masks on the host, which a traced call cannot.
  run = lambda p: synflow(params if closed_over else p, rounds=2, check_collapse=False)
  if closed_over:  # only traced (compiling the params in as constants is slow)
    jax.make_jaxpr(run)(params)
  else:
    masks = jax.jit(run)(params)
    for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(eager)):
      np.testing.assert_array_equal(a, b)
  assert capsys.readouterr() == ("", "")
  assert records(caplog) == []  # the DEBUG lines only


def test_enabled_under_jit_logs_instead_of_a_bar(capsys, caplog):
  caplog.set_level(logging.INFO, logger="jaxprune")

  def f(x):
    for _ in progress_lib.progress(range(3), desc="demo", enabled=True, arrays=x):
      x = x + 1
    return x

  assert jax.jit(f)(jnp.zeros(())) == 3
  assert capsys.readouterr() == ("", "")
  messages = records(caplog, logging.INFO)
  assert messages[0] == "demo: tracing 3 steps"
  assert messages[1].startswith("demo: 3 steps traced in ")


@pytest.mark.parametrize("enabled", [True, None])
def test_without_tqdm_logs_info_and_prints_nothing(no_tqdm, capsys, caplog, enabled):
  caplog.set_level(logging.INFO, logger="jaxprune")
  synflow(make_params(), progress=enabled)
  assert capsys.readouterr() == ("", "")
  messages = records(caplog, logging.INFO)
  assert len(messages) == 2, messages
  assert messages[0] == f"synflow: running {ROUNDS} rounds"
  assert messages[1].startswith(f"synflow: {ROUNDS} rounds done in ")
  assert messages[1].endswith(" s")


def test_stopping_early_is_logged(caplog):
  caplog.set_level(logging.DEBUG, logger="jaxprune")
  for i in progress_lib.progress(range(20), desc="demo", enabled=False):
    if i == 4:
      break
  assert records(caplog)[-1].startswith("demo: stopped after 4 of 20 steps, ")


def test_tqdm_disable_env_var(monkeypatch, capsys):
  monkeypatch.setenv("TQDM_DISABLE", "1")
  list(progress_lib.progress(range(ROUNDS), desc="demo", enabled=True))
  assert capsys.readouterr().err == ""


@pytest.mark.parametrize("enabled", ["yes", 1, 0, 1.0, "auto"])
def test_enabled_of_a_wrong_type_raises(enabled):
  with pytest.raises(TypeError, match=rf"progress must be True, False or None.*got {enabled!r}"):
    progress_lib.progress(range(3), desc="demo", enabled=enabled)  # at once, not on iterating
  with pytest.raises(TypeError, match=rf"synflow: progress .*got {enabled!r}"):
    synflow(make_params(), progress=enabled)
  with pytest.raises(TypeError, match=rf"prune_at_init: progress .*got {enabled!r}"):
    jaxprune.prune_at_init(make_params(), 0.5, method="synflow", progress=enabled, inner=None)


@pytest.mark.parametrize("enabled", [np.True_, np.False_])
def test_numpy_bool_is_accepted(capsys, enabled):
  assert list(progress_lib.progress(range(2), desc="demo", enabled=enabled)) == [0, 1]
  assert ("demo:" in capsys.readouterr().err) == bool(enabled)
