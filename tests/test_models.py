"""Third-party models: Hugging Face transformers' Flax GPT-2, ViT and BERT (tiny random configs, no
download). The default leaf selection must take exactly the dense/conv/attention kernels, and the
pruners must train these models with exact zeros and exact counts."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import transformers  # a test dependency (pyproject.toml): these tests fail, never skip, without it

import jaxprune
from jaxprune import leaves

if not hasattr(transformers, "FlaxGPT2LMHeadModel"):
  raise ImportError(
    f"transformers {transformers.__version__} has no Flax models (transformers 5 dropped them); "
    "the test extra pins transformers>=4.57,<5."
  )

pytestmark = pytest.mark.filterwarnings("ignore:.*(TensorFlow and JAX classes|deprecated).*")

WIDTH, LAYERS, HEADS, MLP, VOCAB, SEQ, LABELS = 32, 2, 2, 64, 64, 8, 4


def _hf(fn, *args, **kwargs):
  """Calls transformers' Flax code, which relies on implicit rank and dtype promotion (the test
  config forbids both; jaxprune's own code runs outside this context)."""
  with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
    return fn(*args, **kwargs)


class Model:
  """A model, its params, a batch and a jitted training step per transformation."""

  def __init__(self, name, model, batch, loss):
    self.name, self.model, self.batch, self._loss = name, model, batch, loss
    self.params = model.params

  def loss(self, params, batch):
    return self._loss(self.model, params, batch)

  def train(self, tx, steps):
    @jax.jit
    def step(params, state):
      loss, grads = jax.value_and_grad(self.loss)(params, self.batch)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state, loss

    params, state = self.params, tx.init(self.params)
    losses = []
    for _ in range(steps):
      params, state, loss = step(params, state)
      losses.append(float(loss))
    return params, state, losses


def _lm_loss(model, params, batch):
  logits = _hf(model, batch, params=params, train=False).logits
  return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], batch[:, 1:]).mean()


def _cls_loss(model, params, batch):
  inputs, labels = batch
  logits = _hf(model, inputs, params=params, train=False).logits
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@pytest.fixture(scope="module")
def gpt2():
  config = transformers.GPT2Config(
    n_layer=LAYERS, n_embd=WIDTH, n_head=HEADS, vocab_size=VOCAB, n_positions=16
  )
  model = _hf(transformers.FlaxGPT2LMHeadModel, config, seed=0)
  ids = jax.random.randint(jax.random.key(0), (4, SEQ), 0, VOCAB)
  return Model("gpt2", model, ids, _lm_loss)


@pytest.fixture(scope="module")
def vit():
  config = transformers.ViTConfig(
    image_size=8,
    patch_size=4,
    num_channels=3,
    hidden_size=WIDTH,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=MLP,
    num_labels=LABELS,
  )
  model = _hf(transformers.FlaxViTForImageClassification, config, seed=0)
  images = jax.random.normal(jax.random.key(1), (4, 3, 8, 8))  # NCHW, as transformers takes them
  return Model("vit", model, (images, jnp.arange(4) % LABELS), _cls_loss)


@pytest.fixture(scope="module")
def bert():
  config = transformers.BertConfig(
    vocab_size=VOCAB,
    hidden_size=WIDTH,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=MLP,
    max_position_embeddings=16,
    num_labels=LABELS,
  )
  model = _hf(transformers.FlaxBertForSequenceClassification, config, seed=0)
  ids = jax.random.randint(jax.random.key(2), (4, SEQ), 0, VOCAB)
  return Model("bert", model, (ids, jnp.arange(4) % LABELS), _cls_loss)


@pytest.fixture(scope="module", params=["gpt2", "vit", "bert"])
def any_model(request):
  return request.getfixturevalue(request.param)


def _block_kernels(name):
  """The dense kernels of every transformer block, by the model's own parameter names."""
  if name == "gpt2":
    return [
      f"transformer/h/{i}/{k}/kernel"
      for i in range(LAYERS)
      for k in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj")
    ]
  prefix = {"vit": "vit/encoder/layer", "bert": "bert/encoder/layer"}[name]
  attention = {"vit": "attention/attention", "bert": "attention/self"}[name]
  return [
    f"{prefix}/{i}/{k}/kernel"
    for i in range(LAYERS)
    for k in (
      f"{attention}/query",
      f"{attention}/key",
      f"{attention}/value",
      "attention/output/dense",
      "intermediate/dense",
      "output/dense",
    )
  ]


def _expected_default(name):
  extra = {
    "gpt2": [],  # the LM head is tied to the token embedding: no kernel of its own
    "vit": ["vit/embeddings/patch_embeddings/projection/kernel", "classifier/kernel"],
    "bert": ["bert/pooler/dense/kernel", "classifier/kernel"],
  }[name]
  return set(_block_kernels(name) + extra)


# ------------------------------------------------------------------------- (a) default selection


