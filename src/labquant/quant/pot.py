"""Power-of-two scales: the rules and the observer core every backend's observers end in.

Hardware without an int multiplier for requantization rescales by a right shift, so every scale
must be exactly 2**-n with 0 <= n <= max_shift_amount (the widest shift the datapath has). The
eager observers (quant/eager/observers.py) and the PT2E ones (quant/pt2e/observers.py) subclass
different base observers (torch.ao's, torchao's) but both mix in `PotObserverCore`, so both
backends give the same scale and zero point for the same statistics.

A scale is composed from small parts, each a setting of the qconfig (Brevitas's spirit):
- the code range: `bits` (2..8) narrow torch's int8 / uint8 container (`code_range`);
- the range method (`RANGE_METHODS`): which threshold the codes must cover. `minmax`: the
  observed max |x|; `percentile`: the p-th percentile of |x|; `mse`: the integer exponent,
  among the min/max one and its neighbours, that minimises the quantization error. Weights are
  measured exactly (the tensor itself), activations on a histogram of the whole calibration set
  (`LogHistogram`: fixed log2-domain bins, so batches add up without re-binning or host syncs);
- the exponent rule (`EXPONENT_RULES`): how the threshold's scale becomes 2**-n. `round`: nearest
  in the log domain; `ceil`: the scale rounded UP, so the threshold never clips (Quark's
  NonOverflow, Brevitas's fixed-point default); `floor`: rounded down (finer, may clip);
- per tensor or per output channel (`granularity`), each shift clamped to 0..max_shift_amount.
A new range method is one function in `RANGE_METHODS`' dispatch (`_refined_shift`).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from torch import Tensor

from labquant.errors import ConfigError
from labquant.quant.scheme.base import (  # noqa: F401 (the code widths, re-exported)
    FIX_EXPORT,
    MAX_BITS,
    MIN_BITS,
    check_bits,
    code_range,
)
from labquant.quant.scheme.power_of_two import EXPONENT_ROUNDING, PowerOfTwo

UNSIGNED_DTYPES = (torch.quint8, torch.uint8)
MAX_SHIFT_LIMIT = 31  # a 32-bit accumulator cannot be shifted further
SHIFT_RULE = f"must be an integer in 0..{MAX_SHIFT_LIMIT} (the shift of a power-of-two scale 2**-n)"
EXPONENT_RULES = tuple(EXPONENT_ROUNDING)  # round, floor, ceil
RANGE_METHODS = ("minmax", "percentile", "mse")
GRANULARITIES = ("per_tensor", "per_channel")
MSE_NEIGHBOURS = 4  # the mse search tries n0 - 4 .. n0 + 4 around the min/max exponent n0

# The declared types of the power-of-two settings (the qconfig factories' arguments; the schema
# checks every `qconfig.*` value against them before any work starts).
ShiftAmount = Annotated[
    int, Field(ge=0, le=MAX_SHIFT_LIMIT, json_schema_extra={"rule": SHIFT_RULE})
]
Bits = Annotated[
    int,
    Field(
        ge=MIN_BITS,
        le=MAX_BITS,
        json_schema_extra={"rule": f"must be an integer in {MIN_BITS}..{MAX_BITS} (code width)"},
    ),
]
Percentile = Annotated[
    float, Field(gt=0, le=100, json_schema_extra={"rule": "must be a percentile in (0, 100]"})
]
Granularity = Literal["per_tensor", "per_channel"]
ExponentRule = Literal["round", "floor", "ceil"]
RangeMethod = Literal["minmax", "percentile", "mse"]
_SHIFT_AMOUNT = TypeAdapter(ShiftAmount, config=ConfigDict(strict=True))


def check_max_shift_amount(value: Any) -> int:
    """The shift range for code that takes it outside a composed config (observers, tests)."""
    try:
        return _SHIFT_AMOUNT.validate_python(value)
    except ValidationError:
        shown = str(value).lower() if isinstance(value, bool) else repr(value).strip("'")
        raise ConfigError(
            f"qconfig.max_shift_amount={shown} {SHIFT_RULE}; e.g. qconfig.max_shift_amount=8"
        ) from None


def check_choice(setting: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(
            f"qconfig.{setting}={value} must be one of {', '.join(choices)}; "
            f"e.g. qconfig.{setting}={choices[0]}"
        )
    return value


def check_percentile(percentile: Any) -> float:
    if isinstance(percentile, bool) or not isinstance(percentile, int | float):
        raise ConfigError(f"qconfig.percentile={percentile} is not a number; e.g. 99.99")
    if not 0 < percentile <= 100:
        raise ConfigError(
            f"qconfig.percentile={percentile} must be > 0 and <= 100; e.g. qconfig.percentile=99.99"
        )
    return float(percentile)


def bits_of(quant_min: int, quant_max: int) -> int:
    """The width of a code range (its inverse of `code_range`)."""
    return int(math.log2(quant_max - quant_min + 1))


def _shift_amount(scale: Tensor) -> Tensor:
    """-log2(scale) with NaN mapped to 0 (see scale_approximate); 0 -> +inf, inf -> -inf."""
    shift = -torch.log2(scale.detach().to(torch.float32))
    return torch.nan_to_num(shift, nan=0.0, posinf=float("inf"), neginf=float("-inf"))


def integer_shift(raw_scale: Tensor, max_shift_amount: int, exponent: str = "round") -> Tensor:
    """The shift n of the power of two 2**-n the exponent rule picks for `raw_scale`, clamped
    to 0..max_shift_amount (a float tensor of integers). `ceil`/`floor` name what happens to
    the SCALE: ceil rounds it up (n = floor(-log2 s)), floor rounds it down (n = ceil(...))."""
    return PowerOfTwo(max_shift_amount).integer_shift(_shift_amount(raw_scale), exponent)


def scale_approximate(scale: Tensor, max_shift_amount: int = 8, exponent: str = "round") -> Tensor:
    """Nearest power of two in the log domain (or the exponent rule's), clamped to the shifts
    the hardware has.

    Degenerate scales still give a usable one, because a crash here would kill a long training
    run at its last step: 0 / subnormal -> 2**-max_shift_amount (finest), inf / huge -> 1.0
    (coarsest). NaN (or a negative scale) also -> 1.0: it comes from statistics that blew up
    (inf - inf, diverged activations), i.e. the same situation as an infinite range.
    """
    max_shift_amount = check_max_shift_amount(max_shift_amount)
    return torch.exp2(-integer_shift(scale, max_shift_amount, exponent))


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
    """2**(b-1) (128 at 8 bits) for an unsigned 0..2**b-1 range, 0 for a signed one or an
    unsigned post-ReLU activation.

    torch picks (qmin + qmax) // 2 = 127 when quant_min/quant_max are passed explicitly, as
    FakeQuantize (and every PT2E QuantizationSpec) always does, but 128 otherwise; PTQ and QAT,
    eager and PT2E would then disagree by one.
    """
    device = observer.min_val.device
    return torch.tensor([zero_point_of(observer)], dtype=torch.int64, device=device)


def _divisor(observer: Any, zero_point: int) -> float:
    """What the threshold is divided by to give the raw scale. torch's symmetric formula (half
    the integer range, 127.5 at 8 bits) for round / floor, as before this rule existed; `ceil`
    promises that the threshold never clips, so it uses the codes above the zero point (127)."""
    if observer.unsigned:
        return float(observer.quant_max - observer.quant_min)
    if observer.exponent == "ceil":
        return float(observer.quant_max - zero_point)
    return (observer.quant_max - observer.quant_min) / 2


def threshold_divisor(observer: Any) -> float:
    """What an observer's threshold is divided by to give its raw scale (quant/learned.py's
    thresholds use the same)."""
    return _divisor(observer, zero_point_of(observer))


def min_max_threshold(observer: Any, min_val: Tensor, max_val: Tensor) -> Tensor:
    """What min/max says the codes must cover: max|x|, or max(x, 0) for unsigned ranges."""
    if observer.unsigned:
        return max_val.clamp(min=0.0)
    return torch.max(-min_val.clamp(max=0.0), max_val.clamp(min=0.0))


class LogHistogram:
    """Fixed bins in the log2 domain for |x| from 2**LOW to 2**HIGH, one set per sign.

    Fixed bins make the histogram of the whole calibration set a plain sum of the batches'
    (torch's HistogramObserver re-bins when the range grows), need no host sync (scatter_add_),
    and hold every magnitude with the same relative precision (2**(1/64) - 1 = 1.1 %), which is
    what a power-of-two search needs. Magnitudes outside the bins go to the end bins.
    """

    LOW, HIGH, PER_OCTAVE = -32, 16, 64
    BINS = (HIGH - LOW) * PER_OCTAVE

    @classmethod
    def empty(cls, device: Any = None) -> Tensor:
        """Counts: [0, BINS) the negative values, [BINS, 2 BINS) the positive ones (float64:
        exact counts far beyond float32's 2**24)."""
        return torch.zeros(2 * cls.BINS, dtype=torch.float64, device=device)

    @classmethod
    def add(cls, counts: Tensor, x: Tensor) -> None:
        x = x.detach().reshape(-1).to(torch.float32)
        log = torch.nan_to_num(torch.log2(x.abs()), nan=cls.LOW, neginf=cls.LOW, posinf=cls.HIGH)
        index = ((log - cls.LOW) * cls.PER_OCTAVE).floor().clamp(0, cls.BINS - 1).long()
        index = index + cls.BINS * (x > 0).long()
        counts.scatter_add_(0, index, torch.ones_like(index, dtype=counts.dtype))

    @classmethod
    def values(cls, device: Any = None) -> Tensor:
        """Each bin's representative value (its geometric middle), with the sign of its half."""
        middle = torch.exp2(
            cls.LOW
            + (torch.arange(cls.BINS, dtype=torch.float64, device=device) + 0.5) / cls.PER_OCTAVE
        )
        return torch.cat([-middle, middle])

    @classmethod
    def percentile(cls, counts: Tensor, percent: float, unsigned: bool) -> Tensor:
        """The upper edge of the bin where the magnitudes' cumulative share reaches `percent`
        (for unsigned ranges: of the positive values, the only ones clipped at the top)."""
        negative, positive = counts[: cls.BINS], counts[cls.BINS :]
        magnitude = positive if unsigned else negative + positive
        cumulative = torch.cumsum(magnitude, 0)
        target = cumulative[-1:] * (percent / 100.0)
        index = torch.searchsorted(cumulative, target).clamp(max=cls.BINS - 1)
        edge = torch.exp2(cls.LOW + (index.to(torch.float64) + 1) / cls.PER_OCTAVE)
        return edge.to(torch.float32).reshape(())


def quantization_error(
    values: Tensor, counts: Tensor | None, scale: Tensor, zero_point: int, qmin: int, qmax: int
) -> Tensor:
    """Sum of squared errors of fake-quantizing each row of `values` (C, K) with its scale (C,)
    (round half to even, as torch's kernels), weighted by `counts` (a histogram) if given."""
    scale = scale.reshape(-1, 1).to(values.dtype)
    codes = torch.clamp(torch.round(values / scale) + zero_point, qmin, qmax)
    error = (values - (codes - zero_point) * scale).pow(2)
    if counts is not None:
        error = error * counts
    return error.sum(dim=1)


def mse_shift(
    values: Tensor, counts: Tensor | None, start: Tensor, observer: Any, zero_point: int
) -> Tensor:
    """Per row, the integer shift in start - 4 .. start + 4 (clamped to the shifter's range)
    with the least quantization error; `start` (the min/max one) wins every tie, so the result
    is never worse than min/max on the same values."""
    offsets = [0]
    for k in range(1, MSE_NEIGHBOURS + 1):
        offsets += [-k, k]
    candidates = torch.stack(
        [torch.clamp(start + k, 0, observer.max_shift_amount) for k in offsets]
    )  # (M, C)
    errors = torch.stack([
        quantization_error(values, counts, torch.exp2(-shift), zero_point,
                           observer.quant_min, observer.quant_max)
        for shift in candidates
    ])  # fmt: skip
    best = torch.argmin(errors, dim=0)  # the first minimum: the min/max shift on ties
    return candidates.gather(0, best.reshape(1, -1)).reshape(-1)


def weight_percentile(rows: Tensor, percent: float, unsigned: bool) -> Tensor:
    """The exact p-th percentile of |w| (or max(w, 0)) of each row."""
    magnitude = rows.clamp(min=0.0) if unsigned else rows.abs()
    k = min(rows.shape[1], max(1, math.ceil(percent / 100.0 * rows.shape[1])))
    return torch.kthvalue(magnitude, k, dim=1).values


def zero_point_of(observer: Any) -> int:
    """`symmetric_zero_point` as a Python int (read from the settings, not from a tensor)."""
    unsigned_range = observer.dtype in UNSIGNED_DTYPES
    zp = (observer.quant_min + observer.quant_max + 1) // 2 if unsigned_range else 0
    return 0 if observer.unsigned else zp


def memory_order_view(x: Tensor) -> Tensor:
    """`x`, or for a channels_last 4-d tensor its NHWC view (contiguous): the same elements,
    read in memory order, so a whole-tensor reduction needs no copy."""
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return x.permute(0, 2, 3, 1)
    return x


class MemoryOrderForward:
    """Mixed in before a backend's fused per-tensor fake-quant (torch's / torchao's
    `FusedMovingAvgObsFakeQuantize`, the engines' QAT activation default): a channels_last
    activation goes in as its NHWC view (`memory_order_view`), because the kernel's min/max
    clones it to contiguous first (40 ms of a 470 ms x86 QAT step, small model, batch 128, 2
    AMX cores). A per-tensor range and fake-quant do not depend on the element order: the
    output is the base class's own, element for element, in the input's layout."""

    is_per_channel: bool

    def forward(self, X: Tensor) -> Tensor:
        view = X if self.is_per_channel else memory_order_view(X)
        if view is X:
            return super().forward(X)  # type: ignore[misc]
        return super().forward(view).permute(0, 3, 1, 2)  # type: ignore[misc]


def memory_order_constructor(constructor: Any, fused: type, memory_order: type) -> Any:
    """`memory_order.with_args(...)` with `constructor`'s own arguments when `constructor`
    (a `with_args` partial) builds `fused`; any other constructor as it is."""
    partial = getattr(constructor, "p", None)  # torch's / torchao's _PartialWrapper
    if getattr(partial, "func", None) is not fused or partial.args:
        return constructor
    return memory_order.with_args(**partial.keywords)


class PotObserverCore:
    """The power-of-two observer every backend's observer class ends in (mixed in before the
    backend's own base observer, whose buffers `min_val` / `max_val` / `eps` it uses).

    Statistics: min/max always (the clamp status and the min/max exponent come from them);
    `range=percentile|mse` adds, for activations, a `LogHistogram` of every observed batch
    (the whole calibration set, or every QAT step until the observers freeze), and for weights
    (`weights=True`) the shift chosen from the tensor itself at each observation
    (`searched_shift`, a buffer: a checkpoint keeps it, so a resumed QAT converts the same
    scales). `clamp_overflow` / `clamp_underflow` are sticky buffers: a checkpoint says whether
    the layer ever needed a scale outside the shifter's range. Tensor ops only in forward and
    calculate_qparams, no `if tensor:`: in GPU QAT they run for every fake-quant module at
    every step, and each host read would stall the device.
    """

    clamp_overflow: Tensor
    clamp_underflow: Tensor
    min_val: Tensor
    max_val: Tensor

    def setup_pot(
        self,
        max_shift_amount: int,
        unsigned: bool,
        exponent: str,
        range_method: str,
        percentile: float,
        weights: bool,
        one_scale: bool,
        scheme: Any = None,
    ) -> None:
        """Called by each subclass's __init__ after its base observer's. `one_scale`: one
        shift for the whole tensor even where the base observer keeps per-channel statistics
        (PT2E writes per-tensor weight scales per channel, see quant/pt2e/observers.py).
        `scheme`: the plan's power-of-two scheme, whose `integer_shift` picks every exponent
        (a scheme with a narrower exponent set needs no observer of its own)."""
        self.max_shift_amount = check_max_shift_amount(max_shift_amount)
        self.scheme = scheme if scheme is not None else PowerOfTwo(self.max_shift_amount)
        self.unsigned = bool(unsigned)
        self.exponent = check_choice("exponent", exponent, EXPONENT_RULES)
        self.range_method = check_choice("range", range_method, RANGE_METHODS)
        self.percentile = check_percentile(percentile)
        self.weights = bool(weights)
        self.one_scale = bool(one_scale)
        self.register_buffer("clamp_overflow", torch.tensor(False))  # type: ignore[attr-defined]
        self.register_buffer("clamp_underflow", torch.tensor(False))  # type: ignore[attr-defined]
        if self.range_method != "minmax":
            if self.weights:
                self.register_buffer("searched_shift", torch.zeros(0))  # type: ignore[attr-defined]
            else:
                self.register_buffer("histogram", LogHistogram.empty())  # type: ignore[attr-defined]

    @property
    def channel_statistics(self) -> bool:
        """Per-channel min/max (a per-channel base observer)."""
        return self.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)  # type: ignore[attr-defined]

    @property
    def channel_scales(self) -> bool:
        """One shift per output channel (per-channel granularity)."""
        return self.channel_statistics and not self.one_scale

    def _rows(self, x: Tensor) -> Tensor:
        if not self.channel_statistics:
            return x.reshape(1, -1)
        axis = self.ch_axis  # type: ignore[attr-defined]
        return (x.transpose(0, axis) if axis else x).reshape(x.shape[axis], -1)

    def forward(self, x_orig: Tensor) -> Tensor:
        """Min/max (a NaN batch adds no range instead of poisoning them: fmin/fmax skip NaN;
        infinities still count, widen the range and are flagged), plus what the range method
        needs."""
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().to(self.min_val.dtype)
        if self.channel_statistics:
            rows = self._rows(x)
            min_cur, max_cur = torch.aminmax(rows, dim=1)
            if self.min_val.numel() != rows.shape[0]:
                self.min_val.resize_(rows.shape[0]).fill_(float("inf"))
                self.max_val.resize_(rows.shape[0]).fill_(float("-inf"))
        else:
            # The whole tensor at once, in memory order: a (1, -1) view of a channels_last
            # activation is a copy and a one-row reduction runs on one thread, and aminmax of
            # a channels_last tensor copies it to contiguous first (about 90 ms of a QAT step).
            min_cur, max_cur = torch.aminmax(memory_order_view(x))
            min_cur = min_cur.reshape(self.min_val.shape)
            max_cur = max_cur.reshape(self.max_val.shape)
        self.min_val.copy_(torch.fmin(min_cur, self.min_val))
        self.max_val.copy_(torch.fmax(max_cur, self.max_val))
        if self.range_method != "minmax":
            if self.weights:
                self._search_weight(rows if self.channel_scales else x.reshape(1, -1))
            else:
                LogHistogram.add(self.histogram, x)  # type: ignore[attr-defined]
        return x_orig

    def _raw_scale(self, threshold: Tensor) -> Tensor:
        divisor = _divisor(self, zero_point_of(self))
        return torch.max(threshold / divisor, self.eps.reshape(()))  # type: ignore[attr-defined]

    def _integer_shift(self, raw_scale: Tensor) -> Tensor:
        """The scheme's exponent for a raw scale (the qconfig's exponent rule)."""
        return self.scheme.integer_shift(_shift_amount(raw_scale), self.exponent)

    def _search_weight(self, rows: Tensor) -> None:
        """The shift the range method picks from the weight itself, one per row."""
        if self.range_method == "percentile":
            threshold = weight_percentile(rows, self.percentile, self.unsigned)
        else:
            threshold = min_max_threshold(self, *torch.aminmax(rows, dim=1))
        shift = self._integer_shift(self._raw_scale(threshold))
        if self.range_method == "mse":  # the min/max shift is where the search starts
            shift = mse_shift(rows, None, shift, self, zero_point_of(self))
        searched = self.searched_shift  # type: ignore[attr-defined]
        searched.resize_(shift.shape).copy_(shift)

    def _refined_shift(self, start: Tensor) -> Tensor:
        """The range method's shift, given the min/max one (`start`)."""
        if self.weights:
            searched = self.searched_shift  # type: ignore[attr-defined]
            return searched.to(start.dtype) if searched.numel() == start.numel() else start
        counts = self.histogram  # type: ignore[attr-defined]
        if self.range_method == "percentile":
            threshold = LogHistogram.percentile(counts, self.percentile, self.unsigned)
            shift = self._integer_shift(self._raw_scale(threshold))
            return torch.max(shift, start)  # never a coarser scale than min/max needs
        values = LogHistogram.values(counts.device).reshape(1, -1)
        best = mse_shift(values, counts.reshape(1, -1), start.reshape(1), self, zero_point_of(self))
        return best.reshape(start.shape).to(start.dtype)

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        """Scale 2**-n and zero point from the statistics; never raises on odd statistics,
        never syncs with the host."""
        min_val, max_val = self.min_val, self.max_val
        if self.channel_statistics and not self.channel_scales:
            min_val, max_val = min_val.min().reshape(1), max_val.max().reshape(1)
        else:
            min_val, max_val = min_val.reshape(-1), max_val.reshape(-1)
        observed = min_val <= max_val  # False before any data (min=inf, max=-inf)
        threshold = min_max_threshold(self, min_val, max_val)
        raw_scale = self._raw_scale(threshold)
        shift = _shift_amount(raw_scale)
        counts = observed & (threshold > 0)  # an all-zero tensor loses no precision
        self.clamp_overflow |= (counts & ((shift < 0) | torch.isnan(raw_scale))).any()
        self.clamp_underflow |= (counts & (shift > self.max_shift_amount)).any()
        chosen = self._integer_shift(raw_scale)
        if self.range_method != "minmax":
            chosen = self._refined_shift(chosen)
        scale = torch.where(observed, torch.exp2(-chosen), 1.0).to(torch.float32)
        if not self.channel_statistics:
            return scale.reshape(1), symmetric_zero_point(self)
        channels = self.min_val.numel()
        zero_points = torch.zeros(channels, dtype=torch.int64, device=scale.device)
        return scale.expand(channels).contiguous(), zero_points

    @property
    def clamp_status(self) -> str:
        """'overflow' / 'underflow' if the scale was ever clamped (overflow wins), else 'ok'."""
        if bool(self.clamp_overflow):
            return "overflow"
        return "underflow" if bool(self.clamp_underflow) else "ok"

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any):
        """A searched shift has as many entries as the checkpoint's tensor has channels."""
        searched = state_dict.get(f"{prefix}searched_shift")
        if searched is not None and hasattr(self, "searched_shift"):
            self.searched_shift.resize_(searched.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]
        return (
            f"{base}, max_shift_amount={self.max_shift_amount}, exponent={self.exponent}, "
            f"range={self.range_method}"
        )


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
    straight-through gradient (both backends' QAT bias fake-quant). `grid` is one value or one
    per output channel."""
    return (torch.round(bias / grid) * grid - bias).detach()


def shift_of(scale: float, where: str) -> int:
    """n for a scale 2**-n (the integer export's shifts); anything else is refused: its
    requantization would need a multiplier."""
    n = -math.log2(scale) if scale > 0 else math.nan
    if not math.isfinite(n) or n != round(n):
        raise ConfigError(f"{where} has scale {scale!r}, not a power of two; {FIX_EXPORT}")
    return round(n)


def shifts_of(scales: Any, where: str) -> int | list[int]:
    """One shift for a per-tensor scale (or per-channel scales that are all equal), else one
    per output channel."""
    values = [float(s) for s in torch.as_tensor(scales, dtype=torch.float64).reshape(-1)]
    shifts = [shift_of(s, where) for s in values]
    return shifts[0] if len(set(shifts)) == 1 else shifts
