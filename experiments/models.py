"""Flax linen models used in the pruning literature.

Every model is called as ``model.apply(variables, x, train=...)`` with ``x`` of shape
(N, H, W, C). Models with BatchNorm (the VGGs and ResNet-20) keep running statistics in
the ``batch_stats`` collection; ``train=True`` uses batch statistics and updates them
(apply with ``mutable=['batch_stats']``), ``train=False`` uses the running averages.

Models:

* ``LeNet300100``: the fully connected 784-300-100-10 net of LeCun et al. (1998), as in
  Han et al. (2015) and Frankle & Carbin (2019). Flattens its input. 266,610 parameters.
* ``LeNet5``: the "Caffe" LeNet-5 variant (conv 20 5x5, max pool, conv 50 5x5, max pool,
  dense 500, dense 10), 431,080 parameters on 28x28x1 inputs. ReLU after each hidden layer.
* ``Conv2`` / ``Conv4`` / ``Conv6``: the conv nets of Frankle & Carbin (2019, Fig. 2):
  2/4/6 3x3 conv layers (64, 64 | 128, 128 | 256, 256 filters, max pool after each pair),
  then dense 256, 256, classes. Written for 32x32 inputs but work for any HxW (the first
  dense layer's width follows the input size). 4,301,642 / 2,425,930 / 2,262,602
  parameters on 32x32x3 inputs.
* ``VGG``: CIFAR-style VGG with BatchNorm: 3x3 conv stages, max pool after each stage,
  global average pooling and one dense classifier. ``vgg_small``, ``vgg11`` and ``vgg16``
  are configurations of it.
* ``ResNet20``: the CIFAR ResNet of He et al. (2016, Sec. 4.2) with n=3: 3 stages of 3
  basic blocks with 16/32/64 filters, identity shortcuts with zero padding when the shape
  changes ("option A"), global average pooling, dense classifier. 269,722 parameters.
  ``resnet20_b`` has 1x1 projection shortcuts ("option B") and every block's inner width as a
  field, for structured pruning.
* ``vgg_mnist``: the VGG with half of ``vgg_small``'s widths (32, 64, 128), for CPU runs.
* ``ViT``: a small vision transformer (Dosovitskiy et al. 2021) for MNIST: non-overlapping
  ``patch`` x ``patch`` patches (7x7: 16 tokens of 28x28 images) embedded by a Dense layer, a class
  token and learned position embeddings, ``depth`` pre-norm blocks of multi-head self-attention
  (``flax.linen.MultiHeadDotProductAttention``: 3-D DenseGeneral kernels) and a GELU MLP, and a
  Dense head on the class token. ``vit`` is dim 64, 4 blocks, 4 heads, MLP 128: 139,018
  parameters.

Kernels use Glorot (Xavier) normal initialisation for the LeNets and the Conv-n nets, as
in Frankle & Carbin (2019); the BatchNorm models use He (Kaiming) normal for convolutions.
Biases start at zero. ``lenet300_100_vs`` is LeNet-300-100 with the initialiser of SNIP's code
(namhoonlee/snip-public, ``network.py``: TF1's ``tf.variance_scaling_initializer()`` with its
defaults, scale 1 over the fan-in, truncated normal), for the controlled experiment of
``experiments/configs/mnist_snip_budget_vs.py``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

glorot_normal = nn.initializers.glorot_normal()
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
lecun_truncated_normal = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def _flatten(x):
  return x.reshape((x.shape[0], -1))


class LeNet300100(nn.Module):
  num_classes: int = 10
  hidden: Sequence[int] = (300, 100)
  kernel_init: Callable = glorot_normal

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = _flatten(x)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, kernel_init=self.kernel_init)(x))
    return nn.Dense(self.num_classes, kernel_init=self.kernel_init)(x)


class LeNet5(nn.Module):
  num_classes: int = 10
  features: Sequence[int] = (20, 50)
  hidden: int = 500

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    for features in self.features:
      x = nn.Conv(features, (5, 5), padding="VALID", kernel_init=glorot_normal)(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = _flatten(x)
    x = nn.relu(nn.Dense(self.hidden, kernel_init=glorot_normal)(x))
    return nn.Dense(self.num_classes, kernel_init=glorot_normal)(x)


class ConvNet(nn.Module):
  """Frankle & Carbin's Conv-n: pairs of 3x3 convs with max pooling, then 256-256-out."""

  num_classes: int = 10
  stages: Sequence[int] = (64,)
  dense: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    for features in self.stages:
      for _ in range(2):
        x = nn.Conv(features, (3, 3), padding="SAME", kernel_init=glorot_normal)(x)
        x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = _flatten(x)
    for width in self.dense:
      x = nn.relu(nn.Dense(width, kernel_init=glorot_normal)(x))
    return nn.Dense(self.num_classes, kernel_init=glorot_normal)(x)


