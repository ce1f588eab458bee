"""Conv + BN (+ ReLU) fusion, kept next to the blocks that declare it (as torchvision's
quantizable ResNet does): the eager quantization backend calls `fuse_model` before it prepares."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch.ao.quantization as tq
from torch import nn


def fuse(module: nn.Module, groups: Sequence[Sequence[str]], is_qat: bool) -> None:
    """Fuse conv+bn(+relu) groups in place.

    QAT needs `fuse_modules_qat` in train mode (BN stays trainable inside ConvBn*); PTQ needs
    `fuse_modules` in eval mode (BN folded into the conv weights).
    """
    groups = [list(g) for g in groups]
    with warnings.catch_warnings():
        # eager-mode torch.ao.quantization is deprecated upstream; fusion itself still works
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        if is_qat:
            tq.fuse_modules_qat(module, groups, inplace=True)
        else:
            tq.fuse_modules(module, groups, inplace=True)
