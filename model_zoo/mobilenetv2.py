"""torchvision MobileNetV2 (Sandler et al. 2018).

``features.0`` is the stem, ``features.1..17`` are inverted-residual blocks,
``features.18`` is the last 1x1 ConvBNReLU6, then ``classifier.1`` (after
dropout). Submodules are ``nnx.Sequential`` where torchvision uses
``nn.Sequential`` so that indices (``features.3.conv.1.0``) match torchvision.
Droppable blocks: the residual ones (stride 1, same width) except the first
block of each stage, as the reference does (PRACTISE_SPEC.md section 2).
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from model_zoo import layers
from model_zoo.base import ZooModel
from practise_jax.protocol import Stream

# expansion t, output channels c, repeats n, first stride s
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of 8, never 10% below."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def block_addresses() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``features.1..17``; droppable = repeats 2.. of each stage (10 blocks; the spec says 11 but lists 10)."""
    all_blocks = tuple(f"features.{i}" for i in range(1, 1 + sum(n for _, _, n, _ in INVERTED_RESIDUAL_SETTING)))
    droppable, index = [], 1
    for _, _, n, _ in INVERTED_RESIDUAL_SETTING:
        droppable += [f"features.{index + i}" for i in range(1, n)]
        index += n
    return all_blocks, tuple(droppable)


def conv_bn_relu6(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, groups: int = 1, dtype, rngs) -> nnx.Sequential:
    return nnx.Sequential(
        layers.conv(in_ch, out_ch, kernel, stride=stride, groups=groups, dtype=dtype, rngs=rngs),
        layers.batch_norm(out_ch, dtype=dtype, rngs=rngs),
        jax.nn.relu6,
    )


class InvertedResidual(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int, *, dtype, rngs: nnx.Rngs):
        hidden = int(round(in_ch * expand_ratio))
        self.use_residual = stride == 1 and in_ch == out_ch
        expand = [conv_bn_relu6(in_ch, hidden, 1, dtype=dtype, rngs=rngs)] if expand_ratio != 1 else []
        self.conv = nnx.Sequential(
            *expand,
            conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden, dtype=dtype, rngs=rngs),
            layers.conv(hidden, out_ch, 1, dtype=dtype, rngs=rngs),
            layers.batch_norm(out_ch, dtype=dtype, rngs=rngs),
        )
        # writes: the projection 1x1 conv; reads: the expansion 1x1 conv (the depthwise conv when t = 1)
        self.stream = Stream(writers=(f"conv.{len(expand) + 1}",), readers=("conv.0.0",), identity=self.use_residual)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv(x)
        return x + y if self.use_residual else y

    def keras(self, b, x, name: str):
        y = b.sequential(x, self.conv, f"{name}.conv")
        return b.add(x, y, f"{name}.add") if self.use_residual else y


class MobileNetV2(ZooModel):
    head = "classifier"
    group_features = False  # every block is in one group (features); stem and pre_gap are recorded

    def __init__(self, *, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2, dtype=None,
                 rngs: nnx.Rngs):
        _, self.droppable = block_addresses()
        self.model_name = "mobilenet_v2"
        in_ch = make_divisible(32 * width_mult)
        last_ch = make_divisible(1280 * max(1.0, width_mult))
        features = [conv_bn_relu6(3, in_ch, 3, stride=2, dtype=dtype, rngs=rngs)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out_ch = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t, dtype=dtype, rngs=rngs))
                in_ch = out_ch
        features.append(conv_bn_relu6(in_ch, last_ch, 1, dtype=dtype, rngs=rngs))
        self.features = nnx.List(features)
        self.classifier = nnx.Sequential(nnx.Dropout(dropout, rngs=rngs), layers.linear(last_ch, num_classes, dtype=dtype, rngs=rngs))

    def stem(self, x: jax.Array) -> jax.Array:
        return self.features[0](x)

    def residual_blocks(self) -> list[tuple[str, nnx.Module]]:
        return [(f"features.{i}", self.features[i]) for i in range(1, len(self.features) - 1)]

    def neck(self, x: jax.Array) -> jax.Array:
        return self.features[-1](x)

    def classify(self, pooled: jax.Array) -> jax.Array:
        return self.classifier(pooled)

    def keras(self, b, x):
        """The Keras graph (`model_zoo.convert.keras_export`): pre-GAP tensor and the classifier."""
        x = b.sequential(x, self.features[0], "features.0")
        x = b.blocks(self, x)
        x = b.sequential(x, self.features[-1], f"features.{len(self.features) - 1}")
        return x, lambda pooled: b.sequential(pooled, self.classifier, "classifier")


mobilenet_v2 = functools.partial(MobileNetV2)