class Conv2(ConvNet):
  stages: Sequence[int] = (64,)


class Conv4(ConvNet):
  stages: Sequence[int] = (64, 128)


class Conv6(ConvNet):
  stages: Sequence[int] = (64, 128, 256)


def _batch_norm(train: bool, **kw):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, **kw)


class VGG(nn.Module):
  """CIFAR-style VGG: ``stages`` is a list of lists of conv widths."""

  num_classes: int = 10
  stages: Sequence[Sequence[int]] = ((64, 64), (128, 128), (256, 256))

  @nn.compact
  def __call__(self, x, train: bool = False):
    for stage in self.stages:
      for features in stage:
        x = nn.Conv(features, (3, 3), padding="SAME", use_bias=False, kernel_init=he_normal)(x)
        x = nn.relu(_batch_norm(train)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


VGG_CONFIGS = {
  "vgg_small": ((64, 64), (128, 128), (256, 256)),
  "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
  "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
}


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers (``inner`` features after the first, ``features`` after the second).

  The shortcut is the identity; where the shape changes it is zero-padded ("option A", the
  default) or a 1x1 convolution with batch norm ("B", whose widths are all layer widths, which is
  what structured pruning needs: zero padding ties the new channels to the old by position).
  """

  features: int
  stride: int = 1
  inner: int | None = None
  shortcut: str = "A"

  @nn.compact
  def __call__(self, x, train: bool = False):
    def conv(features, s):
      return nn.Conv(
        features, (3, 3), strides=(s, s), padding="SAME", use_bias=False, kernel_init=he_normal
      )

    y = nn.relu(_batch_norm(train)(conv(self.inner or self.features, self.stride)(x)))
    y = _batch_norm(train)(conv(self.features, 1)(y))
    shortcut = x
    if self.shortcut == "B" and (self.stride != 1 or x.shape[-1] != self.features):
      s = (self.stride, self.stride)
      proj = nn.Conv(self.features, (1, 1), strides=s, use_bias=False, kernel_init=he_normal)
      return nn.relu(y + _batch_norm(train)(proj(x)))
    if self.stride != 1:
      shortcut = shortcut[:, :: self.stride, :: self.stride, :]
    extra = self.features - shortcut.shape[-1]
    if extra > 0:
      pad = (extra // 2, extra - extra // 2)
      shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), pad))
    return nn.relu(y + shortcut)


class ResNet20(nn.Module):
  """``widths``: the residual stream of each stage; ``inner``: the first conv of each block (by
  default the stage's width; one entry per block); ``shortcut``: "A" or "B" (`BasicBlock`)."""

  num_classes: int = 10
  blocks_per_stage: int = 3
  widths: Sequence[int] = (16, 32, 64)
  inner: Sequence[int] | None = None
  shortcut: str = "A"

  @nn.compact
  def __call__(self, x, train: bool = False):
    inner = self.inner
    if inner is None:
      inner = [w for w in self.widths for _ in range(self.blocks_per_stage)]
    if len(inner) != len(self.widths) * self.blocks_per_stage:
      raise ValueError(
        f"ResNet20: inner has {len(inner)} widths for {len(self.widths)} stages of "
        f"{self.blocks_per_stage} blocks."
      )
    x = nn.Conv(self.widths[0], (3, 3), padding="SAME", use_bias=False, kernel_init=he_normal)(x)
    x = nn.relu(_batch_norm(train)(x))
    for i, width in enumerate(self.widths):
      for j in range(self.blocks_per_stage):
        stride = 2 if (i > 0 and j == 0) else 1
        block = BasicBlock(width, stride, inner[i * self.blocks_per_stage + j], self.shortcut)
        x = block(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class ViT(nn.Module):
  """A small vision transformer: patch embedding, class token, pre-norm blocks, class-token head."""

  num_classes: int = 10
  patch: int = 7
  dim: int = 64
  depth: int = 4
  heads: int = 4
  mlp_dim: int = 128

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    n, h, w, c = x.shape
    p = self.patch
    x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(n, (h // p) * (w // p), p * p * c)
    x = nn.Dense(self.dim, name="embed")(x)
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, self.dim)), x], axis=1)
    pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1,) + x.shape[1:])
    x = x + pos
    for _ in range(self.depth):
      y = nn.LayerNorm()(x)
      x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.dim)(y)
      y = nn.LayerNorm()(x)
      y = nn.gelu(nn.Dense(self.mlp_dim)(y))
      y = nn.Dense(self.dim)(y)
      x = x + y
    x = nn.LayerNorm()(x[:, 0])
    return nn.Dense(self.num_classes, name="head")(x)


