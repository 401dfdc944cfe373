"""``keras.applications`` MobileNetV2: Keras' padding, BatchNorm (epsilon 1e-3, momentum 0.999) and names.

As Keras builds it (``keras/src/applications/mobilenet_v2.py``): the stem
``Conv1`` pads ``'same'`` (TensorFlow's way: one more at the bottom/right at
stride 2), a strided block pads with ``correct_pad`` before a ``'valid'``
depthwise conv (on even sizes: nothing before, one after), widths round with
``_make_divisible(int(filters * alpha), 8)``, no dropout before the
classifier. Blocks are ``expanded_conv`` (Keras' name for block 0) and
``block_1`` ... ``block_16``; the droppable ones have an identity shortcut
(``block_2``, ``block_4``, ``block_5``, ...). Preprocessing: Keras' ``tf``
mode, [-1, 1] (mean 0.5, std 0.5 on [0, 1], RGB).
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from model_zoo import keras_layers as kl
from model_zoo.base import ZooModel
from model_zoo.mobilenetv2 import make_divisible
from practise_jax.protocol import Stream

EPSILON, MOMENTUM = 1e-3, 0.999
# (filters, stride, expansion) of blocks 0..16
BLOCKS = ((16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6), (64, 2, 6), (64, 1, 6), (64, 1, 6),
          (64, 1, 6), (96, 1, 6), (96, 1, 6), (96, 1, 6), (160, 2, 6), (160, 1, 6), (160, 1, 6), (320, 1, 6))


def address(block_id: int) -> str:
    return f"block_{block_id}" if block_id else "expanded_conv"


def block_addresses() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every block, and those with an identity shortcut (same width, stride 1)."""
    widths = [make_divisible(f) for f, _, _ in BLOCKS]
    droppable = tuple(address(i) for i in range(1, len(BLOCKS)) if BLOCKS[i][1] == 1 and widths[i] == widths[i - 1])
    return tuple(address(i) for i in range(len(BLOCKS))), droppable


def bn(channels: int, *, dtype, rngs) -> nnx.BatchNorm:
    return kl.batch_norm(channels, epsilon=EPSILON, momentum=MOMENTUM, dtype=dtype, rngs=rngs)


