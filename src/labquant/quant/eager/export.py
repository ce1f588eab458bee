"""The int8 deployment artifact: a traced, frozen TorchScript module.

Freezing inlines the weights and the quantization parameters as constants, which removes the
per-module Python dispatch of the eager int8 model: at batch 1 that dispatch costs more than
the int8 convolutions themselves (2-3x slower than the frozen module on 2 CPU cores).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch
from torch import nn


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch 2.15 deprecates TorchScript in favour of torch.export, but eager-mode int8 models
    do not export yet; TorchScript is still the format that runs them without Python."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        # The quantize stub's scale and zero point ARE constants of the converted model.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def to_torchscript(int8_net: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace (not script: the forward loops over stages by name, which script rejects, and an
    int8 graph has no data-dependent control flow to lose) and freeze an eval-mode int8 net."""
    int8_net.eval()
    with torch.inference_mode(), _quiet_jit():
        return torch.jit.freeze(torch.jit.trace(int8_net, example))


def save_torchscript(script: torch.jit.ScriptModule, file: Path | IO[bytes]) -> None:
    with _quiet_jit():
        torch.jit.save(script, file)


def load_torchscript(file: Path | IO[bytes]) -> torch.jit.ScriptModule:
    with _quiet_jit():
        return torch.jit.load(file)