_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
  "lenet300_100": lambda n: LeNet300100(num_classes=n),
  # SNIP's code's initialiser (scale 1 / fan-in, truncated normal): mnist_snip_budget_vs.
  "lenet300_100_vs": lambda n: LeNet300100(num_classes=n, kernel_init=lecun_truncated_normal),
  "mlp_40_40": lambda n: LeNet300100(num_classes=n, hidden=(40, 40)),  # DropNet's MNIST model A
  "lenet5": lambda n: LeNet5(num_classes=n),
  "conv2": lambda n: Conv2(num_classes=n),
  "conv4": lambda n: Conv4(num_classes=n),
  "conv6": lambda n: Conv6(num_classes=n),
  **{
    name: (lambda n, s=stages: VGG(num_classes=n, stages=s)) for name, stages in VGG_CONFIGS.items()
  },
  "resnet20": lambda n: ResNet20(num_classes=n),
  # Structured pruning: every width a field (see experiments.structured).
  "vgg_mnist": lambda n: VGG(num_classes=n, stages=((32, 32), (64, 64), (128, 128))),
  "resnet20_b": lambda n: ResNet20(
    num_classes=n, inner=(16,) * 3 + (32,) * 3 + (64,) * 3, shortcut="B"
  ),
  # One-shot pruning with calibration data (experiments.oneshot).
  "vit": lambda n: ViT(num_classes=n),
}

_ALIASES = {
  "lenet300": "lenet300_100",
  "lenet_300_100": "lenet300_100",
  "lenet300100": "lenet300_100",
  "lenet_5": "lenet5",
  "resnet_20": "resnet20",
}

MODEL_NAMES = tuple(sorted(_FACTORIES))


def get_model(name: str, num_classes: int) -> nn.Module:
  """Builds a model by name (case-insensitive; '-' and '_' are interchangeable)."""
  key = str(name).strip().lower().replace("-", "_")
  key = _ALIASES.get(key, key)
  if key not in _FACTORIES:
    raise ValueError(f"Unknown model {name!r}; valid names are: {', '.join(MODEL_NAMES)}")
  return _FACTORIES[key](int(num_classes))