def test_default_selection_is_exactly_the_kernels(any_model):
  names = [n for n, _ in leaves.named_leaves(any_model.params)]
  selected = set(leaves.selected_names(any_model.params))
  assert selected == _expected_default(any_model.name)
  assert selected <= set(names)
  dense_kept = [n for n in names if n not in selected]
  for pattern in (
    r".*/embedding",
    r".*/wte/.*",
    r".*/wpe/.*",
    r".*cls_token",
    r".*position.*",
    r".*(LayerNorm|layernorm|ln_\w+)/.*",
    r".*/bias",
    r".*/scale",
  ):
    assert not any(re.fullmatch(pattern, n) for n in selected), pattern
  # What the default keeps dense, and what the old rule (every float leaf with ndim >= 2) took.
  old_rule = {n for n, leaf in leaves.named_leaves(any_model.params) if jnp.ndim(leaf) >= 2}
  left_out = {
    "gpt2": {"transformer/wte/embedding", "transformer/wpe/embedding"},
    "vit": {"vit/embeddings/cls_token", "vit/embeddings/position_embeddings"},
    "bert": {
      "bert/embeddings/word_embeddings/embedding",
      "bert/embeddings/position_embeddings/embedding",
      "bert/embeddings/token_type_embeddings/embedding",
    },
  }[any_model.name]
  assert old_rule - selected == left_out and left_out <= set(dense_kept)


# --------------------------------------------------------------------- (b) magnitude pruning 50%


def test_magnitude_pruning_trains_with_exact_zeros_and_counts(any_model):
  tx = jaxprune.magnitude_pruning(0.5, inner=optax.adam(1e-3))
  params, state, losses = any_model.train(tx, steps=4)
  assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
  masks = jaxprune.masks.host_arrays(jaxprune.get_masks(state))
  assert set(masks) == _expected_default(any_model.name)
  named = dict(leaves.named_leaves(params))
  for name, mask in masks.items():
    value = np.asarray(named[name])
    assert mask.shape == value.shape
    assert mask.sum() == mask.size - round(0.5 * mask.size), name  # exact per-leaf count
    assert np.all(value[~mask] == 0), name  # exact zeros
    assert np.count_nonzero(value[mask]) == mask.sum(), name  # the kept weights still train


# ----------------------------------------------------------------------------------- (c) 2:4


def _check_n_m(masks, n=2, m=4):
  for name, mask in masks.items():
    groups = np.moveaxis(mask, -2, -1).reshape(-1, m).sum(-1)
    assert np.all(groups == n), name


@pytest.mark.parametrize("model_name", ["gpt2", "bert"])
def test_two_four_with_default_selection(model_name, request):
  model = request.getfixturevalue(model_name)
  tx = jaxprune.magnitude_pruning(pattern=jaxprune.patterns.n_m(2, 4), inner=optax.adam(1e-3))
  params, state, losses = model.train(tx, steps=2)
  assert all(math.isfinite(v) for v in losses)
  masks = jaxprune.masks.host_arrays(jaxprune.get_masks(state))
  assert set(masks) == _expected_default(model_name)
  _check_n_m(masks)
  named = dict(leaves.named_leaves(params))
  for name, mask in masks.items():
    assert np.all(np.asarray(named[name])[~mask] == 0), name


def test_two_four_on_vit_needs_transformer_blocks(vit):
  # The default selection includes the patch-embedding conv, whose input axis has 3 channels.
  tx = jaxprune.magnitude_pruning(pattern=jaxprune.patterns.n_m(2, 4), inner=optax.adam(1e-3))
  with pytest.raises(ValueError, match="patch_embeddings/projection/kernel"):
    tx.init(vit.params)
  tx = jaxprune.magnitude_pruning(
    pattern=jaxprune.patterns.n_m(2, 4), prune=leaves.transformer_blocks(), inner=optax.adam(1e-3)
  )
  params, state, losses = vit.train(tx, steps=2)
  assert all(math.isfinite(v) for v in losses)
  masks = jaxprune.masks.host_arrays(jaxprune.get_masks(state))
  assert set(masks) == set(_block_kernels("vit"))
  _check_n_m(masks)
  named = dict(leaves.named_leaves(params))
  for name, mask in masks.items():
    assert np.all(np.asarray(named[name])[~mask] == 0), name


# ------------------------------------------------------------------------ (d) ready-made selectors


def test_ready_made_selectors(any_model):
  params, name = any_model.params, any_model.name
  default = set(leaves.selected_names(params))
  assert set(leaves.selected_names(params, leaves.all_kernels())) == default
  assert set(leaves.selected_names(params, leaves.transformer_blocks())) == set(
    _block_kernels(name)
  )
  inner = set(leaves.selected_names(params, leaves.inner_kernels()))
  # First: a stem kernel (ViT's patch embedding) or else the first by natural name order; last: a
  # head kernel (classifier) or else the last by name order (see kernels_except).
  left_out = {
    "gpt2": {"transformer/h/0/attn/c_attn/kernel", f"transformer/h/{LAYERS - 1}/mlp/c_proj/kernel"},
    "vit": {"vit/embeddings/patch_embeddings/projection/kernel", "classifier/kernel"},
    "bert": {"bert/encoder/layer/0/attention/output/dense/kernel", "classifier/kernel"},
  }[name]
  assert default - inner == left_out
  no_head = set(leaves.selected_names(params, leaves.kernels_except(first=False, last=True)))
  head = {
    "gpt2": f"transformer/h/{LAYERS - 1}/mlp/c_proj/kernel",
    "vit": "classifier/kernel",
    "bert": "classifier/kernel",
  }[name]
  assert default - no_head == {head}


def test_selector_drives_a_pruner(bert):
  tx = jaxprune.magnitude_pruning(
    0.5, prune=leaves.kernels_except(first=False, last=True), inner=optax.sgd(0.1)
  )
  _, state, _ = bert.train(tx, steps=1)
  masks = jaxprune.masks.host_arrays(jaxprune.get_masks(state))
  assert set(masks) == _expected_default("bert") - {"classifier/kernel"}
