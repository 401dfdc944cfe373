"""Layers configured as ``keras.applications`` configures them, for the Keras families.

Keras convs have biases unless told otherwise and pad ``'same'`` the way
TensorFlow does (more on the bottom/right at stride 2), which is Flax's
``'SAME'``; ``'valid'`` convs after a ``ZeroPadding2D`` get that padding
explicitly. BatchNorm keeps Keras' epsilon and momentum (Keras' momentum is
Flax's, the keep rate of the moving averages).

Each Keras family maps Keras layer names onto its NNX modules
(``keras_layers()``), which both the weight import
(`model_zoo.convert.keras_import`) and the export
(`model_zoo.convert.keras_export`) use, so a compressed model keeps the
Keras names of its kept blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from practise_jax import conv_backward, protocol

ZERO_INIT = nnx.initializers.zeros_init()


def conv(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, padding="VALID", bias: bool = True, groups: int = 1,
         dtype=None, rngs: nnx.Rngs) -> nnx.Conv:
    """A Keras ``Conv2D`` / ``DepthwiseConv2D`` (``groups == in_ch``); ``padding``: "SAME", "VALID" or explicit pairs."""
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=stride, padding=padding, feature_group_count=groups,
                    use_bias=bias, dtype=dtype, kernel_init=nnx.initializers.glorot_uniform(), bias_init=ZERO_INIT,
                    conv_general_dilated=conv_backward.conv_general_dilated, rngs=rngs)


def batch_norm(channels: int, *, epsilon: float, momentum: float, dtype=None, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, momentum=momentum, epsilon=epsilon, use_fast_variance=False, dtype=dtype, rngs=rngs)


def dense(in_features: int, out_features: int, *, dtype=None, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_features, out_features, dtype=dtype, kernel_init=nnx.initializers.glorot_uniform(),
                      bias_init=ZERO_INIT, rngs=rngs)


def zero_pad(x: jax.Array, pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Keras ``ZeroPadding2D`` on NHWC."""
    return jnp.pad(x, ((0, 0), *pads, (0, 0)))


def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    """Keras ``MaxPooling2D`` with ``'valid'`` padding."""
    return nnx.max_pool(x, (window, window), strides=(stride, stride), padding="VALID")


def correct_pad(size: int | None, kernel: int = 3) -> tuple[tuple[int, int], tuple[int, int]]:
    """``keras.applications.imagenet_utils.correct_pad`` for a square ``size``: one less before on even sizes."""
    adjust = 1 if size is None else 1 - size % 2  # an unknown size counts as even, as in Keras
    return ((kernel // 2 - adjust, kernel // 2),) * 2


def layer_map(model: nnx.Module, own: Sequence[str]) -> dict[str, nnx.Module]:
    """Keras layer name -> module: the model's ``own`` attributes (named as in Keras) and each kept block's layers."""
    layers = {name: getattr(model, name) for name in own}
    for block in protocol.blocks(model):
        layers |= block.module.keras_layers(block.address)
    return layers
