"""The eager backend's power-of-two observers and fake quantization (torch.ao classes).

Hardware without an int multiplier for requantization rescales by a right shift, so every scale
must be exactly 2**-n with 0 <= n <= max_shift_amount (the widest shift the datapath has). The
statistics and the scale rules are quant/pot.py's `PotObserverCore`, shared with the PT2E
observers; these classes only give it torch.ao's base observers (what eager convert expects).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.ao.quantization import FakeQuantize, FusedMovingAvgObsFakeQuantize
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

from labquant.errors import ConfigError
from labquant.quant.learned import LearnedThresholdCore
from labquant.quant.pot import (
    MemoryOrderForward,
    PotObserverCore,
    clamp_status,
    scale_approximate,
)

__all__ = [
    "EagerLearnedPotFakeQuantize",
    "EagerPotChannelObserver",
    "EagerPotFakeQuantize",
    "EagerPotObserver",
    "MemoryOrderFakeQuantize",
    "clamp_status",
    "scale_approximate",
]


def _check_container(dtype: torch.dtype, qscheme: torch.qscheme, unsigned: bool) -> None:
    if unsigned and (dtype != torch.quint8 or qscheme != torch.per_tensor_affine):
        raise ConfigError(
            "qconfig.activations=unsigned needs quint8 with torch.per_tensor_affine, got "
            f"dtype={dtype} qscheme={qscheme}; use the pot_unsigned qconfig"
        )
    if qscheme != torch.per_tensor_symmetric and not unsigned:
        raise ConfigError(
            f"a power-of-two tensor scale is symmetric per-tensor; got qscheme={qscheme}, "
            "use torch.per_tensor_symmetric (or qconfig.granularity=per_channel for weights)"
        )
    if dtype not in (torch.quint8, torch.qint8):
        raise ConfigError(f"power-of-two qconfigs support quint8 / qint8 only, got dtype={dtype}")


class EagerPotObserver(PotObserverCore, MinMaxObserver):
    """Symmetric per-tensor observer whose scale is 2**-n (quant/pot.py's rules).

    Full range of the declared width on purpose (`reduce_range=False`): at 8 bits activations
    quint8 0..255 with zero point 128, weights qint8 -128..127. torch's x86/fbgemm defaults
    drop activations to 7 bits because AVX2 CPUs without VNNI multiply u8*s8 pairs with
    `vpmaddubsw`, whose int16 sum of two products can saturate (2*255*127 > 32767); the lab's
    target is shift-based hardware with a wide accumulator, and a power-of-two scale already
    rounds the range, so we keep the bit. On such a CPU the x86 engine may saturate a few sums,
    so CPU int8 accuracy there can sit slightly below the hardware's (VNNI CPUs accumulate in
    int32 and are exact). Narrower widths pass quant_min / quant_max (quant/pot.code_range).
    """

    def __init__(
        self,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_tensor_symmetric,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        max_shift_amount: int = 8,
        unsigned: bool = False,
        exponent: str = "round",
        range_method: str = "minmax",
        percentile: float = 99.99,
        weights: bool = False,
        scheme: Any = None,
        **kwargs: Any,
    ) -> None:
        # unsigned: a post-ReLU activation, quint8 0..2**b-1 with zero point 0
        # (per_tensor_affine in torch's terms, though its only zero point is 0).
        unsigned = bool(unsigned)
        _check_container(dtype, qscheme, unsigned)
        super().__init__(
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            **kwargs,
        )
        self.setup_pot(
            max_shift_amount, unsigned, exponent, range_method, percentile, weights,
            one_scale=True, scheme=scheme,
        )  # fmt: skip


class EagerPotChannelObserver(PotObserverCore, PerChannelMinMaxObserver):
    """Weights with one 2**-n per output channel (qconfig.granularity=per_channel)."""

    def __init__(
        self,
        dtype: torch.dtype = torch.qint8,
        qscheme: torch.qscheme = torch.per_channel_symmetric,
        ch_axis: int = 0,
        quant_min: int | None = None,
        quant_max: int | None = None,
        max_shift_amount: int = 8,
        exponent: str = "round",
        range_method: str = "minmax",
        percentile: float = 99.99,
        weights: bool = True,
        scheme: Any = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("unsigned", None)
        if dtype != torch.qint8 or qscheme != torch.per_channel_symmetric:
            raise ConfigError(
                "per-channel power-of-two weights are qint8 with torch.per_channel_symmetric, "
                f"got dtype={dtype} qscheme={qscheme}"
            )
        super().__init__(
            ch_axis=ch_axis, dtype=dtype, qscheme=qscheme, quant_min=quant_min,
            quant_max=quant_max, **kwargs,
        )  # fmt: skip
        self.setup_pot(
            max_shift_amount, False, exponent, range_method, percentile, weights,
            one_scale=False, scheme=scheme,
        )  # fmt: skip


class EagerPotFakeQuantize(FakeQuantize):
    """FakeQuantize for the power-of-two observers whose on/off switches are mirrored on the
    host.

    torch's FakeQuantize.forward tests its `observer_enabled` / `fake_quant_enabled` buffers
    with `if buffer[0] == 1`: on a GPU that is a device-to-host sync per module per step. The
    mirrors change with enable_*/disable_* (what the QAT schedule calls) and are refreshed from
    the buffers when a checkpoint is loaded, so a resumed run switches the same way. (Torch's
    default FusedMovingAvgObsFakeQuantize is no option: its C++ kernel computes its own,
    non-power-of-two scale and never calls the observer's calculate_qparams.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._observing = True
        self._fake_quantizing = True

    def enable_observer(self, enabled: bool = True) -> None:
        super().enable_observer(enabled)
        self._observing = bool(enabled)

    def enable_fake_quant(self, enabled: bool = True) -> None:
        super().enable_fake_quant(enabled)
        self._fake_quantizing = bool(enabled)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._observing = bool(self.observer_enabled[0] == 1)
        self._fake_quantizing = bool(self.fake_quant_enabled[0] == 1)

    def forward(self, x: Tensor) -> Tensor:
        if self._observing:
            self.activation_post_process(x.detach())
            scale, zero_point = self.calculate_qparams()
            if self.scale.shape != scale.shape:  # per channel: sized at the first batch
                self.scale.resize_(scale.shape)
                self.zero_point.resize_(zero_point.shape)
            self.scale.copy_(scale)
            self.zero_point.copy_(zero_point)
        if not self._fake_quantizing:
            return x
        if self.is_per_channel:
            return torch.fake_quantize_per_channel_affine(
                x, self.scale, self.zero_point.to(torch.int32), self.ch_axis,
                self.quant_min, self.quant_max,
            )  # fmt: skip
        return torch.fake_quantize_per_tensor_affine(
            x, self.scale, self.zero_point, self.quant_min, self.quant_max
        )


class EagerLearnedPotFakeQuantize(LearnedThresholdCore, EagerPotFakeQuantize):
    """`qconfig.learn_scales=true`: a power-of-two FakeQuantize whose log2 threshold is a
    parameter of the QAT module it sits in (quant/learned.py), so the optimizer, checkpoints,
    resume and DDP see it like any weight."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setup_learned()


class MemoryOrderFakeQuantize(MemoryOrderForward, FusedMovingAvgObsFakeQuantize):
    """torch's fused per-tensor activation fake-quant (the x86 / fbgemm / qnnpack QAT default)
    reading channels_last activations in memory order (quant/pot.py's `MemoryOrderForward`)."""
