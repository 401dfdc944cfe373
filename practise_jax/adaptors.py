"""Adaptors around a dropped block: where they go, identity init, and folding.

An adaptor is a bias-free, identity-initialised 1x1 conv (a C x C matrix M,
``y = x @ M`` over channels). When block B is dropped, every conv that
*writes* B's residual stream before the gap gets an after-adaptor on its raw
output (before its BN), and every conv that *reads* it after the gap gets a
pre-adaptor (PRACTISE_SPEC.md section 4.1). Identity shortcuts are never
adapted. Because an adaptor touches a conv with nothing in between, it folds
into that conv exactly (section 5).

Sites are given as NNX paths to the conv module inside the *student* (the
model with B dropped, blocks renumbered).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from model_zoo import get_info
from model_zoo.base import ZooModel
from model_zoo.blocks import split_address
from model_zoo.layers import Adaptor, AdaptableConv
from model_zoo.mobilenetv2 import InvertedResidual

PRE, POST = "pre", "post"


@dataclasses.dataclass(frozen=True)
class Site:
    """An adaptor position: the conv at ``path`` in the student, and which side (pre / post)."""

    path: tuple
    kind: str

    @property
    def name(self) -> str:
        """torchvision-style name, e.g. ``layer1.0.conv2:post``."""
        return ".".join(str(p) for p in self.path if p != "layers") + f":{self.kind}"


def _module(model: nnx.Module, path: tuple) -> nnx.Module:
    for step in path:
        model = model[step] if isinstance(step, int) else getattr(model, step)
    return model


def placement(student: ZooModel, dropped: str) -> list[Site]:
    """Adaptor sites for a student that lacks the teacher's block ``dropped`` (original address)."""
    family = get_info(student.model_name).family
    if family == "mobilenet_v2":
        return _mobilenet_sites(student, dropped)
    return _resnet_sites(student, dropped)


def _resnet_sites(student: ZooModel, dropped: str) -> list[Site]:
    stage, gap = split_address(dropped)  # blocks 0..gap-1 lie before the gap; student gap.. after it
    stage_blocks = getattr(student, stage)
    sites = []
    if getattr(stage_blocks[0], "downsample", None) is not None:
        sites.append(Site((stage, 0, "downsample", "layers", 0), POST))
    last_conv = "conv3" if hasattr(stage_blocks[0], "conv3") else "conv2"
    sites += [Site((stage, i, last_conv), POST) for i in range(gap)]
    sites += [Site((stage, i, "conv1"), PRE) for i in range(gap, len(stage_blocks))]
    groups = [a.split(".")[0] for a in student.blocks]
    following = groups.index(stage) + groups.count(stage)
    if following < len(groups):
        next_stage = groups[following]
        sites.append(Site((next_stage, 0, "conv1"), PRE))
        if getattr(getattr(student, next_stage)[0], "downsample", None) is not None:
            sites.append(Site((next_stage, 0, "downsample", "layers", 0), PRE))
    return sites


def _mobilenet_sites(student: ZooModel, dropped: str) -> list[Site]:
    _, gap = split_address(dropped)
    features = student.features
    width = _out_channels(features[gap - 1])
    sites = []
    index = gap - 1
    while isinstance(features[index], InvertedResidual) and _out_channels(features[index]) == width:
        projection = len(features[index].conv.layers) - 2
        sites.insert(0, Site(("features", index, "conv", "layers", projection), POST))
        index -= 1
    index = gap
    while isinstance(features[index], InvertedResidual):
        sites.append(Site(("features", index, "conv", "layers", 0, "layers", 0), PRE))
        if _out_channels(features[index]) != width:
            break
        index += 1
    return sites


def _out_channels(block: nnx.Module) -> int:
    return block.conv.layers[-1].num_features


def first_adapted_block(student: ZooModel, sites: list[Site]) -> str:
    """The earliest block holding an adaptor: the student is frozen (teacher-equal) before it."""
    order = [address for address, _ in student.residual_blocks()]
    addresses = {f"{s.path[0]}.{s.path[1]}" for s in sites}
    return next(address for address in order if address in addresses)


def attach(student: ZooModel, sites: list[Site]) -> ZooModel:
    """Put identity adaptors at ``sites`` (in place) and return the student."""
    for site in sites:
        conv = _module(student, site.path)
        channels = conv.in_features if site.kind == PRE else conv.out_features
        setattr(conv, f"{site.kind}_adaptor", Adaptor(jnp.eye(channels, dtype=jnp.float32)))
    return student


def fold(student: ZooModel) -> ZooModel:
    """Fold every adaptor into its conv (in float64) and remove it; the outputs stay the same."""
    for _, conv in nnx.iter_graph(student):
        if not isinstance(conv, AdaptableConv):
            continue
        kernel = np.asarray(conv.kernel[...], np.float64)  # HWIO
        if conv.pre_adaptor is not None:
            kernel = _fold_pre(kernel, np.asarray(conv.pre_adaptor[...], np.float64), conv.feature_group_count)
            conv.pre_adaptor = None
        if conv.post_adaptor is not None:
            kernel = np.einsum("hwij,jo->hwio", kernel, np.asarray(conv.post_adaptor[...], np.float64))
            conv.post_adaptor = None
        conv.kernel[...] = jnp.asarray(kernel, conv.kernel[...].dtype)
    return student


def _fold_pre(kernel: np.ndarray, matrix: np.ndarray, groups: int) -> np.ndarray:
    """W'[h,w,i,o] = sum_j M[i,j] W[h,w,j,o]; only dense convs can absorb a channel mix on their input."""
    if groups != 1:
        raise ValueError("a pre-adaptor cannot be folded into a grouped (depthwise) conv")
    return np.einsum("ij,hwjo->hwio", matrix, kernel)


def teacher_sites(teacher: ZooModel, dropped: str) -> list[Site]:
    """The sites of `placement` for dropping ``dropped``, as paths in the teacher itself.

    Used when the block is dropped by a dynamic mask instead of being removed:
    the student's renumbered blocks are mapped back to the teacher's addresses.
    """
    from model_zoo.prune import prune  # a light import; prune needs the registry

    student = prune(teacher, [dropped])
    to_original = dict(zip(student.blocks, student.origin))
    to_teacher = {original: current for current, original in zip(teacher.blocks, teacher.origin)}
    sites = []
    for site in placement(student, dropped):
        group, index = split_address(to_teacher[to_original[f"{site.path[0]}.{site.path[1]}"]])
        sites.append(Site((group, index) + tuple(site.path[2:]), site.kind))
    return sites
