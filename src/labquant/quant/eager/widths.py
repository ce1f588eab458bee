"""Activation codes narrower than quint8 (qconfig.activation_bits < 8) in the eager int8 model.

Observers and fake quants clamp to their quant_min / quant_max, but eager convert keeps only
scale and zero point: torch's int8 conv / linear / add kernels clamp their output to the
container's 0..255. So convert records each narrowed activation's code range from the prepared
model (`activation_ranges`) and `install_clamps` makes each such module clamp the module's
quantized output to it (`torch.clamp` on a quantized tensor clamps the codes; the bounds
(q - zp) * 2**-n are exact) in the module's forward. Tracing records it, so the shipped
TorchScript clamps too.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.ao.nn.quantized as nnq
from torch import Tensor, nn
from torch.ao.quantization import FakeQuantizeBase
from torch.ao.quantization.observer import ObserverBase

_POST = ".activation_post_process"
_MARK = "_labquant_code_clamp"
FULL_RANGE = (0, 255)


def activation_ranges(prepared: nn.Module) -> dict[str, tuple[int, int]]:
    """Module name -> the (quant_min, quant_max) of the activation it outputs, where narrower
    than 0..255 (empty for 8-bit qconfigs)."""
    ranges: dict[str, tuple[int, int]] = {}
    modules = dict(prepared.named_modules())
    for name, module in modules.items():
        if not name.endswith(_POST) or not isinstance(module, (ObserverBase, FakeQuantizeBase)):
            continue
        if isinstance(modules.get(name[: -len(_POST)]), FakeQuantizeBase):
            continue  # a fake quant's own observer (QAT weights), not an activation
        observer = getattr(module, "activation_post_process", module)
        codes = (int(observer.quant_min), int(observer.quant_max))
        if codes != FULL_RANGE:
            ranges[name[: -len(_POST)]] = codes
    return ranges


def _qparams(module: nn.Module) -> tuple[float, int]:
    return float(module.scale), int(module.zero_point)


def _clamped_forward(self: nn.Module, *args: Any) -> Tensor:
    """The module's own forward, its quantized output clamped to the recorded code range."""
    low, high = getattr(self, _MARK)
    return torch.clamp(type(self).forward(self, *args), low, high)


def install_clamps(int8: nn.Module, ranges: dict[str, tuple[int, int]]) -> int:
    """Clamp each named module's int8 output to its code range; returns how many."""
    modules = dict(int8.named_modules())
    for name, (qmin, qmax) in ranges.items():
        owner = modules[name]
        scale, zero_point = _qparams(owner)
        target = modules[f"{name}{_POST}"] if isinstance(owner, nnq.QFunctional) else owner
        bounds = ((qmin - zero_point) * scale, (qmax - zero_point) * scale)
        object.__setattr__(target, _MARK, bounds)
        # An instance forward, not a forward hook: torch.jit.trace scripts hooks, and the int8
        # modules' hooks do not script; a deep copy rebinds the method to the copy.
        object.__setattr__(target, "forward", types.MethodType(_clamped_forward, target))
    return len(ranges)
