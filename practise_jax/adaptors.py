"""Adaptors around a dropped block: where they go, identity init, and folding.

An adaptor is a bias-free, identity-initialised 1x1 conv (a C x C matrix M,
``y = x @ M`` over channels). When block B is dropped, every conv that
*writes* B's residual stream before the gap gets an after-adaptor on its raw
output (before its BN), and every conv that *reads* it after the gap gets a
pre-adaptor (PRACTISE_SPEC.md section 4.1). Identity shortcuts are never
adapted. Because an adaptor touches a conv with nothing in between, it folds
into that conv exactly (section 5).

Placement follows from the model protocol alone (`practise_jax.protocol`):
walking back from the gap, the writers of every block up to and including
the one that started the stream (the first block without an identity
shortcut, or the first block of the network); walking on, the readers of
every block up to and including the first one that ends the stream (no
identity shortcut). For torchvision ResNets this is the reference's rule
(the stage's blocks before the gap with block 0's downsample conv; the
stage's blocks after it and the next stage's block 0 with its downsample
conv); for MobileNetV2 it is the reference's walk by output width.

An adapted conv is wrapped in `AdaptedConv` at its place in the graph, so any
``nnx.Conv`` of any model can carry adaptors; `fold` puts the plain conv back
with the adaptors multiplied into its kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from practise_jax import protocol, surgery
from practise_jax.errors import UserError

PRE, POST = "pre", "post"


class Adaptor(nnx.Variable):
    """A C x C channel-mixing matrix; its own variable type, so ``nnx.split(model, Adaptor, ...)`` trains only adaptors."""


class AdaptedConv(nnx.Module):
    """A conv with a pre-adaptor on its input and/or an after-adaptor on its raw output."""

    def __init__(self, conv: nnx.Conv):
        self.conv = conv
        self.pre = nnx.data(None)
        self.post = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pre is not None:
            x = x @ self.pre[...].astype(x.dtype)
        y = self.conv(x)
        if self.post is not None:
            y = y @ self.post[...].astype(y.dtype)
        return y


@dataclasses.dataclass(frozen=True)
class Site:
    """An adaptor position: the conv at ``path`` (dot-separated, in the model) and which side (pre / post)."""

    path: str
    kind: str

    @property
    def name(self) -> str:
        """e.g. ``layer1.0.conv2:post``."""
        return f"{self.path}:{self.kind}"


def placement(model: nnx.Module, drop: str | Sequence[str]) -> list[Site]:
    """Adaptor sites for dropping ``drop`` (one block, or several: the union of their sites) from ``model``.

    Sites inside another dropped block are left out. Paths are the model's own.
    """
    drop = protocol.check_drop_set(model, [drop] if isinstance(drop, str) else drop)
    listed = protocol.blocks(model)
    order = [b.address for b in listed]
    paths = surgery.block_paths(model)
    sites = []
    for gap in drop:
        position = order.index(gap)
        before = [b for b in listed[:position] if b.address not in drop]
        after = [b for b in listed[position + 1:] if b.address not in drop]
        writers = []
        for block in reversed(before):  # back to the block that started the stream
            writers = [Site(f"{paths[block.address]}.{p}", POST) for p in block.stream.writers] + writers
            if not block.stream.identity:
                break
        readers = []
        for block in after:  # on to the block that ends it
            readers += [Site(f"{paths[block.address]}.{p}", PRE) for p in block.stream.readers]
            if not block.stream.identity:
                break
        sites += writers + readers
    return list(dict.fromkeys(sites))


def site_blocks(model: nnx.Module, sites: Sequence[Site]) -> list[str]:
    """The addresses of the blocks holding ``sites``, in forward order."""
    paths = surgery.block_paths(model)
    holding = {address for address, path in paths.items() for s in sites if s.path.startswith(path + ".")}
    return [b.address for b in protocol.blocks(model) if b.address in holding]


def first_adapted_block(model: nnx.Module, sites: Sequence[Site]) -> str:
    """The earliest block holding an adaptor: the student equals the teacher before it."""
    held = site_blocks(model, sites)
    if not held:
        raise UserError("no adaptor site lies in a residual block; the blocks' Stream lists name no convs.")
    return held[0]


def attach(model: nnx.Module, sites: Sequence[Site]) -> nnx.Module:
    """Put identity adaptors at ``sites`` (in place: each conv is wrapped in an `AdaptedConv`); returns ``model``."""
    for site in sites:
        module = surgery.get(model, site.path)
        if not isinstance(module, AdaptedConv):
            if not isinstance(module, nnx.Conv):
                raise UserError(f"adaptor site '{site.path}' is a {type(module).__name__}, not an nnx.Conv; "
                                "a block's Stream must name convs.")
            module = AdaptedConv(module)
            surgery.replace(model, site.path, module)
        conv = module.conv
        channels = conv.in_features if site.kind == PRE else conv.out_features
        setattr(module, site.kind, Adaptor(jnp.eye(channels, dtype=jnp.float32)))
    return model


def adapted_convs(model: nnx.Module) -> list[tuple[str, AdaptedConv]]:
    """Every `AdaptedConv` in ``model`` with its path."""
    found = []
    for path, node in nnx.iter_graph(model):
        if isinstance(node, AdaptedConv):
            found.append((".".join(str(p) for p in path if p != "layers"), node))
    return found


def fold(model: nnx.Module) -> nnx.Module:
    """Fold every adaptor into its conv (in float64) and put the plain conv back, in place; outputs stay the same."""
    for path, wrapper in adapted_convs(model):
        conv = wrapper.conv
        kernel = np.asarray(conv.kernel[...], np.float64)  # HWIO
        if wrapper.pre is not None:
            if conv.feature_group_count != 1:
                raise UserError(f"a pre-adaptor cannot be folded into the grouped (depthwise) conv '{path}'.")
            kernel = np.einsum("ij,hwjo->hwio", np.asarray(wrapper.pre[...], np.float64), kernel)
        if wrapper.post is not None:
            post = np.asarray(wrapper.post[...], np.float64)
            kernel = np.einsum("hwij,jo->hwio", kernel, post)
            if conv.use_bias:
                conv.bias[...] = jnp.asarray(np.asarray(conv.bias[...], np.float64) @ post, conv.bias[...].dtype)
        conv.kernel[...] = jnp.asarray(kernel, conv.kernel[...].dtype)
        surgery.replace(model, path, conv)
    return model


def check_no_adaptors(model: nnx.Module, what: str) -> None:
    """Refuse a model whose convs still carry adaptors, for uses that have no place for them."""
    held = adapted_convs(model)
    if held:
        raise UserError(
            f"{what}: conv '{held[0][0]}' still carries an adaptor; fold the adaptors into their convs first "
            "(practise_jax.adaptors.fold(model)), which keeps the outputs the same.")
