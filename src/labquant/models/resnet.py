"""Quantization-ready ResNets (eager mode), after torchvision's models/quantization/resnet.py.

Why not torchvision's own quantizable ResNet: it only has the ImageNet stem (a 7x7/2 conv plus
max-pool throws away most of a 32x32 CIFAR image) and fixed widths. These blocks keep the same
quantization contract: separate non-inplace ReLU modules (fusion swaps them out; an in-place op
would alias an observed tensor), the residual add as a `FloatFunctional` so it gets its own
observer / quantized kernel, and Quant/DeQuant stubs at the model boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub

from labquant.errors import ConfigError
from labquant.models.fusion import fuse

STEMS = ("cifar", "imagenet")
BLOCKS = ("basic", "bottleneck")


def conv3x3(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv without bias: the following BN supplies the shift (and folds into it on fuse)."""
    return nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)


def _resolve_qat(module: nn.Module, is_qat: bool | None) -> bool:
    """QAT fusion keeps BN trainable (train mode); PTQ fusion folds BN (eval mode)."""
    return module.training if is_qat is None else is_qat


class QuantizableBasicBlock(nn.Module):
    """Two 3x3 convs; residual add+ReLU goes through `skip_add` so it can be quantized."""

    expansion = 1
    # FloatFunctionals whose result always goes through ReLU (add_relu): an unsigned post-ReLU
    # activation qconfig applies to them as it does to fused conv-bn-relu outputs.
    relu_outputs = ("skip_add",)

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.skip_add = FloatFunctional()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.skip_add.add_relu(out, identity)

    def fuse_model(self, is_qat: bool | None = None) -> None:
        is_qat = _resolve_qat(self, is_qat)
        fuse(self, [["conv1", "bn1", "relu1"], ["conv2", "bn2"]], is_qat)
        if self.downsample is not None:
            fuse(self.downsample, [["0", "1"]], is_qat)


class QuantizableBottleneck(nn.Module):
    """1x1 -> 3x3 (strided, torchvision v1.5) -> 1x1 expanding by 4; add+ReLU via `skip_add`."""

    expansion = 4
    relu_outputs = ("skip_add",)  # see QuantizableBasicBlock

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample
        self.skip_add = FloatFunctional()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.skip_add.add_relu(out, identity)

    def fuse_model(self, is_qat: bool | None = None) -> None:
        is_qat = _resolve_qat(self, is_qat)
        groups = [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["conv3", "bn3"]]
        fuse(self, groups, is_qat)
        if self.downsample is not None:
            fuse(self.downsample, [["0", "1"]], is_qat)


Block = type[QuantizableBasicBlock] | type[QuantizableBottleneck]
_BLOCK_NAMES: dict[type[nn.Module], str] = {
    QuantizableBasicBlock: "basic",
    QuantizableBottleneck: "bottleneck",
}


class QuantizableResNet(nn.Module):
    """ResNet with a CIFAR (3x3/1, no pool) or ImageNet (7x7/2 + max-pool) stem.

    `self.arch` records the constructor arguments so checkpoints / reports can tell
    architectures apart without inspecting modules.
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int = 10,
        base_width: int = 64,
        stem: str = "cifar",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        layers = [int(n) for n in layers]
        if not layers or min(layers) < 1:
            raise ConfigError(
                f"model.layers must be a non-empty list of positive ints, got {layers}"
            )
        if stem not in STEMS:
            raise ConfigError(f"model.stem must be one of {list(STEMS)}, got {stem!r}")
        self.arch: dict[str, Any] = {
            "block": _BLOCK_NAMES.get(block, block.__name__),
            "layers": list(layers),
            "base_width": base_width,
            "num_classes": num_classes,
            "stem": stem,
        }
        self.quant = QuantStub()
        self.dequant = DeQuantStub()
        self.inplanes = base_width
        if stem == "cifar":
            self.conv1 = conv3x3(3, base_width)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU()
        self.stage_names: list[str] = []
        for i, blocks in enumerate(layers):
            name = f"layer{i + 1}"
            stage = self._make_layer(block, base_width * 2**i, blocks, stride=1 if i == 0 else 2)
            self.add_module(name, stage)
            self.stage_names.append(name)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)
        self._init_weights(zero_init_residual)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """torchvision's init; zeroing each block's last BN makes blocks start as identities."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, QuantizableBottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, QuantizableBasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.quant(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.dequant(self.fc(x))

    def fuse_model(self, is_qat: bool | None = None) -> None:
        """Fuse stem and every block; `is_qat=None` follows `self.training`."""
        is_qat = _resolve_qat(self, is_qat)
        fuse(self, [["conv1", "bn1", "relu"]], is_qat)
        for m in self.modules():
            if isinstance(m, (QuantizableBasicBlock, QuantizableBottleneck)):
                m.fuse_model(is_qat)


def build_resnet(
    block: str,
    layers: Sequence[int],
    base_width: int = 64,
    num_classes: int = 10,
    stem: str = "cifar",
) -> QuantizableResNet:
    """Generic factory for Hydra configs (`layers` may be a ListConfig)."""
    blocks: dict[str, Block] = {"basic": QuantizableBasicBlock, "bottleneck": QuantizableBottleneck}
    if block not in blocks:
        raise ConfigError(f"model.block must be one of {list(BLOCKS)}, got {block!r}")
    return QuantizableResNet(blocks[block], list(layers), num_classes, base_width, stem)


def small_resnet(
    layers: Sequence[int] = (2, 2, 2),
    base_width: int = 32,
    block: str = "basic",
    num_classes: int = 10,
    stem: str = "cifar",
) -> QuantizableResNet:
    """Narrow 3-stage ResNet that trains on a couple of CPU cores in minutes."""
    return build_resnet(block, layers, base_width, num_classes, stem)


def resnet18(num_classes: int = 10, stem: str = "cifar") -> QuantizableResNet:
    return build_resnet("basic", [2, 2, 2, 2], 64, num_classes, stem)


def resnet34(num_classes: int = 10, stem: str = "cifar") -> QuantizableResNet:
    return build_resnet("basic", [3, 4, 6, 3], 64, num_classes, stem)


def resnet50(num_classes: int = 10, stem: str = "cifar") -> QuantizableResNet:
    return build_resnet("bottleneck", [3, 4, 6, 3], 64, num_classes, stem)


def resnet101(num_classes: int = 10, stem: str = "cifar") -> QuantizableResNet:
    return build_resnet("bottleneck", [3, 4, 23, 3], 64, num_classes, stem)


def resnet152(num_classes: int = 10, stem: str = "cifar") -> QuantizableResNet:
    return build_resnet("bottleneck", [3, 8, 36, 3], 64, num_classes, stem)
