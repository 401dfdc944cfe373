"""``keras.applications`` ResNet50/101/152 (v1): Keras' layer names, biases, epsilon and input order.

As Keras builds it (``keras/src/applications/resnet.py``): a 7x7 stem conv
with bias after ``ZeroPadding2D(3)``, BatchNorm epsilon 1.001e-5, a 3x3
max-pool after ``ZeroPadding2D(1)``, and bottleneck blocks whose stride sits
on the *first* 1x1 conv (v1, not torchvision's v1.5), every conv with a bias.
Blocks are addressed by their Keras prefix (``conv3_block2``); the droppable
ones are those with an identity shortcut (every block but a stage's first).

Keras' ResNet v1 weights expect ``caffe`` preprocessing: BGR images minus
the ImageNet mean, unscaled. This model takes RGB like every zoo model; the
registry's normalisation is that mean (as fractions of 1) with std 1/255, and
the stem conv's input channels are reversed on the way in from Keras and
back on the way out (``keras_reversed_input``), so an exported model takes
``keras.applications.resnet.preprocess_input`` output, as the original does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
from flax import nnx

from model_zoo import keras_layers as kl
from model_zoo.base import ZooModel
from practise_jax.protocol import Stream

EPSILON, MOMENTUM = 1.001e-5, 0.99
STAGES = ("conv2", "conv3", "conv4", "conv5")
CAFFE_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)  # RGB order
CAFFE_STD = (1 / 255,) * 3


def block_addresses(stage_sizes: Sequence[int]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``conv2_block1`` ...; droppable: every block but a stage's first (the only ones with a conv shortcut)."""
    all_blocks = tuple(f"{stage}_block{i}" for stage, n in zip(STAGES, stage_sizes) for i in range(1, n + 1))
    return all_blocks, tuple(a for a in all_blocks if not a.endswith("_block1"))


def bn(channels: int, *, dtype, rngs) -> nnx.BatchNorm:
    return kl.batch_norm(channels, epsilon=EPSILON, momentum=MOMENTUM, dtype=dtype, rngs=rngs)


class Bottleneck(nnx.Module):
    """``residual_block_v1``: 1x1 (stride) -> 3x3 -> 1x1 x4, shortcut a strided 1x1 conv + BN or the identity."""

    inner_channels = ("conv_1", "bn_1", "conv_2")

    def __init__(self, in_ch: int, filters: int, stride: int, conv_shortcut: bool, *, dtype, rngs: nnx.Rngs):
        out_ch = 4 * filters
        self.conv_0 = kl.conv(in_ch, out_ch, 1, stride=stride, dtype=dtype, rngs=rngs) if conv_shortcut else None
        self.bn_0 = bn(out_ch, dtype=dtype, rngs=rngs) if conv_shortcut else None
        self.conv_1 = kl.conv(in_ch, filters, 1, stride=stride, dtype=dtype, rngs=rngs)
        self.bn_1 = bn(filters, dtype=dtype, rngs=rngs)
        self.conv_2 = kl.conv(filters, filters, 3, padding="SAME", dtype=dtype, rngs=rngs)
        self.bn_2 = bn(filters, dtype=dtype, rngs=rngs)
        self.conv_3 = kl.conv(filters, out_ch, 1, dtype=dtype, rngs=rngs)
        self.bn_3 = bn(out_ch, dtype=dtype, rngs=rngs)
        shortcut = ("conv_0",) if conv_shortcut else ()
        self.stream = Stream(writers=("conv_3", *shortcut), readers=("conv_1", *shortcut), identity=not conv_shortcut)

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.conv_0 is None else self.bn_0(self.conv_0(x))
        y = nnx.relu(self.bn_1(self.conv_1(x)))
        y = nnx.relu(self.bn_2(self.conv_2(y)))
        return nnx.relu(shortcut + self.bn_3(self.conv_3(y)))

    def keras_layers(self, name: str) -> dict[str, nnx.Module]:
        parts = [i for i in range(4) if getattr(self, f"conv_{i}") is not None]
        return {f"{name}_{i}_{kind}": getattr(self, f"{kind}_{i}") for i in parts for kind in ("conv", "bn")}

    def keras(self, b, x, name: str):
        shortcut = x
        if self.conv_0 is not None:
            shortcut = b.batch_norm(b.conv(x, self.conv_0, f"{name}_0_conv"), self.bn_0, f"{name}_0_bn")
        y = b.relu(b.batch_norm(b.conv(x, self.conv_1, f"{name}_1_conv"), self.bn_1, f"{name}_1_bn"), f"{name}_1_relu")
        y = b.relu(b.batch_norm(b.conv(y, self.conv_2, f"{name}_2_conv"), self.bn_2, f"{name}_2_bn"), f"{name}_2_relu")
        y = b.batch_norm(b.conv(y, self.conv_3, f"{name}_3_conv"), self.bn_3, f"{name}_3_bn")
        return b.relu(b.add(shortcut, y, f"{name}_add"), f"{name}_out")


