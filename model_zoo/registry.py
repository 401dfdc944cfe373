"""Model registry: name -> constructor and the metadata a run needs.

Each entry carries what timm's pretrained configs carry (input size,
normalisation, classes, known weight files with sha256) plus the ordered block
addresses and which of them PRACTISE may drop.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Callable, Iterable

from flax import nnx

from model_zoo import cifar_resnet, keras_mobilenet_v2, keras_resnet, keras_resnet_v2, mobilenetv2, resnet
from model_zoo.base import ZooModel
from practise_jax.errors import UserError
from practise_jax import surgery
from practise_jax.transforms import IMAGENET_MEAN, IMAGENET_STD, InputSpec


@dataclasses.dataclass(frozen=True)
class KnownWeights:
    """A published weight file this model reads.

    ``sha256`` is the full digest, or its prefix where only that is published
    (torchvision puts the first 8 hex digits in the file name).
    """

    filename: str
    sha256: str
    top1: float
    source: str


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    builder: Callable[..., ZooModel]
    input_size: int
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    blocks: tuple[str, ...]
    droppable: tuple[str, ...]
    weights: tuple[KnownWeights, ...] = ()


_REGISTRY: dict[str, ModelInfo] = {}


def register(info: ModelInfo) -> ModelInfo:
    _REGISTRY[info.name] = info
    return info


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob pattern, e.g. ``list_models("cifar_*")``."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def get_info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown model '{name}'.{hint} Known models: {', '.join(list_models())}.") from None


def create(name: str, *, dropped: Iterable[str] = (), rngs: nnx.Rngs | None = None, **overrides) -> ZooModel:
    """Build a registered model with random weights, optionally with blocks dropped (`practise_jax.surgery.drop`).

    ``overrides`` reach the family constructor (``num_classes``, ``widths``,
    ``width_mult``, ``dtype``), e.g. tiny test models. The model carries its
    registry defaults as ``input_spec`` (input size, normalisation: assumed,
    not given) and its constructor overrides as ``overrides``.
    """
    info = get_info(name)
    model = info.builder(rngs=rngs if rngs is not None else nnx.Rngs(0), **overrides)
    model.overrides = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()))
    model.input_spec = InputSpec(info.input_size, info.mean, info.std, "assumed")
    dropped = tuple(dropped)
    return surgery.drop(model, dropped) if dropped else model


def num_classes(model: ZooModel) -> int:
    """How many classes a zoo model predicts: its ``num_classes`` override, else its registry entry's."""
    return int(dict(getattr(model, "overrides", ())).get("num_classes", get_info(model.model_name).num_classes))


def _akamaster(depth: int, sha256: str, top1: float) -> tuple[KnownWeights, ...]:
    return (KnownWeights(f"resnet{depth}-{sha256[:8]}.th", sha256, top1, "akamaster/pytorch_resnet_cifar10"),)


_CIFAR_WEIGHTS = {
    20: _akamaster(20, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 91.73),
    32: _akamaster(32, "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850", 92.63),
    44: _akamaster(44, "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4", 93.10),
    56: _akamaster(56, "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367", 93.39),
    110: (),
}

for _depth, _weights in _CIFAR_WEIGHTS.items():
    _blocks, _droppable = cifar_resnet.block_addresses(_depth)
    register(ModelInfo(
        name=f"cifar_resnet{_depth}", family="cifar_resnet", builder=getattr(cifar_resnet, f"cifar_resnet{_depth}"),
        input_size=32, num_classes=10,
        # The akamaster checkpoints were trained with ImageNet statistics; pass other ones for other checkpoints.
        mean=IMAGENET_MEAN, std=IMAGENET_STD, blocks=_blocks, droppable=_droppable, weights=_weights,
    ))

# torchvision names its files with the first 8 hex digits of their sha256; that prefix is what is checked.
_TORCHVISION_WEIGHTS = {
    "resnet18": (KnownWeights("resnet18-f37072fd.pth", "f37072fd", 69.758, "torchvision IMAGENET1K_V1"),),
    "resnet34": (KnownWeights("resnet34-b627a593.pth", "b627a593", 73.314, "torchvision IMAGENET1K_V1"),
                 KnownWeights("resnet34-333f7ec4.pth", "333f7ec4", 73.314, "torchvision (legacy name)")),
    "resnet50": (KnownWeights("resnet50-0676ba61.pth", "0676ba61", 76.130, "torchvision IMAGENET1K_V1"),
                 KnownWeights("resnet50-19c8e357.pth", "19c8e357", 76.130, "torchvision (legacy name)")),
    "resnet101": (),
    "mobilenet_v2": (KnownWeights("mobilenet_v2-b0353104.pth", "b0353104", 71.878, "torchvision IMAGENET1K_V1"),),
}

for _name, _weights in _TORCHVISION_WEIGHTS.items():
    _builder = mobilenetv2.mobilenet_v2 if _name == "mobilenet_v2" else getattr(resnet, _name)
    _blocks, _droppable = (
        mobilenetv2.block_addresses() if _name == "mobilenet_v2" else resnet.block_addresses(_builder.args[0])
    )
    register(ModelInfo(
        name=_name, family="mobilenet_v2" if _name == "mobilenet_v2" else "resnet", builder=_builder,
        input_size=224, num_classes=1000, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        blocks=_blocks, droppable=_droppable, weights=_weights,
    ))

# keras.applications, with the preprocessing Keras documents per family: `caffe` (BGR, mean subtracted, not scaled;
# the BGR order lives in the stem conv, see model_zoo/keras_resnet.py) for ResNet v1, `tf` ([-1, 1]) for the others.
_KERAS = {f"keras_resnet{d}": (keras_resnet, (keras_resnet.CAFFE_MEAN, keras_resnet.CAFFE_STD)) for d in (50, 101, 152)}
_KERAS |= {f"keras_resnet{d}v2": (keras_resnet_v2, ((0.5,) * 3, (0.5,) * 3)) for d in (50, 101, 152)}
_KERAS["keras_mobilenet_v2"] = (keras_mobilenet_v2, ((0.5,) * 3, (0.5,) * 3))

for _name, (_module, (_mean, _std)) in _KERAS.items():
    _builder = getattr(_module, _name)
    _blocks, _droppable = (_module.block_addresses() if _module is keras_mobilenet_v2
                           else _module.block_addresses(_builder.args[0]))
    register(ModelInfo(
        name=_name, family=_module.__name__.rpartition(".")[2], builder=_builder, input_size=224, num_classes=1000,
        mean=_mean, std=_std, blocks=_blocks, droppable=_droppable,
    ))
