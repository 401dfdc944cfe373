"""Layers shared by every family, configured as torchvision configures them.

Padding is always explicit and symmetric (``k // 2`` on each side), because
Flax's ``'SAME'`` pads asymmetrically at stride 2 and would shift every
stride-2 output by a pixel against the PyTorch original. BatchNorm uses
PyTorch's defaults: eps 1e-5 and momentum 0.1, which is Flax's *keep* rate 0.9.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model_zoo.errors import UserError

BN_MOMENTUM = 0.9  # Flax keep rate == PyTorch momentum 0.1
BN_EPSILON = 1e-5


class Adaptor(nnx.Variable):
    """A C x C channel-mixing matrix (a bias-free 1x1 conv, ``y = x @ M``).

    Its own variable type, so ``nnx.split(model, Adaptor, ...)`` trains only adaptors.
    """


class AdaptableConv(nnx.Conv):
    """``nnx.Conv`` that may carry a pre-adaptor (on its input) and an after-adaptor (on its raw output)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pre_adaptor = nnx.data(None)
        self.post_adaptor = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pre_adaptor is not None:
            x = x @ self.pre_adaptor[...].astype(x.dtype)
        y = super().__call__(x)
        if self.post_adaptor is not None:
            y = y @ self.post_adaptor[...].astype(y.dtype)
        return y


def check_no_adaptors(model: nnx.Module, what: str) -> None:
    """Refuse a model whose convs still carry adaptors, for uses that have no place for them."""
    for path, module in nnx.iter_graph(model):
        if isinstance(module, AdaptableConv) and (module.pre_adaptor is not None or module.post_adaptor is not None):
            name = ".".join(str(p) for p in path if p != "layers")
            raise UserError(
                f"{what}: conv '{name}' still carries an adaptor; fold the adaptors into their convs first "
                "(practise_jax.adaptors.fold(model)), which keeps the outputs the same."
            )


def conv(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, groups: int = 1, dtype=None, rngs: nnx.Rngs) -> AdaptableConv:
    """Bias-free conv with torchvision's symmetric padding and Kaiming-normal init."""
    pad = kernel // 2
    return AdaptableConv(
        in_ch, out_ch, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
        feature_group_count=groups, use_bias=False, dtype=dtype,
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"), rngs=rngs,
    )


def batch_norm(channels: int, *, dtype=None, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, use_fast_variance=False, dtype=dtype, rngs=rngs)


def linear(in_features: int, out_features: int, *, dtype=None, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_features, out_features, dtype=dtype, rngs=rngs)


def global_avg_pool(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(1, 2))


def gated_residual(shortcut: jax.Array, branch: jax.Array, keep: jax.Array | None) -> jax.Array:
    """``shortcut + keep * branch``: a dynamic block mask (keep = 0 drops the block)."""
    if keep is None:
        return shortcut + branch
    return shortcut + keep.astype(branch.dtype) * branch


def mask_entry(mask: jax.Array | None, droppable: tuple[str, ...], address: str) -> jax.Array | None:
    """The keep flag of block ``address`` in a dynamic block mask, or None.

    A block mask is a float array of shape ``(len(model.droppable),)`` in the
    order of ``model.droppable``: 1 keeps a block, 0 drops it. ``None`` keeps all.
    """
    if mask is None or address not in droppable:
        return None
    return mask[droppable.index(address)]
