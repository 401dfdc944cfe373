"""Plain PyTorch reference models with torchvision / akamaster state-dict keys.

Written from the published architectures (no torchvision here), so the zoo's
Flax models can be checked against an independent implementation:

* `ResNet` - torchvision ResNet-18/34/50/101 (BasicBlock, Bottleneck V1.5).
* `MobileNetV2` - torchvision MobileNetV2 (``features.0..18``, ``classifier``).
* `CifarResNet` - akamaster/pytorch_resnet_cifar10 ResNet-20..110 (option-A).

Every model's ``forward_features(x)`` returns ``(logits, pre_gap)`` where
``pre_gap`` is the NCHW feature map before global average pooling; ``forward``
returns only the logits. ``widths`` / ``width_mult`` shrink the networks for
fast tests exactly as the zoo constructors' options of the same names do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _init_like_torchvision(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- ResNet (torchvision)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet V1.5: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        widths: Sequence[int] = (64, 128, 256, 512),
    ):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        _init_like_torchvision(self)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        out_ch = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_ch:
            downsample = nn.Sequential(conv1x1(self.inplanes, out_ch, stride), nn.BatchNorm2d(out_ch))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out_ch
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        pre_gap = x
        logits = self.fc(torch.flatten(self.avgpool(x), 1))
        return logits, pre_gap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def resnet18(**kwargs) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


def resnet34(**kwargs) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), **kwargs)


def resnet50(**kwargs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


def resnet101(**kwargs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 23, 3), **kwargs)


# --------------------------------------------------------------------------- MobileNetV2 (torchvision)


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # round down by no more than 10%
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """conv (bias-free, padding (k-1)//2) + BatchNorm + ReLU6, keys ``0``/``1``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1))
        layers += [
            Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, round_nearest: int = 8, dropout: float = 0.2):
        super().__init__()
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [Conv2dNormActivation(3, input_channel, stride=2)]
        for t, c, n, s in self.SETTING:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, expand_ratio=t))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(x)
        pre_gap = x
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.classifier(x), pre_gap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def mobilenet_v2(**kwargs) -> MobileNetV2:
    return MobileNetV2(**kwargs)


# --------------------------------------------------------------------------- CIFAR ResNet (akamaster)


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class CifarBasicBlock(nn.Module):
    """akamaster BasicBlock with the option-A (parameter-free) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            pad = planes // 4
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, num_blocks: Sequence[int], num_classes: int = 10, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_layer(widths[0], num_blocks[0], stride=1)
        self.layer2 = self._make_layer(widths[1], num_blocks[1], stride=2)
        self.layer3 = self._make_layer(widths[2], num_blocks[2], stride=2)
        self.linear = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(CifarBasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        pre_gap = out
        out = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
        return self.linear(out), pre_gap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def cifar_resnet(depth: int, **kwargs) -> CifarResNet:
    if (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    return CifarResNet((n, n, n), **kwargs)


# --------------------------------------------------------------------------- helpers


def build(name: str, **overrides) -> nn.Module:
    """The reference for a zoo model name (``resnet18``, ``mobilenet_v2``, ``cifar_resnet56``)."""
    if name.startswith("cifar_resnet"):
        return cifar_resnet(int(name.removeprefix("cifar_resnet")), **overrides)
    return {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101,
            "mobilenet_v2": mobilenet_v2}[name](**overrides)


def residual_branch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The BatchNorm that ends each residual branch (the one torchvision's ``zero_init_residual`` zeroes)."""
    norms = []
    for m in model.modules():
        if isinstance(m, Bottleneck):
            norms.append(m.bn3)
        elif isinstance(m, (BasicBlock, CifarBasicBlock)):
            norms.append(m.bn2)
        elif isinstance(m, InvertedResidual) and m.use_res_connect:
            norms.append(m.conv[-1])
    return norms


def randomise_batch_norm(model: nn.Module, generator: torch.Generator, calibration: torch.Tensor | None = None) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics.

    With a ``calibration`` batch the running statistics are first set to that
    batch's statistics (as a trained network's are to its data), then perturbed,
    so activations stay of order one however deep the model is and an absolute
    tolerance stays meaningful; without one they are drawn at random. As in a
    trained ResNet, the BatchNorm ending a residual branch gets a smaller scale
    (0.1..0.5), so deep random networks do not amplify float32 rounding noise.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    branch_ends = {id(m) for m in residual_branch_norms(model)}
    with torch.no_grad():
        for m in norms:
            c = m.num_features
            low, span = (0.1, 0.4) if id(m) in branch_ends else (0.5, 1.0)
            m.weight.copy_(low + span * torch.rand(c, generator=generator))
            m.bias.copy_(0.2 * torch.randn(c, generator=generator))
        if calibration is not None:
            was_training = model.training
            for m in norms:
                m.momentum = 1.0
            model.train()(calibration)
            for m in norms:
                m.momentum = 0.1
            model.train(was_training)
        for m in norms:
            c = m.num_features
            if calibration is None:
                m.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
                m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            else:
                m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(c, generator=generator))
                m.running_var.mul_(0.7 + 0.7 * torch.rand(c, generator=generator))
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=generator)))
    return model


def drop_blocks(model: nn.Module, dropped: Sequence[str]) -> nn.Module:
    """Delete blocks (``layer1.1``, ``features.9``) in place; later blocks shift down, as in a pruned student."""
    by_group: dict[str, list[int]] = {}
    for address in dropped:
        group, _, index = address.rpartition(".")
        by_group.setdefault(group, []).append(int(index))
    for group, indices in by_group.items():
        sequential = model.get_submodule(group)
        kept = [m for i, m in enumerate(sequential) if i not in set(indices)]
        setattr(model, group, nn.Sequential(*kept))
    return model
