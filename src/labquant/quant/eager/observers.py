"""Power-of-two observer: scales a shift-only integer pipeline can apply without a multiplier.

Hardware without an int multiplier for requantization rescales by a right shift, so every scale
must be exactly 2**-n with 0 <= n <= max_shift_amount (the widest shift the datapath has).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.ao.quantization import FakeQuantize
from torch.ao.quantization.observer import MinMaxObserver

from labquant.config.schema import check_max_shift_amount
from labquant.errors import ConfigError
from labquant.quant.pot import (
    clamp_status,
    clamp_status_of,
    observe_min_max,
    power_of_two_qparams,
    scale_approximate,
)

__all__ = ["CusQuantObserver", "PotFakeQuantize", "clamp_status", "scale_approximate"]


class CusQuantObserver(MinMaxObserver):
    """Symmetric per-tensor min/max observer whose scale is rounded to 2**-n.

    Full 8-bit range on purpose (`reduce_range=False`): activations quint8 0..255 with zero
    point 128, weights qint8 -128..127. torch's x86/fbgemm defaults drop activations to 7 bits
    because AVX2 CPUs without VNNI multiply u8*s8 pairs with `vpmaddubsw`, whose int16 sum of
    two products can saturate (2*255*127 > 32767); the lab's target is shift-based hardware
    with a wide accumulator, and a power-of-two scale already rounds the range, so we keep the
    bit. On such a CPU the x86 engine may saturate a few sums, so CPU int8 accuracy there can
    sit slightly below the hardware's (VNNI CPUs accumulate in int32 and are exact).

    `clamp_overflow` / `clamp_underflow` are sticky buffers, so a checkpoint says whether the
    layer ever needed a scale outside the shifter's range.
    """

    clamp_overflow: Tensor
    clamp_underflow: Tensor

    def __init__(
        self,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_tensor_symmetric,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        max_shift_amount: int = 8,
        unsigned: bool = False,
        **kwargs: Any,
    ) -> None:
        # unsigned: a post-ReLU activation, quint8 0..255 with zero point 0 (per_tensor_affine
        # in torch's terms, though its only zero point is 0).
        unsigned = bool(unsigned)
        if unsigned and (dtype != torch.quint8 or qscheme != torch.per_tensor_affine):
            raise ConfigError(
                "qconfig.activations=unsigned needs quint8 with torch.per_tensor_affine, got "
                f"dtype={dtype} qscheme={qscheme}; use the pot_unsigned qconfig"
            )
        if qscheme != torch.per_tensor_symmetric and not unsigned:
            raise ConfigError(
                f"qconfig=pot is symmetric per-tensor only; got qscheme={qscheme}, "
                "use torch.per_tensor_symmetric"
            )
        if dtype not in (torch.quint8, torch.qint8):
            raise ConfigError(f"qconfig=pot supports quint8 / qint8 only, got dtype={dtype}")
        super().__init__(
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            **kwargs,
        )
        self.max_shift_amount = check_max_shift_amount(max_shift_amount)
        self.unsigned = unsigned
        self.register_buffer("clamp_overflow", torch.tensor(False))
        self.register_buffer("clamp_underflow", torch.tensor(False))

    def forward(self, x_orig: Tensor) -> Tensor:
        """MinMaxObserver.forward, but a NaN batch adds no range (quant/pot.py)."""
        return observe_min_max(self, x_orig)

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """MinMaxObserver's symmetric scale, rounded to 2**-n (quant/pot.py, shared with the
        PT2E observer); never raises on odd statistics, never syncs with the host."""
        return power_of_two_qparams(self)

    @property
    def clamp_status(self) -> str:
        """'overflow' / 'underflow' if ever clamped (overflow wins), else 'ok'."""
        return clamp_status_of(self)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_shift_amount={self.max_shift_amount}"


class PotFakeQuantize(FakeQuantize):
    """FakeQuantize for CusQuantObserver whose on/off switches are mirrored on the host.

    torch's FakeQuantize.forward tests its `observer_enabled` / `fake_quant_enabled` buffers
    with `if buffer[0] == 1`: on a GPU that is a device-to-host sync per module per step. The
    mirrors change with enable_*/disable_* (what the QAT schedule calls) and are refreshed from
    the buffers when a checkpoint is loaded, so a resumed run switches the same way.
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
            self.scale.copy_(scale)
            self.zero_point.copy_(zero_point)
        if not self._fake_quantizing:
            return x
        observer = self.activation_post_process
        return torch.fake_quantize_per_tensor_affine(
            x, self.scale, self.zero_point, observer.quant_min, observer.quant_max
        )
