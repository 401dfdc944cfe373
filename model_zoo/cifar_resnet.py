"""CIFAR ResNet-20/32/44/56/110 (He et al. 2016) with option-A shortcuts.

Layout and names follow the widely used PyTorch version (akamaster): ``conv1``,
``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, ``linear``. A block that
changes width subsamples its input (stride 2) and zero-pads the channel axis
instead of using a downsample conv, so it has no shortcut parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from model_zoo import layers
from model_zoo.base import ZooModel
from practise_jax.protocol import Stream

STAGES = ("layer1", "layer2", "layer3")


def block_addresses(depth: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """All blocks and the droppable ones (index >= 1 in every stage) of a CIFAR ResNet."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    all_blocks = tuple(f"{stage}.{i}" for stage in STAGES for i in range(n))
    droppable = tuple(f"{stage}.{i}" for stage in STAGES for i in range(1, n))
    return all_blocks, droppable


def option_a_shortcut(x: jax.Array, out_ch: int) -> jax.Array:
    """Subsample by 2 and zero-pad the channels evenly on both sides up to ``out_ch``.

    With the usual doubling of width this pads ``out_ch // 4`` on each side, as the original does.
    """
    x = x[:, ::2, ::2, :]
    extra = out_ch - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class BasicBlock(nnx.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2, plus the shortcut, then relu."""

    inner_channels = ("conv1", "bn1", "conv2")  # filters a filter-pruning baseline may remove

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, dtype, rngs: nnx.Rngs):
        self.conv1 = layers.conv(in_ch, out_ch, 3, stride=stride, dtype=dtype, rngs=rngs)
        self.bn1 = layers.batch_norm(out_ch, dtype=dtype, rngs=rngs)
        self.conv2 = layers.conv(out_ch, out_ch, 3, dtype=dtype, rngs=rngs)
        self.bn2 = layers.batch_norm(out_ch, dtype=dtype, rngs=rngs)
        self.reshapes = stride != 1 or in_ch != out_ch
        self.in_ch, self.out_ch = in_ch, out_ch
        self.stream = Stream(writers=("conv2",), readers=("conv1",), identity=not self.reshapes)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = option_a_shortcut(x, self.out_ch) if self.reshapes else x
        return nnx.relu(shortcut + y)

    def keras(self, b, x, name: str):
        y = b.relu(b.batch_norm(b.conv(x, self.conv1, f"{name}.conv1"), self.bn1, f"{name}.bn1"), f"{name}.relu1")
        y = b.batch_norm(b.conv(y, self.conv2, f"{name}.conv2"), self.bn2, f"{name}.bn2")
        shortcut = x
        if self.reshapes:  # option A: subsample by 2 (a 1x1 max-pool of stride 2), zero-pad the channels evenly
            shortcut = b.layers.MaxPooling2D(pool_size=1, strides=2, name=f"{name}.shortcut.subsample")(x)
            extra = self.out_ch - self.in_ch
            shortcut = b.channel_pad(shortcut, extra // 2, extra - extra // 2, f"{name}.shortcut")
        return b.relu(b.add(shortcut, y, f"{name}.add"), f"{name}.relu")


class CifarResNet(ZooModel):
    head = "linear"

    def __init__(self, depth: int = 56, *, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64), dtype=None,
                 rngs: nnx.Rngs):
        all_blocks, droppable = block_addresses(depth)
        self.model_name = f"cifar_resnet{depth}"
        self.droppable = droppable
        n = len(all_blocks) // len(STAGES)
        self.conv1 = layers.conv(3, widths[0], 3, dtype=dtype, rngs=rngs)
        self.bn1 = layers.batch_norm(widths[0], dtype=dtype, rngs=rngs)
        in_ch = widths[0]
        for s, (stage, width) in enumerate(zip(STAGES, widths)):
            stage_blocks = []
            for i in range(n):
                stage_blocks.append(BasicBlock(in_ch, width, 2 if (s > 0 and i == 0) else 1, dtype=dtype, rngs=rngs))
                in_ch = width
            setattr(self, stage, nnx.List(stage_blocks))
        self.linear = layers.linear(in_ch, num_classes, dtype=dtype, rngs=rngs)

    def stem(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.bn1(self.conv1(x)))

    def residual_blocks(self) -> list[tuple[str, nnx.Module]]:
        return [(f"{stage}.{i}", block) for stage in STAGES for i, block in enumerate(getattr(self, stage))]

    def classify(self, pooled: jax.Array) -> jax.Array:
        return self.linear(pooled)

    def keras(self, b, x):
        """The Keras graph (`model_zoo.convert.keras_export`): pre-GAP tensor and the classifier."""
        x = b.relu(b.batch_norm(b.conv(x, self.conv1, "conv1"), self.bn1, "bn1"), "relu")
        x = b.blocks(self, x)
        return x, lambda pooled: b.dense(pooled, self.linear, "linear")


cifar_resnet20 = functools.partial(CifarResNet, 20)
cifar_resnet32 = functools.partial(CifarResNet, 32)
cifar_resnet44 = functools.partial(CifarResNet, 44)
cifar_resnet56 = functools.partial(CifarResNet, 56)
cifar_resnet110 = functools.partial(CifarResNet, 110)
