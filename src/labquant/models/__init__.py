"""Model zoo: quantization-ready ResNets (eager-mode fusion via `fuse_model`)."""

from labquant.models.resnet import (
    QuantizableBasicBlock,
    QuantizableBottleneck,
    QuantizableResNet,
    build_resnet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    small_resnet,
)

__all__ = [
    "QuantizableBasicBlock",
    "QuantizableBottleneck",
    "QuantizableResNet",
    "build_resnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "small_resnet",
]
