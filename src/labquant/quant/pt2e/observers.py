"""torchao observers and fake quantization for power-of-two scales.

PT2E's `convert_pt2e` refuses a mix of torch.ao and torchao observer classes, so the PT2E pot
observer subclasses torchao's MinMaxObserver; its qparams come from quant/pot.py, the same
function the eager observer uses, so both backends give the same scale and zero point for the
same statistics.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor
from torchao.quantization.pt2e import FakeQuantize, MinMaxObserver, PerChannelMinMaxObserver

from labquant.config.schema import check_max_shift_amount
from labquant.quant.pot import clamp_status_of, observe_min_max, power_of_two_qparams


class PotObserver(MinMaxObserver):
    """Symmetric per-tensor min/max observer whose scale is rounded to 2**-n (torchao).

    `unsigned=True`: a post-ReLU activation, 0..255 with zero point 0. `clamp_overflow` /
    `clamp_underflow` are sticky buffers, as in the eager observer: the layer table reports
    whether a scale ever fell off the shifter's range.
    """

    clamp_overflow: Tensor
    clamp_underflow: Tensor

    def __init__(
        self,
        dtype: torch.dtype = torch.uint8,
        qscheme: torch.qscheme = torch.per_tensor_symmetric,
        max_shift_amount: int = 8,
        unsigned: bool = False,
        **kwargs: Any,
    ) -> None:
        if unsigned:  # torch's symmetric qscheme forces zero point 128 / 0 by dtype
            qscheme = torch.per_tensor_affine
        super().__init__(dtype=dtype, qscheme=qscheme, **kwargs)
        self.max_shift_amount = check_max_shift_amount(max_shift_amount)
        self.unsigned = bool(unsigned)
        self.register_buffer("clamp_overflow", torch.tensor(False))
        self.register_buffer("clamp_underflow", torch.tensor(False))

    def forward(self, x_orig: Tensor) -> Tensor:
        """MinMaxObserver.forward, but a NaN batch adds no range (quant/pot.py)."""
        return observe_min_max(self, x_orig)

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return power_of_two_qparams(self)

    @property
    def clamp_status(self) -> str:
        return clamp_status_of(self)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_shift_amount={self.max_shift_amount}"


class PotWeightObserver(PerChannelMinMaxObserver):
    """A power-of-two per-TENSOR weight scale, written per output channel (all equal).

    The integer semantics are those of one scale per tensor (eager pot's); the per-channel form
    is what Inductor's x86 int8 conv lowering and ONNX Runtime's QLinearConv fusion match
    (a per-tensor weight dequant stays an FP32 conv there).
    """

    clamp_overflow: Tensor
    clamp_underflow: Tensor

    def __init__(self, max_shift_amount: int = 8, **kwargs: Any) -> None:
        kwargs.update(dtype=torch.int8, qscheme=torch.per_channel_symmetric, ch_axis=0)
        kwargs.pop("unsigned", None)
        super().__init__(**kwargs)
        self.max_shift_amount = check_max_shift_amount(max_shift_amount)
        self.register_buffer("clamp_overflow", torch.tensor(False))
        self.register_buffer("clamp_underflow", torch.tensor(False))

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        whole = SimpleNamespace(
            min_val=self.min_val.min(),
            max_val=self.max_val.max(),
            quant_min=self.quant_min,
            quant_max=self.quant_max,
            eps=self.eps,
            dtype=self.dtype,
            unsigned=False,
            max_shift_amount=self.max_shift_amount,
            clamp_overflow=self.clamp_overflow,
            clamp_underflow=self.clamp_underflow,
        )
        scale, _ = power_of_two_qparams(whole)
        channels = self.min_val.numel()
        zero_points = torch.zeros(channels, dtype=torch.int64, device=scale.device)
        return scale.expand(channels).contiguous(), zero_points

    clamp_status = PotObserver.clamp_status


class PotFakeQuantize(FakeQuantize):
    """torchao FakeQuantize over PotObserver (a fused moving-average fake quant would compute
    its own, non-power-of-two scale in C++ and never call `calculate_qparams`)."""
