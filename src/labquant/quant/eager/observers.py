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


def _shift_amount(scale: Tensor) -> Tensor:
    """-log2(scale) with NaN mapped to 0 (see scale_approximate); 0 -> +inf, inf -> -inf."""
    shift = -torch.log2(scale.detach().to(torch.float32))
    return torch.nan_to_num(shift, nan=0.0, posinf=float("inf"), neginf=float("-inf"))


def scale_approximate(scale: Tensor, max_shift_amount: int = 8) -> Tensor:
    """Nearest power of two in the log domain, clamped to the shifts the hardware has.

    Degenerate scales still give a usable one, because a crash here would kill a long training
    run at its last step: 0 / subnormal -> 2**-max_shift_amount (finest), inf / huge -> 1.0
    (coarsest). NaN (or a negative scale) also -> 1.0: it comes from statistics that blew up
    (inf - inf, diverged activations), i.e. the same situation as an infinite range.
    """
    max_shift_amount = check_max_shift_amount(max_shift_amount)
    shift = torch.clamp(_shift_amount(scale), 0, max_shift_amount).round()
    return torch.exp2(-shift)  # exact for integer exponents in float32's normal range


def clamp_status(scale: Tensor, max_shift_amount: int = 8) -> str:
    """Which side of the shift range a raw (not yet rounded) scale fell off.

    "overflow": -log2(scale) < 0, the range needs a scale above 1.0, so values saturate.
    "underflow": -log2(scale) > max_shift_amount, a finer scale than the shifter can reach,
    so precision is lost (values are still representable). NaN counts as overflow, matching
    scale_approximate. For several scales, overflow wins over underflow (it is the worse one).
    """
    max_shift_amount = check_max_shift_amount(max_shift_amount)
    shift = _shift_amount(scale)
    if bool((shift < 0).any()) or bool(torch.isnan(scale).any()):
        return "overflow"
    if bool((shift > max_shift_amount).any()):
        return "underflow"
    return "ok"


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
        """MinMaxObserver.forward, but a NaN batch adds no range instead of poisoning min/max.

        (torch.min/max propagate NaN, so one NaN would fix the scale at 1.0 for good; fmin/fmax
        skip it. Infinities still count: they widen the range and are flagged as overflow.)
        """
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().to(self.min_val.dtype)
        min_cur, max_cur = torch.aminmax(x)
        self.min_val.copy_(torch.fmin(min_cur, self.min_val))
        self.max_val.copy_(torch.fmax(max_cur, self.max_val))
        return x_orig

    def _symmetric_zero_point(self) -> Tensor:
        """128 for quint8 0..255, 0 for qint8.

        torch picks (qmin + qmax) // 2 = 127 when quant_min/quant_max are passed explicitly, as
        FakeQuantize always does, but 128 otherwise; PTQ and QAT would then disagree by one.
        """
        zp = (self.quant_min + self.quant_max + 1) // 2 if self.dtype == torch.quint8 else 0
        zp = 0 if self.unsigned else zp
        return torch.tensor([zp], dtype=torch.int64, device=self.min_val.device)

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """MinMaxObserver's symmetric scale, rounded to 2**-n; never raises on odd statistics.

        Tensor ops only, no `if tensor:`: in GPU QAT this runs for every fake-quant module at
        every step, and each host read would stall the device (torch's own version has three).
        """
        zero_point = self._symmetric_zero_point()
        observed = self.min_val <= self.max_val  # False before any data (min=inf, max=-inf)
        max_abs = torch.max(-self.min_val.clamp(max=0.0), self.max_val.clamp(min=0.0))
        # torch's symmetric formula: max|x| over half the integer range, at least eps;
        # unsigned: max(x, 0) over the whole range (negative values clamp to code 0).
        half_range = (self.quant_max - self.quant_min) / 2
        if self.unsigned:
            max_abs, half_range = self.max_val.clamp(min=0.0), self.quant_max - self.quant_min
        raw_scale = torch.max(max_abs / half_range, self.eps.reshape(()))
        shift = _shift_amount(raw_scale)
        counts = observed & (max_abs > 0)  # an all-zero tensor loses no precision
        self.clamp_overflow |= counts & ((shift < 0) | torch.isnan(raw_scale))
        self.clamp_underflow |= counts & (shift > self.max_shift_amount)
        scale = torch.where(observed, scale_approximate(raw_scale, self.max_shift_amount), 1.0)
        return scale.reshape(1), zero_point

    @property
    def clamp_status(self) -> str:
        """'overflow' / 'underflow' if ever clamped (overflow wins), else 'ok'."""
        if bool(self.clamp_overflow):
            return "overflow"
        return "underflow" if bool(self.clamp_underflow) else "ok"

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
