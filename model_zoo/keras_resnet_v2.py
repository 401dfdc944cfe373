"""``keras.applications`` ResNet50V2/101V2/152V2: pre-activation bottlenecks with Keras' layer names.

As Keras builds it (``residual_block_v2``): each block starts with its own
BatchNorm + ReLU (``_preact_bn``); the first block of a stage has a 1x1 conv
shortcut on that pre-activation, the *last* block of conv2-conv4 carries the
stride (its 3x3 conv, after ``ZeroPadding2D(1)``; its shortcut a 1x1
max-pool of that stride), and the network ends with ``post_bn`` + ReLU.
The stem conv has a bias and no BatchNorm; its 3x3 max-pool pads with zeros
on values that may be negative, as Keras does. Preprocessing is Keras' ``tf``
mode, pixels scaled to [-1, 1] (mean 0.5, std 0.5 on [0, 1], RGB).

Droppable: blocks with an identity shortcut (neither a stage's first nor a
strided last). The stream's readers see it through the block's pre-activation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
from flax import nnx

from model_zoo import keras_layers as kl
from model_zoo.keras_resnet import EPSILON, MOMENTUM, STAGES, KerasStages, bn
from practise_jax.protocol import Stream


def strides(stage_sizes: Sequence[int]) -> dict[str, int]:
    """Block address -> stride: 2 on the last block of every stage but the last, else 1."""
    return {f"{stage}_block{i}": 2 if (i == n and s < len(STAGES) - 1) else 1
            for s, (stage, n) in enumerate(zip(STAGES, stage_sizes)) for i in range(1, n + 1)}


def block_addresses(stage_sizes: Sequence[int]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    all_blocks = tuple(strides(stage_sizes))
    droppable = tuple(a for a, s in strides(stage_sizes).items() if s == 1 and not a.endswith("_block1"))
    return all_blocks, droppable


class PreActBottleneck(nnx.Module):
    """``residual_block_v2``: BN-ReLU pre-activation, 1x1 -> 3x3 (stride) -> 1x1 x4, added to the shortcut."""

    inner_channels = ("conv_1", "bn_1", "conv_2")

    def __init__(self, in_ch: int, filters: int, stride: int, conv_shortcut: bool, *, dtype, rngs: nnx.Rngs):
        out_ch = 4 * filters
        self.stride = stride
        self.preact_bn = bn(in_ch, dtype=dtype, rngs=rngs)
        self.conv_0 = kl.conv(in_ch, out_ch, 1, dtype=dtype, rngs=rngs) if conv_shortcut else None
        self.conv_1 = kl.conv(in_ch, filters, 1, bias=False, dtype=dtype, rngs=rngs)
        self.bn_1 = bn(filters, dtype=dtype, rngs=rngs)
        self.conv_2 = kl.conv(filters, filters, 3, stride=stride, bias=False, dtype=dtype, rngs=rngs)
        self.bn_2 = bn(filters, dtype=dtype, rngs=rngs)
        self.conv_3 = kl.conv(filters, out_ch, 1, dtype=dtype, rngs=rngs)
        shortcut = ("conv_0",) if conv_shortcut else ()
        self.stream = Stream(writers=("conv_3", *shortcut), readers=("conv_1", *shortcut),
                             identity=not conv_shortcut and stride == 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        preact = nnx.relu(self.preact_bn(x))
        if self.conv_0 is not None:
            shortcut = self.conv_0(preact)
        else:
            shortcut = x[:, ::self.stride, ::self.stride] if self.stride > 1 else x
        y = nnx.relu(self.bn_1(self.conv_1(preact)))
        y = nnx.relu(self.bn_2(self.conv_2(kl.zero_pad(y, ((1, 1), (1, 1))))))
        return shortcut + self.conv_3(y)

    def keras_layers(self, name: str) -> dict[str, nnx.Module]:
        layers = {f"{name}_preact_bn": self.preact_bn, f"{name}_1_conv": self.conv_1, f"{name}_1_bn": self.bn_1,
                  f"{name}_2_conv": self.conv_2, f"{name}_2_bn": self.bn_2, f"{name}_3_conv": self.conv_3}
        return layers | ({f"{name}_0_conv": self.conv_0} if self.conv_0 is not None else {})

    def keras(self, b, x, name: str):
        preact = b.relu(b.batch_norm(x, self.preact_bn, f"{name}_preact_bn"), f"{name}_preact_relu")
        if self.conv_0 is not None:
            shortcut = b.conv(preact, self.conv_0, f"{name}_0_conv")
        elif self.stride > 1:
            shortcut = b.layers.MaxPooling2D(1, strides=self.stride, name=f"{name}_shortcut_pool")(x)
        else:
            shortcut = x
        y = b.relu(b.batch_norm(b.conv(preact, self.conv_1, f"{name}_1_conv"), self.bn_1, f"{name}_1_bn"),
                   f"{name}_1_relu")
        y = b.layers.ZeroPadding2D(((1, 1), (1, 1)), name=f"{name}_2_pad")(y)
        y = b.relu(b.batch_norm(b.conv(y, self.conv_2, f"{name}_2_conv"), self.bn_2, f"{name}_2_bn"), f"{name}_2_relu")
        return b.add(shortcut, b.conv(y, self.conv_3, f"{name}_3_conv"), f"{name}_out")


class KerasResNetV2(KerasStages):
    stem_layers = ("conv1_conv", "post_bn")
    keras_preprocessing = "keras.applications.resnet_v2.preprocess_input (tf: [-1, 1])"

    def __init__(self, stage_sizes: Sequence[int], *, name: str = "keras_resnet50v2", num_classes: int = 1000,
                 widths: Sequence[int] = (64, 128, 256, 512), classifier_activation: str | None = "softmax",
                 dtype=None, rngs: nnx.Rngs):
        self._begin(block_addresses(stage_sizes)[1], name, classifier_activation, widths[0], dtype=dtype, rngs=rngs)
        in_ch, stride_of = widths[0], strides(stage_sizes)
        for stage, filters, count in zip(STAGES, widths, stage_sizes):
            stage_blocks = []
            for i in range(1, count + 1):
                stage_blocks.append(PreActBottleneck(in_ch, filters, stride_of[f"{stage}_block{i}"], i == 1, dtype=dtype,
                                                     rngs=rngs))
                in_ch = 4 * filters
            setattr(self, stage, nnx.List(stage_blocks))
        self.post_bn = kl.batch_norm(in_ch, epsilon=EPSILON, momentum=MOMENTUM, dtype=dtype, rngs=rngs)
        self.predictions = kl.dense(in_ch, num_classes, dtype=dtype, rngs=rngs)

    def stem(self, x: jax.Array) -> jax.Array:
        x = self.conv1_conv(kl.zero_pad(x, ((3, 3), (3, 3))))
        return kl.max_pool(kl.zero_pad(x, ((1, 1), (1, 1))), 3, 2)

    def neck(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.post_bn(x))

    def keras(self, b, x):
        """The Keras graph (`model_zoo.convert.keras_export`), with ``keras.applications``' layer names."""
        x = b.layers.ZeroPadding2D(((3, 3), (3, 3)), name="conv1_pad")(x)
        x = b.conv(x, self.conv1_conv, "conv1_conv")
        x = b.layers.ZeroPadding2D(((1, 1), (1, 1)), name="pool1_pad")(x)
        x = b.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
        x = b.blocks(self, x)
        x = b.relu(b.batch_norm(x, self.post_bn, "post_bn"), "post_relu")
        return x, lambda pooled: b.dense(pooled, self.predictions, "predictions", activation=self.classifier_activation)


keras_resnet50v2 = functools.partial(KerasResNetV2, (3, 4, 6, 3), name="keras_resnet50v2")
keras_resnet101v2 = functools.partial(KerasResNetV2, (3, 4, 23, 3), name="keras_resnet101v2")
keras_resnet152v2 = functools.partial(KerasResNetV2, (3, 8, 36, 3), name="keras_resnet152v2")
