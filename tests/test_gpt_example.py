"""The GPT example (experiments/gpt.py): its tiny config trained on a 4 x 2 mesh of the 8 test devices.

One module-scoped run trains the pruned model (the dense run of `python -m experiments.gpt` is left
out: compiling its step would add a third of the file's time); the tests read it. The step compared
with one device reuses the run's compiled sharded step, so only the one-device step compiles again.
"""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from processes import run_workers

import jaxprune
from experiments import gpt

CONFIG = gpt.CONFIGS["tiny"]


@pytest.fixture(scope="module")
def result():
  assert jax.device_count() >= 8, "tests/conftest.py forces 8 host devices"
  return gpt.train(
    CONFIG, methods=("pruned",), devices=jax.devices()[:8], model_axis=2, progress=False
  )


def _named(tree):
  return dict(jaxprune.leaves.named_leaves(tree))


def test_data_is_split_by_position_and_windows_are_seeded():
  data = gpt.load_data()
  text = "\n\n".join(p.read_text(encoding="utf-8") for p in gpt.doc_files())
  assert len(data.train) + len(data.val) == len(text) > 100_000
  assert len(data.train) == int(0.9 * len(text))
  assert "".join(data.chars[i] for i in data.val[:50]) == text[len(data.train) :][:50]
  assert data.vocab_size % 64 == 0 and data.vocab_size >= len(data.chars)
  a = data.windows("train", 4, 16, np.random.default_rng(3))
  b = data.windows("train", 4, 16, np.random.default_rng(3))
  np.testing.assert_array_equal(a, b)
  assert a.shape == (4, 17) and a.dtype == np.int32
  # A process's rows of a global batch are those rows of the batch one process draws.
  halves = [data.windows("train", 4, 16, np.random.default_rng(3), slice(i, i + 2)) for i in (0, 2)]
  np.testing.assert_array_equal(np.concatenate(halves), a)


def test_loss_decreases_and_the_report_is_written(result, tmp_path, capsys):
  for name, run in result["runs"].items():
    first, last = run.history[0]["val_loss"], run.history[-1]["val_loss"]
    assert math.isfinite(last) and last < first - 0.5, (name, run.history)
    assert [h["step"] for h in run.history] == [0, 10, 20, 30]
    assert len(run.times) == CONFIG.steps
  path = gpt.report(result, tmp_path)
  saved = json.loads(path.read_text())
  assert set(saved["runs"]) == {"pruned"}
  assert saved["mesh"] == {"data": 4, "model": 2}
  pruned = saved["runs"]["pruned"]
  assert pruned["kernel_sparsity"] == pytest.approx(CONFIG.sparsity, abs=1e-4)
  assert pruned["mask_sparsity"] == pytest.approx(CONFIG.sparsity, abs=1e-4)
  assert pruned["step_time_s"] > 0 and pruned["step_time_ratio"] is None  # no dense run here
  assert pruned["nonzero_params"] == pruned["params"] - pruned["kernel_zeros"]
  assert (tmp_path / "val_loss.png").stat().st_size > 1000
  assert "| pruned |" in capsys.readouterr().out


def test_pruned_kernels_have_exactly_the_target_sparsity(result):
  run = result["runs"]["pruned"]
  params, masks = _named(run.params), _named(jaxprune.get_masks(run.state))
  assert set(masks) == set(gpt.kernels(run.params)) and all(k.startswith("blocks/") for k in masks)
  size = sum(m.size for m in masks.values())
  pruned = 0
  for name, mask in masks.items():
    mask, param = np.asarray(mask), np.asarray(params[name])
    assert np.all(param[~mask] == 0), name
    assert np.count_nonzero(param == 0) == np.count_nonzero(~mask), name  # exact zeros = pruned
    pruned += np.count_nonzero(~mask)
  assert pruned == round(CONFIG.sparsity * size)  # global: one threshold, exact in total


def test_params_and_masks_keep_their_shardings(result):
  mesh = result["mesh"]
  pruned = result["runs"]["pruned"]
  params = _named(pruned.params)
  for name, param in params.items():
    expected = NamedSharding(mesh, gpt.param_spec(name, param.shape, mesh))
    assert param.sharding.is_equivalent_to(expected, param.ndim), name
  assert gpt.param_spec("blocks/query/kernel", (2, 32, 2, 16), mesh) == P(
    None, "data", None, "model"
  )
  state = jaxprune.masks.find_states(pruned.state, lambda s: hasattr(s, "masks"))
  for name in gpt.kernels(pruned.params):
    node = state[0].masks
    for key in name.split("/"):
      node = node[key]
    assert isinstance(node, jaxprune.PackedMask), name
    assert isinstance(node.bits.sharding, NamedSharding) and node.bits.sharding.mesh == mesh, name
    assert node.bits.sharding.spec == params[name].sharding.spec, name


