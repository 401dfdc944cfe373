"""torchvision ResNet-18/34/50/101 (BasicBlock and Bottleneck V1.5).

Attribute names mirror torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``), so a torchvision state dict maps onto the
NNX state by name. The stride of a Bottleneck sits on its 3x3 conv (V1.5),
and the stem pads 3 and the max-pool 1 on each side, as torchvision does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
from flax import nnx

from model_zoo import layers
from model_zoo.base import ZooModel
from practise_jax.protocol import Stream

STAGES = ("layer1", "layer2", "layer3", "layer4")


def block_addresses(stage_sizes: Sequence[int]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """All blocks, and the droppable ones: every block but the first of each stage."""
    all_blocks = tuple(f"{stage}.{i}" for stage, n in zip(STAGES, stage_sizes) for i in range(n))
    droppable = tuple(f"{stage}.{i}" for stage, n in zip(STAGES, stage_sizes) for i in range(1, n))
    return all_blocks, droppable


def downsample(in_ch: int, out_ch: int, stride: int, *, dtype, rngs: nnx.Rngs) -> nnx.Sequential | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nnx.Sequential(
        layers.conv(in_ch, out_ch, 1, stride=stride, dtype=dtype, rngs=rngs),
        layers.batch_norm(out_ch, dtype=dtype, rngs=rngs),
    )


class _Residual(nnx.Module):
    """A torchvision residual block: ``relu(branch(x) + shortcut(x))``, its convs named conv1..convN."""

    convs: tuple[str, ...]

    def _set_stream(self) -> None:
        projection = () if self.downsample is None else ("downsample.0",)
        self.stream = Stream(writers=projection + (self.convs[-1],), readers=(self.convs[0],) + projection,
                             identity=self.downsample is None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x
        for i, name in enumerate(self.convs, start=1):
            y = getattr(self, f"bn{i}")(getattr(self, name)(y))
            if i < len(self.convs):
                y = nnx.relu(y)
        shortcut = x if self.downsample is None else self.downsample(x)
        return nnx.relu(shortcut + y)

    def keras(self, b, x, name: str):
        y = x
        for i, conv in enumerate(self.convs, start=1):
            y = b.batch_norm(b.conv(y, getattr(self, conv), f"{name}.{conv}"), getattr(self, f"bn{i}"), f"{name}.bn{i}")
            if i < len(self.convs):
                y = b.relu(y, f"{name}.relu{i}")
        shortcut = x if self.downsample is None else b.sequential(x, self.downsample, f"{name}.downsample")
        return b.relu(b.add(shortcut, y, f"{name}.add"), f"{name}.relu")


class BasicBlock(_Residual):
    expansion = 1
    convs = ("conv1", "conv2")
    inner_channels = ("conv1", "bn1", "conv2")

    def __init__(self, in_ch: int, planes: int, stride: int, *, dtype, rngs: nnx.Rngs):
        self.conv1 = layers.conv(in_ch, planes, 3, stride=stride, dtype=dtype, rngs=rngs)
        self.bn1 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
        self.conv2 = layers.conv(planes, planes, 3, dtype=dtype, rngs=rngs)
        self.bn2 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
        self.downsample = downsample(in_ch, planes, stride, dtype=dtype, rngs=rngs)
        self._set_stream()


class Bottleneck(_Residual):
    expansion = 4
    convs = ("conv1", "conv2", "conv3")
    inner_channels = ("conv1", "bn1", "conv2")

    def __init__(self, in_ch: int, planes: int, stride: int, *, dtype, rngs: nnx.Rngs):
        out_ch = planes * self.expansion
        self.conv1 = layers.conv(in_ch, planes, 1, dtype=dtype, rngs=rngs)
        self.bn1 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
        self.conv2 = layers.conv(planes, planes, 3, stride=stride, dtype=dtype, rngs=rngs)
        self.bn2 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
        self.conv3 = layers.conv(planes, out_ch, 1, dtype=dtype, rngs=rngs)
        self.bn3 = layers.batch_norm(out_ch, dtype=dtype, rngs=rngs)
        self.downsample = downsample(in_ch, out_ch, stride, dtype=dtype, rngs=rngs)
        self._set_stream()


class ResNet(ZooModel):
    head = "fc"

    def __init__(self, stage_sizes: Sequence[int], block_cls: type[BasicBlock] | type[Bottleneck], *, name: str = "resnet",
                 num_classes: int = 1000, widths: Sequence[int] = (64, 128, 256, 512), dtype=None, rngs: nnx.Rngs):
        _, self.droppable = block_addresses(stage_sizes)
        self.model_name = name
        self.conv1 = layers.conv(3, widths[0], 7, stride=2, dtype=dtype, rngs=rngs)
        self.bn1 = layers.batch_norm(widths[0], dtype=dtype, rngs=rngs)
        in_ch = widths[0]
        for s, (stage, planes, count) in enumerate(zip(STAGES, widths, stage_sizes)):
            stage_blocks = []
            for i in range(count):
                stage_blocks.append(block_cls(in_ch, planes, 2 if (s > 0 and i == 0) else 1, dtype=dtype, rngs=rngs))
                in_ch = planes * block_cls.expansion
            setattr(self, stage, nnx.List(stage_blocks))
        self.fc = layers.linear(in_ch, num_classes, dtype=dtype, rngs=rngs)

    def stem(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    def residual_blocks(self) -> list[tuple[str, nnx.Module]]:
        return [(f"{stage}.{i}", block) for stage in STAGES for i, block in enumerate(getattr(self, stage))]

    def classify(self, pooled: jax.Array) -> jax.Array:
        return self.fc(pooled)

    def keras(self, b, x):
        """The Keras graph (`model_zoo.convert.keras_export`): pre-GAP tensor and the classifier."""
        x = b.relu(b.batch_norm(b.conv(x, self.conv1, "conv1"), self.bn1, "bn1"), "relu")
        x = b.layers.ZeroPadding2D(1, name="maxpool.pad")(x)  # zeros == -inf here: the input is a ReLU output
        x = b.layers.MaxPooling2D(pool_size=3, strides=2, padding="valid", name="maxpool")(x)
        x = b.blocks(self, x)
        return x, lambda pooled: b.dense(pooled, self.fc, "fc")


resnet18 = functools.partial(ResNet, (2, 2, 2, 2), BasicBlock, name="resnet18")
resnet34 = functools.partial(ResNet, (3, 4, 6, 3), BasicBlock, name="resnet34")
resnet50 = functools.partial(ResNet, (3, 4, 6, 3), Bottleneck, name="resnet50")
resnet101 = functools.partial(ResNet, (3, 4, 23, 3), Bottleneck, name="resnet101")