class KerasStages(ZooModel):
    """What the Keras ResNets share: stages ``conv2``-``conv5`` of blocks ``{stage}_block{i}``, a ``predictions`` head."""

    head = "predictions"
    keras_pool = "avg_pool"
    stem_layers: tuple[str, ...] = ()  # attributes outside the blocks that hold weights, named as in Keras

    def _begin(self, droppable: tuple[str, ...], name: str, classifier_activation: str | None, stem_width: int, *,
               dtype, rngs: nnx.Rngs) -> None:
        """What both versions set first: the droppable blocks, the name, the head's activation, the 7x7 stem conv."""
        self.droppable = droppable
        self.model_name = name
        self.classifier_activation = classifier_activation
        self.conv1_conv = kl.conv(3, stem_width, 7, stride=2, dtype=dtype, rngs=rngs)

    def residual_blocks(self) -> list[tuple[str, nnx.Module]]:
        return [(f"{stage}_block{i + 1}", block) for stage in STAGES for i, block in enumerate(getattr(self, stage))]

    def group_of(self, address: str) -> str:
        return address.partition("_block")[0]  # conv3_block2 -> conv3

    def classify(self, pooled: jax.Array) -> jax.Array:
        return self.predictions(pooled)

    def keras_layers(self) -> dict[str, nnx.Module]:
        """Keras layer name -> module, for every layer with weights (kept blocks only)."""
        return kl.layer_map(self, (*self.stem_layers, "predictions"))


class KerasResNet(KerasStages):
    keras_reversed_input = "conv1_conv"  # BGR in Keras, RGB here
    keras_preprocessing = "keras.applications.resnet.preprocess_input (caffe: BGR, ImageNet mean subtracted)"
    stem_layers = ("conv1_conv", "conv1_bn")

    def __init__(self, stage_sizes: Sequence[int], *, name: str = "keras_resnet50", num_classes: int = 1000,
                 widths: Sequence[int] = (64, 128, 256, 512), classifier_activation: str | None = "softmax",
                 dtype=None, rngs: nnx.Rngs):
        self._begin(block_addresses(stage_sizes)[1], name, classifier_activation, widths[0], dtype=dtype, rngs=rngs)
        self.conv1_bn = bn(widths[0], dtype=dtype, rngs=rngs)
        in_ch = widths[0]
        for s, (stage, filters, count) in enumerate(zip(STAGES, widths, stage_sizes)):
            stage_blocks = []
            for i in range(count):
                stride = 2 if (s > 0 and i == 0) else 1
                stage_blocks.append(Bottleneck(in_ch, filters, stride, i == 0, dtype=dtype, rngs=rngs))
                in_ch = 4 * filters
            setattr(self, stage, nnx.List(stage_blocks))
        self.predictions = kl.dense(in_ch, num_classes, dtype=dtype, rngs=rngs)

    def stem(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.conv1_bn(self.conv1_conv(kl.zero_pad(x, ((3, 3), (3, 3))))))
        return kl.max_pool(kl.zero_pad(x, ((1, 1), (1, 1))), 3, 2)

    def keras(self, b, x):
        """The Keras graph (`model_zoo.convert.keras_export`), with ``keras.applications``' layer names."""
        x = b.layers.ZeroPadding2D(((3, 3), (3, 3)), name="conv1_pad")(x)
        x = b.relu(b.batch_norm(b.conv(x, self.conv1_conv, "conv1_conv", reverse_input=True), self.conv1_bn, "conv1_bn"),
                   "conv1_relu")
        x = b.layers.ZeroPadding2D(((1, 1), (1, 1)), name="pool1_pad")(x)
        x = b.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
        x = b.blocks(self, x)
        return x, lambda pooled: b.dense(pooled, self.predictions, "predictions", activation=self.classifier_activation)


keras_resnet50 = functools.partial(KerasResNet, (3, 4, 6, 3), name="keras_resnet50")
keras_resnet101 = functools.partial(KerasResNet, (3, 4, 23, 3), name="keras_resnet101")
keras_resnet152 = functools.partial(KerasResNet, (3, 8, 36, 3), name="keras_resnet152")
