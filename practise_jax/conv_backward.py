"""A convolution whose backward pass on a CPU first stores its operands: a drop-in for ``lax.conv_general_dilated``.

XLA:CPU computes a conv's weight gradient as a convolution over transposed
copies of the layer's input and of the output gradient. Its fusion pass
folds the producers of those two arrays (BatchNorm, the residual addition,
ReLU and their backward, often through several blocks) into the transposing
copy, which then recomputes them while reading a dozen arrays in a
cache-hostile order. Profiled, these copies took 37% of a cifar_resnet56
finetune step (experiments/README.md, "Scaling"). Here the backward pass
passes the two operands through a conditional XLA cannot look into, so they
are stored as computed and the transposes become plain copies: the step
gets 1.24x faster on a quiet machine. An optimization barrier does not do
it (XLA:CPU removes barriers before fusing).

Forward values and the arithmetic of every gradient are unchanged; only
fusion boundaries move, which can change a float rounding in the last bit.
Other platforms (``lax.platform_dependent``) get the plain backward pass.
"""

from __future__ import annotations

import functools

import jax
from jax import lax


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None, **kwargs):
    """``lax.conv_general_dilated`` (same arguments and values) with the CPU backward pass described above."""
    conv = functools.partial(lax.conv_general_dilated, window_strides=window_strides, padding=padding,
                             lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                             feature_group_count=feature_group_count, precision=precision, **kwargs)
    return _conv(conv, lhs, rhs)


def stored(arrays, witness):
    """``arrays`` unchanged, from a conditional XLA cannot fuse through (its outputs are buffers of their own).

    The predicate (the first element of ``witness`` equals itself, false only
    for a NaN) is unknown when compiling, so the conditional stays; both
    branches return the values. The witness is the conv's weight: replicated
    when the batch is split over devices, so the predicate needs no
    cross-device all-reduce (the output gradient's first element lives on one
    device, and asking for it cost an all-reduce per conv).
    """
    first = witness.reshape(-1)[0]
    return lax.cond(first == first, lambda xs: xs, lambda xs: tuple(x * 1 for x in xs), arrays)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv(conv, lhs, rhs):
    return conv(lhs, rhs)


def _forward(conv, lhs, rhs):
    return conv(lhs, rhs), (lhs, rhs)


def _backward(conv, residuals, g):
    lhs, rhs = residuals
    lhs, g = lax.platform_dependent((lhs, g), rhs, cpu=stored, default=lambda xs, _: xs)
    return jax.vjp(conv, lhs, rhs)[1](g)


_conv.defvjp(_forward, _backward)
