"""The ONLY module that calls torch.ao.quantization's eager-mode API.

Eager mode is deprecated upstream (DeprecationWarning on fuse / prepare / convert) but still the
only way to run the lab's int8 flow; keeping every call here lets a PT2E / torchao backend be
added beside it later, and keeps the warning filter in one place.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch.ao.quantization as tq
from torch import nn


@contextmanager
def _quiet_deprecation() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def fuse(module: nn.Module, groups: Sequence[Sequence[str]], is_qat: bool) -> None:
    """Fuse conv+bn(+relu) groups in place.

    QAT needs `fuse_modules_qat` in train mode (BN stays trainable inside ConvBn*); PTQ needs
    `fuse_modules` in eval mode (BN folded into the conv weights).
    """
    groups = [list(g) for g in groups]
    with _quiet_deprecation():
        if is_qat:
            tq.fuse_modules_qat(module, groups, inplace=True)
        else:
            tq.fuse_modules(module, groups, inplace=True)
