"""Power-of-two scales: the pure rules every backend's observer shares.

Hardware without an int multiplier for requantization rescales by a right shift, so every scale
must be exactly 2**-n with 0 <= n <= max_shift_amount (the widest shift the datapath has). The
eager observer (quant/eager/observers.py) and the PT2E one (quant/pt2e/observers.py) subclass
different MinMaxObservers (torch.ao's, torchao's) but compute their qparams here, so both
backends give the same scale and zero point for the same statistics.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from labquant.config.schema import check_max_shift_amount
from labquant.errors import ConfigError

UNSIGNED_DTYPES = (torch.quint8, torch.uint8)


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


def symmetric_zero_point(observer: Any) -> Tensor:
    """128 for an unsigned 0..255 range, 0 for a signed one or an unsigned post-ReLU activation.

    torch picks (qmin + qmax) // 2 = 127 when quant_min/quant_max are passed explicitly, as
    FakeQuantize (and every PT2E QuantizationSpec) always does, but 128 otherwise; PTQ and QAT,
    eager and PT2E would then disagree by one.
    """
    unsigned_range = observer.dtype in UNSIGNED_DTYPES
    zp = (observer.quant_min + observer.quant_max + 1) // 2 if unsigned_range else 0
    zp = 0 if observer.unsigned else zp
    return torch.tensor([zp], dtype=torch.int64, device=observer.min_val.device)


def power_of_two_qparams(observer: Any) -> tuple[Tensor, Tensor]:
    """A min/max observer's symmetric scale, rounded to 2**-n; never raises on odd statistics.

    `observer` has min_val / max_val / quant_min / quant_max / eps / dtype, `unsigned`,
    `max_shift_amount` and the sticky `clamp_overflow` / `clamp_underflow` buffers, which this
    updates. Tensor ops only, no `if tensor:`: in GPU QAT this runs for every fake-quant module
    at every step, and each host read would stall the device (torch's own version has three).
    """
    zero_point = symmetric_zero_point(observer)
    observed = observer.min_val <= observer.max_val  # False before any data (min=inf, max=-inf)
    max_abs = torch.max(-observer.min_val.clamp(max=0.0), observer.max_val.clamp(min=0.0))
    # torch's symmetric formula: max|x| over half the integer range, at least eps;
    # unsigned: max(x, 0) over the whole range (negative values clamp to code 0).
    half_range = (observer.quant_max - observer.quant_min) / 2
    if observer.unsigned:
        max_abs = observer.max_val.clamp(min=0.0)
        half_range = observer.quant_max - observer.quant_min
    raw_scale = torch.max(max_abs / half_range, observer.eps.reshape(()))
    shift = _shift_amount(raw_scale)
    counts = observed & (max_abs > 0)  # an all-zero tensor loses no precision
    observer.clamp_overflow |= counts & ((shift < 0) | torch.isnan(raw_scale))
    observer.clamp_underflow |= counts & (shift > observer.max_shift_amount)
    scale = torch.where(observed, scale_approximate(raw_scale, observer.max_shift_amount), 1.0)
    return scale.reshape(1), zero_point


def observe_min_max(observer: Any, x_orig: Tensor) -> Tensor:
    """A min/max observer's forward, except that a NaN batch adds no range instead of poisoning
    min/max (torch.min/max propagate NaN, so one NaN would fix the scale at 1.0 for good;
    fmin/fmax skip it). Infinities still count: they widen the range and are flagged."""
    if x_orig.numel() == 0:
        return x_orig
    x = x_orig.detach().to(observer.min_val.dtype)
    min_cur, max_cur = torch.aminmax(x)
    observer.min_val.copy_(torch.fmin(min_cur, observer.min_val))
    observer.max_val.copy_(torch.fmax(max_cur, observer.max_val))
    return x_orig


def clamp_status_of(observer: Any) -> str:
    """'overflow' / 'underflow' if the observer's scale was ever clamped (overflow wins)."""
    if bool(observer.clamp_overflow):
        return "overflow"
    return "underflow" if bool(observer.clamp_underflow) else "ok"


def folded_bias(
    gamma: Tensor, beta: Tensor, mean: Tensor, var: Tensor, eps: float, conv_bias: Tensor | None
) -> Tensor:
    """The bias a conv followed by BatchNorm (running statistics) becomes when BN is folded:
    `beta + (b - mean) * gamma / sqrt(var + eps)`, what both backends' convert ships."""
    shift = -mean if conv_bias is None else conv_bias - mean
    return beta + shift * gamma / torch.sqrt(var + eps)


def snap_correction(bias: Tensor, grid: Tensor) -> Tensor:
    """What moves `bias` onto its accumulator grid `s_in * s_w` (round half to even, as
    convert's snap does), detached: added to a QAT forward it fake-quantizes the bias with a
    straight-through gradient (both backends' QAT bias fake-quant)."""
    return (torch.round(bias / grid) * grid - bias).detach()


FIX_EXPORT = "export a stage quantized with a power-of-two qconfig (qconfig=pot or pot_unsigned)"


def shift_of(scale: float, where: str) -> int:
    """n for a scale 2**-n (the integer export's shifts); anything else is refused: its
    requantization would need a multiplier."""
    n = -math.log2(scale) if scale > 0 else math.nan
    if not math.isfinite(n) or n != round(n):
        raise ConfigError(f"{where} has scale {scale!r}, not a power of two; {FIX_EXPORT}")
    return round(n)


def require_power_of_two(qconfig: Any) -> None:
    """The integer export is of power-of-two stages only (both backends)."""
    if not qconfig.power_of_two:
        raise ConfigError(
            f"qconfig={qconfig.name} is not a power-of-two qconfig: its requantization needs "
            f"a multiplier, not a shift; {FIX_EXPORT}"
        )