class InvertedResidual(nnx.Module):
    """``_inverted_res_block``: 1x1 expand (not in block 0) -> 3x3 depthwise -> 1x1 project, ReLU6 between."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int, *, dtype, rngs: nnx.Rngs):
        hidden = expansion * in_ch
        self.stride = stride
        self.expand = kl.conv(in_ch, hidden, 1, bias=False, dtype=dtype, rngs=rngs) if expansion != 1 else None
        self.expand_BN = bn(hidden, dtype=dtype, rngs=rngs) if expansion != 1 else None
        self.depthwise = kl.conv(hidden, hidden, 3, stride=stride, padding="SAME" if stride == 1 else "VALID", bias=False,
                                 groups=hidden, dtype=dtype, rngs=rngs)
        self.depthwise_BN = bn(hidden, dtype=dtype, rngs=rngs)
        self.project = kl.conv(hidden, out_ch, 1, bias=False, dtype=dtype, rngs=rngs)
        self.project_BN = bn(out_ch, dtype=dtype, rngs=rngs)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.stream = Stream(writers=("project",), readers=("expand" if self.expand is not None else "depthwise",),
                             identity=self.use_residual)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x if self.expand is None else jax.nn.relu6(self.expand_BN(self.expand(x)))
        if self.stride == 2:
            y = kl.zero_pad(y, kl.correct_pad(y.shape[1]))
        y = jax.nn.relu6(self.depthwise_BN(self.depthwise(y)))
        y = self.project_BN(self.project(y))
        return x + y if self.use_residual else y

    def keras_layers(self, name: str) -> dict[str, nnx.Module]:
        parts = ("depthwise", "project") if self.expand is None else ("expand", "depthwise", "project")
        return {f"{name}_{part}{suffix}": getattr(self, part + suffix) for part in parts for suffix in ("", "_BN")}

    def keras(self, b, x, name: str):
        y = x
        if self.expand is not None:
            y = b.batch_norm(b.conv(y, self.expand, f"{name}_expand"), self.expand_BN, f"{name}_expand_BN")
            y = b.relu(y, f"{name}_expand_relu", max_value=6.0)
        if self.stride == 2:
            y = b.layers.ZeroPadding2D(kl.correct_pad(y.shape[1]), name=f"{name}_pad")(y)
        y = b.relu(b.batch_norm(b.conv(y, self.depthwise, f"{name}_depthwise"), self.depthwise_BN, f"{name}_depthwise_BN"),
                   f"{name}_depthwise_relu", max_value=6.0)
        y = b.batch_norm(b.conv(y, self.project, f"{name}_project"), self.project_BN, f"{name}_project_BN")
        return b.add(x, y, f"{name}_add") if self.use_residual else y


class KerasMobileNetV2(ZooModel):
    head = "predictions"
    group_features = False
    keras_pool = "global_average_pooling2d"
    keras_preprocessing = "keras.applications.mobilenet_v2.preprocess_input (tf: [-1, 1])"

    def __init__(self, *, num_classes: int = 1000, alpha: float = 1.0, classifier_activation: str | None = "softmax",
                 dtype=None, rngs: nnx.Rngs):
        _, self.droppable = block_addresses()
        self.model_name = "keras_mobilenet_v2"
        self.classifier_activation = classifier_activation
        in_ch = make_divisible(32 * alpha)
        self.Conv1 = kl.conv(3, in_ch, 3, stride=2, padding="SAME", bias=False, dtype=dtype, rngs=rngs)
        self.bn_Conv1 = bn(in_ch, dtype=dtype, rngs=rngs)
        blocks = []
        for filters, stride, expansion in BLOCKS:
            out_ch = make_divisible(int(filters * alpha))
            blocks.append(InvertedResidual(in_ch, out_ch, stride, expansion, dtype=dtype, rngs=rngs))
            in_ch = out_ch
        self.blocks = nnx.List(blocks)
        last = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
        self.Conv_1 = kl.conv(in_ch, last, 1, bias=False, dtype=dtype, rngs=rngs)
        self.Conv_1_bn = bn(last, dtype=dtype, rngs=rngs)
        self.predictions = kl.dense(last, num_classes, dtype=dtype, rngs=rngs)

    def stem(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu6(self.bn_Conv1(self.Conv1(x)))

    def residual_blocks(self) -> list[tuple[str, nnx.Module]]:
        return [(address(i), block) for i, block in enumerate(self.blocks)]

    def neck(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu6(self.Conv_1_bn(self.Conv_1(x)))

    def classify(self, pooled: jax.Array) -> jax.Array:
        return self.predictions(pooled)

    def keras_layers(self) -> dict[str, nnx.Module]:
        """Keras layer name -> module, for every layer with weights (kept blocks only)."""
        return kl.layer_map(self, ("Conv1", "bn_Conv1", "Conv_1", "Conv_1_bn", "predictions"))

    def keras(self, b, x):
        """The Keras graph (`model_zoo.convert.keras_export`), with ``keras.applications``' layer names."""
        x = b.relu(b.batch_norm(b.conv(x, self.Conv1, "Conv1"), self.bn_Conv1, "bn_Conv1"), "Conv1_relu", max_value=6.0)
        x = b.blocks(self, x)
        x = b.relu(b.batch_norm(b.conv(x, self.Conv_1, "Conv_1"), self.Conv_1_bn, "Conv_1_bn"), "out_relu", max_value=6.0)
        return x, lambda pooled: b.dense(pooled, self.predictions, "predictions", activation=self.classifier_activation)


keras_mobilenet_v2 = functools.partial(KerasMobileNetV2)