def test_sharded_step_matches_one_device(result):
  run, mesh = result["runs"]["pruned"], result["mesh"]
  params = result["init"](jax.random.key(CONFIG.seed))
  state, _ = gpt.init_state(run.tx, params, mesh)
  batches = result["batches"]()
  sharding = gpt.batch_sharding(mesh)
  for _ in range(3 * CONFIG.frequency):  # to count 15: the next update recomputes the masks
    params, state, _ = run.step(params, state, gpt.to_global(next(batches), sharding))
  host = jax.device_get((params, state))
  batch = next(batches)
  one_params, one_state, one_loss = gpt.make_step(result["model"], run.tx)(
    *jax.device_put(host, jax.devices()[0]), jnp.asarray(batch)
  )
  params, state, loss = run.step(params, state, gpt.to_global(batch, sharding))
  np.testing.assert_allclose(float(loss), float(one_loss), rtol=1e-6)
  before = _named(jaxprune.get_masks(host[1]))
  masks, one_masks = _named(jaxprune.get_masks(state)), _named(jaxprune.get_masks(one_state))
  assert any(not np.array_equal(masks[k], before[k]) for k in masks)  # this step pruned more
  for name in masks:
    np.testing.assert_array_equal(np.asarray(masks[name]), np.asarray(one_masks[name]), name)
  one = _named(one_params)
  for name, param in _named(params).items():
    np.testing.assert_allclose(np.asarray(param), np.asarray(one[name]), rtol=1e-5, atol=1e-6)


def test_two_processes_train_as_one_does(result):
  # The same run on two processes of 4 devices each (one 4 x 2 mesh over both, gloo collectives),
  # each process feeding its rows of every batch: the same masks and the same losses as the one
  # process of the module's run.
  outputs = run_workers(Path(__file__).with_name("gpt_worker.py"))
  [line] = [x for x in outputs[0].splitlines() if x.startswith("report ")]
  report = json.loads(line[len("report ") :])
  run = result["runs"]["pruned"]
  assert report["mesh"] == {"data": 4, "model": 2}
  masks = _named(jaxprune.get_masks(run.state))
  assert report["kept"] == {k: int(np.sum(np.asarray(m))) for k, m in masks.items()}
  assert report["zeros"] == {k: int(np.sum(np.asarray(m) == 0)) for k, m in masks.items()}
  np.testing.assert_allclose(report["val_loss"], [h["val_loss"] for h in run.history], rtol=1e-5)


def test_layer_head_pruner_removes_each_layers_own_heads(result):
  # The head group read off the jaxpr spans the stacked leaves; the layer-by-layer pruner splits it
  # per layer: every layer keeps exactly (1 - head_sparsity) of its heads, chosen by its own weights.
  params = result["init"](jax.random.key(CONFIG.seed))
  groups = gpt.head_groups(result["model"], params, jnp.asarray(next(result["batches"]())))
  tx = gpt.layer_head_pruner(CONFIG, groups)
  host = jax.device_get(params)
  # Layer 1's heads in reverse order of layer 0's strength, so the layers must keep other heads.
  query = np.asarray(host["blocks"]["query"]["kernel"])
  scale = np.array([[3.0, 1.0], [1.0, 3.0]])[:, None, :, None]  # [layers, 1, heads, 1]
  host["blocks"]["query"]["kernel"] = query * scale
  state = tx.init(host)
  update = jax.jit(tx.update)
  zeros = jax.tree.map(jnp.zeros_like, host)
  for _ in range(CONFIG.end_step + 1):
    _, state = update(zeros, state, host)
  masks = _named(jaxprune.get_masks(state))
  heads = CONFIG.heads
  kept_per_layer = []
  for name in ("blocks/query/kernel", "blocks/key/kernel", "blocks/value/kernel"):
    mask = np.asarray(masks[name])  # [layers, d_model, heads, head_dim]
    per_head = mask.all(axis=(1, 3))
    assert np.array_equal(per_head, mask.any(axis=(1, 3))), name  # whole heads only
    kept_per_layer.append(per_head)
  assert all(np.array_equal(k, kept_per_layer[0]) for k in kept_per_layer)
  out = np.asarray(masks["blocks/out/kernel"]).all(axis=(2, 3))  # [layers, heads]
  np.testing.assert_array_equal(out, kept_per_layer[0])
  kept = kept_per_layer[0]
  assert list(kept.sum(axis=1)) == [round(heads * (1 - CONFIG.head_sparsity))] * kept.shape[0]
  np.testing.assert_array_equal(kept, [[True, False], [False, True]])
