"""Layers shared by every family, configured as torchvision configures them.

Padding is always explicit and symmetric (``k // 2`` on each side), because
Flax's ``'SAME'`` pads asymmetrically at stride 2 and would shift every
stride-2 output by a pixel against the PyTorch original. BatchNorm uses
PyTorch's defaults: eps 1e-5 and momentum 0.1, which is Flax's *keep* rate 0.9.
"""

from __future__ import annotations

from flax import nnx

from practise_jax import conv_backward

BN_MOMENTUM = 0.9  # Flax keep rate == PyTorch momentum 0.1
BN_EPSILON = 1e-5


def conv(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, groups: int = 1, dtype=None, rngs: nnx.Rngs) -> nnx.Conv:
    """Bias-free conv with torchvision's symmetric padding and Kaiming-normal init."""
    pad = kernel // 2
    return nnx.Conv(
        in_ch, out_ch, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
        feature_group_count=groups, use_bias=False, dtype=dtype,
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"), rngs=rngs,
        conv_general_dilated=conv_backward.conv_general_dilated,
    )


def batch_norm(channels: int, *, dtype=None, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, use_fast_variance=False, dtype=dtype, rngs=rngs)


def linear(in_features: int, out_features: int, *, dtype=None, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_features, out_features, dtype=dtype, rngs=rngs)
