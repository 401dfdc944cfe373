"""torchvision ResNet-18/34/50/101 (BasicBlock and Bottleneck V1.5).

Attribute names mirror torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``), so a torchvision state dict maps onto the
NNX state by name. The stride of a Bottleneck sits on its 3x3 conv (V1.5),
and the stem pads 3 and the max-pool 1 on each side, as torchvision does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import jax
from flax import nnx

from model_zoo import layers
from model_zoo.base import BlockLayout, ZooModel

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


class BasicBlock(nnx.Module):
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int, *, dtype, rngs: nnx.Rngs):
        self.conv1 = layers.conv(in_ch, planes, 3, stride=stride, dtype=dtype, rngs=rngs)
        self.bn1 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
        self.conv2 = layers.conv(planes, planes, 3, dtype=dtype, rngs=rngs)
        self.bn2 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
        self.downsample = downsample(in_ch, planes, stride, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, keep: jax.Array | None = None) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return nnx.relu(layers.gated_residual(shortcut, y, keep))


class Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int, *, dtype, rngs: nnx.Rngs):
        out_ch = planes * self.expansion
        self.conv1 = layers.conv(in_ch, planes, 1, dtype=dtype, rngs=rngs)
        self.bn1 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
        self.conv2 = layers.conv(planes, planes, 3, stride=stride, dtype=dtype, rngs=rngs)
        self.bn2 = layers.batch_norm(planes, dtype=dtype, rngs=rngs)
        self.conv3 = layers.conv(planes, out_ch, 1, dtype=dtype, rngs=rngs)
        self.bn3 = layers.batch_norm(out_ch, dtype=dtype, rngs=rngs)
        self.downsample = downsample(in_ch, out_ch, stride, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, keep: jax.Array | None = None) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return nnx.relu(layers.gated_residual(shortcut, y, keep))


class ResNet(ZooModel):
    head = "fc"  # the classifier's attribute
    def __init__(
        self,
        stage_sizes: Sequence[int],
        block_cls: type[BasicBlock] | type[Bottleneck],
        *,
        name: str = "resnet",
        num_classes: int = 1000,
        widths: Sequence[int] = (64, 128, 256, 512),
        dropped: Iterable[str] = (),
        dtype=None,
        rngs: nnx.Rngs,
    ):
        all_blocks, droppable = block_addresses(stage_sizes)
        layout = BlockLayout(name, all_blocks, droppable, dropped)
        self._set_layout(layout)
        self.conv1 = layers.conv(3, widths[0], 7, stride=2, dtype=dtype, rngs=rngs)
        self.bn1 = layers.batch_norm(widths[0], dtype=dtype, rngs=rngs)
        in_ch = widths[0]
        for s, (stage, planes) in enumerate(zip(STAGES, widths)):
            stage_blocks = []
            for i in range(layout.count(stage)):
                stride = 2 if (s > 0 and i == 0) else 1
                stage_blocks.append(block_cls(in_ch, planes, stride, dtype=dtype, rngs=rngs))
                in_ch = planes * block_cls.expansion
            setattr(self, stage, nnx.List(stage_blocks))
        self.fc = layers.linear(in_ch, num_classes, dtype=dtype, rngs=rngs)

    def stem(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    def residual_blocks(self) -> list[tuple[str, BasicBlock | Bottleneck]]:
        return [(f"{stage}.{i}", block) for stage in STAGES for i, block in enumerate(getattr(self, stage))]

    def classify(self, pooled: jax.Array) -> jax.Array:
        return self.fc(pooled)


resnet18 = functools.partial(ResNet, (2, 2, 2, 2), BasicBlock, name="resnet18")
resnet34 = functools.partial(ResNet, (3, 4, 6, 3), BasicBlock, name="resnet34")
resnet50 = functools.partial(ResNet, (3, 4, 6, 3), Bottleneck, name="resnet50")
resnet101 = functools.partial(ResNet, (3, 4, 23, 3), Bottleneck, name="resnet101")
