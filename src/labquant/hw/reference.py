"""Run an integer model (program.py) with integer operations only.

After the input quantization (`rint(x * 2**n)`: a power-of-two multiply, exact in float32)
everything is integer arithmetic on int64 numpy arrays holding int32-range values:

- accumulation is exact (no int16 pair saturation, no float bias): the hardware's semantics.
  The multiply-accumulate itself runs as a float64 matrix product on integer values, which is
  exact while every partial sum stays below 2**53 (here |sum| < 255 * 128 * K < 2**27 for any
  K below 4096): it is an exact equivalent of the int32 sum, and BLAS makes it fast. No float
  scale ever multiplies anything.
- requantization is ONE rounding shift: `round_shift(acc, s)`; the rounding rule is
  `half_even` by default (torch's int8 kernels round with nearbyint / lrintf in the default
  FE_TONEAREST mode: halfway cases go to the even neighbour, e.g. 5 >> 1 -> 2, 7 >> 1 -> 4,
  -5 >> 1 -> -2) or `half_up` (what a plain shifter does: add 2**(s-1), arithmetic shift right;
  ties go towards +inf, 5 >> 1 -> 3, -5 >> 1 -> -2). A power-of-two requantization makes ties
  common: any accumulator whose low s bits are exactly 10...0. A per-channel shift (a list in
  the op, program.py) is an array of shifts applied along the output-channel axis (the last axis
  of the (rows, Cout) accumulator), each channel rounded exactly as the scalar shift would.
- ReLU is the clamp at the output zero point; the residual add aligns both operands to the
  finer grid with left shifts; global average pooling is a sum and a rounding shift by
  log2(window) (a window that is not a power of two needs a divide: the reference rounds the
  exact quotient with the same rule; torch multiplies by float32(1/window) and can differ there).
- every op's output (and the input quantization's) is clamped to its `out_range` [lo, hi]
  (default 0..255; ReLU clamps low at max(out_zero_point, lo)). `weight_bits` only bounds the
  weight codes (check_program); the arithmetic is the same for every width.

`count_saturation=True` also evaluates what an AVX2 CPU without VNNI computes inside torch's
x86 / fbgemm int8 conv and linear: products of u8 codes (padding = the input zero point) and s8
weights summed in pairs of adjacent entries in (kernel row, kernel column, input channel) order
into int16 with saturation (`vpmaddubsw`). It counts, per image, the outputs that contain at
least one pair outside -32768..32767; those are the outputs where torch's int8 model on such a
CPU does not compute what the hardware computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from labquant.hw.program import IntegerProgram, out_range_of

ROUNDING = ("half_even", "half_up")
INT16 = (-32768, 32767)


@dataclass
class RunResult:
    codes: dict[str, np.ndarray]  # output name -> uint8 codes (N, ...)
    saturated: dict[str, np.ndarray] = field(default_factory=dict)  # name -> per-image counts

    @property
    def logits(self) -> np.ndarray:
        return next(reversed(self.codes.values()))


def round_shift(
    acc: np.ndarray, shift: int | list[int] | np.ndarray, rounding: str = "half_even"
) -> np.ndarray:
    """`acc * 2**-shift` rounded to an integer (shift < 0: an exact left shift).

    `shift` may be an array (e.g. one shift per output channel) broadcast against `acc`; each
    element is then shifted exactly as the scalar shift would shift it (mixed signs allowed).
    """
    acc = np.asarray(acc, dtype=np.int64)
    if np.ndim(shift) > 0:
        return _round_shift_array(acc, np.asarray(shift, dtype=np.int64), rounding)
    shift = int(shift)
    if shift <= 0:
        return acc << -shift
    floor = acc >> shift  # arithmetic shift: floor division by 2**shift
    if rounding == "half_up":
        return (acc + (1 << (shift - 1))) >> shift
    if rounding != "half_even":
        raise ValueError(f"rounding must be one of {ROUNDING}, got {rounding!r}")
    rest = acc - (floor << shift)
    half = 1 << (shift - 1)
    return floor + ((rest > half) | ((rest == half) & (floor & 1 == 1)))


def _round_shift_array(acc: np.ndarray, shift: np.ndarray, rounding: str) -> np.ndarray:
    """round_shift with an array of shifts: a left shift by max(-s, 0), then a rounding right
    shift by max(s, 0) (one of the two is zero per element; a right shift by 0 is exact)."""
    if rounding not in ROUNDING:
        raise ValueError(f"rounding must be one of {ROUNDING}, got {rounding!r}")
    right = np.maximum(shift, 0)
    acc = acc << np.maximum(-shift, 0)
    half = (np.int64(1) << right) >> 1  # 2**(s-1), and 0 where s == 0
    if rounding == "half_up":
        return (acc + half) >> right
    floor = acc >> right
    rest = acc - (floor << right)
    up = (right > 0) & ((rest > half) | ((rest == half) & (floor & 1 == 1)))
    return floor + up


def round_divide(num: np.ndarray, den: int, rounding: str = "half_even") -> np.ndarray:
    """`num / den` rounded with the same rule, for a divisor that is not a power of two."""
    num = np.asarray(num, dtype=np.int64)
    floor, rest = np.divmod(num, den)
    twice = 2 * rest
    up = (twice > den) | ((twice == den) & ((floor & 1 == 1) if rounding == "half_even" else True))
    return floor + up


def _clamp(values: np.ndarray, op: dict[str, Any], relu: bool) -> np.ndarray:
    """Clamp to the op's out_range [lo, hi]; ReLU clamps low at max(out_zero_point, lo)."""
    low, high = out_range_of(op)
    if relu:
        low = max(op["out_zero_point"], low)
    return np.clip(values, low, high)


def _patches(codes: np.ndarray, op: dict[str, Any], kernel: tuple[int, int]) -> np.ndarray:
    """(N, Ho, Wo, kh, kw, C) windows of the input codes, padded with the zero point."""
    pad_h, pad_w = op["padding"]
    padded = np.pad(
        codes,
        ((0, 0), (0, 0), (pad_h, pad_h), (pad_w, pad_w)),
        constant_values=op["in_zero_point"],
    )
    windows = sliding_window_view(padded, kernel, axis=(2, 3))  # N, C, H', W', kh, kw
    windows = windows[:, :, :: op["stride"][0], :: op["stride"][1]]
    return windows.transpose(0, 2, 3, 4, 5, 1)


def _pair_saturation(rows: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What int16 pair saturation (AVX2 without VNNI, `vpmaddubsw`) does to each output.

    rows: (M, K) u8 codes in (kh, kw, C) order; weight: (Cout, K) s8. Returns (hit, delta),
    both (M, Cout): `hit` where any pair of adjacent products left -32768..32767, `delta` the
    sum over pairs of (saturated pair - exact pair), i.e. what such a CPU adds to the exact
    accumulator. Only weight pairs of the same sign with |w0| + |w1| >= 129 can leave int16
    (255 * 129 > 32767), so only those are evaluated.
    """
    k = weight.shape[1]
    if k % 2:
        weight = np.pad(weight, ((0, 0), (0, 1)))
        rows = np.pad(rows, ((0, 0), (0, 1)))
    w0, w1 = weight[:, 0::2].astype(np.int64), weight[:, 1::2].astype(np.int64)
    risky = (np.sign(w0) * np.sign(w1) >= 0) & (np.abs(w0) + np.abs(w1) >= 129)
    hit = np.zeros((rows.shape[0], weight.shape[0]), dtype=bool)
    delta = np.zeros((rows.shape[0], weight.shape[0]), dtype=np.int64)
    a0, a1 = rows[:, 0::2].astype(np.int64), rows[:, 1::2].astype(np.int64)
    for out_channel, pair in zip(*np.nonzero(risky), strict=True):
        sums = a0[:, pair] * w0[out_channel, pair] + a1[:, pair] * w1[out_channel, pair]
        clipped = np.clip(sums, *INT16)
        hit[:, out_channel] |= clipped != sums
        delta[:, out_channel] += clipped - sums
    return hit, delta


def _matmul_exact(rows: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Integer (M, K) @ (K, Cout) via float64: exact below 2**53 (see the module docstring)."""
    product = rows.astype(np.float64) @ weight.astype(np.float64)
    return product.astype(np.int64)


def _requantize(acc: np.ndarray, op: dict[str, Any], rounding: str) -> np.ndarray:
    """One rounding shift (per channel along acc's last axis when `shift` is a list), the
    output zero point, the clamp."""
    out = round_shift(acc, op["shift"], rounding) + op["out_zero_point"]
    return _clamp(out, op, op["relu"]).astype(np.uint8)


def _conv(codes: np.ndarray, op: dict, arrays: dict, rounding: str, saturation: str | None):
    weight, bias = arrays[op["weight"]], arrays[op["bias"]].astype(np.int64)
    out_channels, _, kh, kw = weight.shape
    windows = _patches(codes, op, (kh, kw))
    n, ho, wo = windows.shape[:3]
    rows = windows.reshape(n * ho * wo, -1)
    flat_weight = weight.transpose(0, 2, 3, 1).reshape(out_channels, -1)  # (kh, kw, C) order
    centered = rows.astype(np.int64) - op["in_zero_point"]
    acc = _matmul_exact(centered, flat_weight.T) + bias
    hits = None
    if saturation:
        hit, delta = _pair_saturation(rows, flat_weight)
        hits = hit.reshape(n, -1).sum(axis=1)
        if saturation == "emulate":
            acc = acc + delta
    out = _requantize(acc, op, rounding).reshape(n, ho, wo, out_channels).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out), hits


def _linear(codes: np.ndarray, op: dict, arrays: dict, rounding: str, saturation: str | None):
    weight, bias = arrays[op["weight"]], arrays[op["bias"]].astype(np.int64)
    rows = codes.reshape(codes.shape[0], -1)
    acc = _matmul_exact(rows.astype(np.int64) - op["in_zero_point"], weight.T) + bias
    hits = None
    if saturation:
        hit, delta = _pair_saturation(rows, weight)
        hits = hit.sum(axis=1)
        if saturation == "emulate":
            acc = acc + delta
    return _requantize(acc, op, rounding), hits


def _add(a: np.ndarray, b: np.ndarray, op: dict, rounding: str) -> np.ndarray:
    (align_a, align_b), zps = op["align"], op["in_zero_points"]
    total = ((a.astype(np.int64) - zps[0]) << align_a) + ((b.astype(np.int64) - zps[1]) << align_b)
    return _requantize(total, op, rounding)


def _avgpool(codes: np.ndarray, op: dict, rounding: str) -> np.ndarray:
    n, c = codes.shape[:2]
    total = (codes.astype(np.int64) - op["in_zero_point"]).reshape(n, c, -1).sum(axis=2)
    window = codes[0, 0].size
    rescale = op["in_shift"] - op["out_shift"]  # the output grid may be coarser or finer
    if rescale < 0:
        total = total << -rescale
    divisor = window << max(rescale, 0)
    if divisor & (divisor - 1) == 0:
        out = round_shift(total, divisor.bit_length() - 1, rounding)
    else:
        out = round_divide(total, divisor, rounding)
    out = _clamp(out + op["out_zero_point"], op, False)
    return out.astype(np.uint8).reshape(n, c, 1, 1)


def quantize_input(x: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    """The one float step: x * 2**shift is exact in float32; rint rounds half to even; the
    codes are clamped to the op's out_range."""
    scaled = np.rint(np.asarray(x, dtype=np.float32) * np.float32(2.0 ** op["out_shift"]))
    return np.clip(scaled + op["out_zero_point"], *out_range_of(op)).astype(np.uint8)


def run(
    program: IntegerProgram,
    images: np.ndarray,
    rounding: str = "half_even",
    count_saturation: bool = False,
    emulate_avx2: bool = False,
) -> RunResult:
    """Every op's output codes for float images (N, C, H, W).

    `count_saturation`: also count, per image and layer, the outputs an AVX2 CPU without VNNI
    would saturate. `emulate_avx2`: compute what such a CPU computes (each saturated pair
    clipped to int16) instead of the hardware's exact sum; not the hardware: a measurement
    that shows the saturation explains every difference from torch's int8 model there.
    """
    if rounding not in ROUNDING:
        raise ValueError(f"rounding must be one of {ROUNDING}, got {rounding!r}")
    saturation = "emulate" if emulate_avx2 else ("count" if count_saturation else None)
    codes: dict[str, np.ndarray] = {}
    saturated: dict[str, np.ndarray] = {}
    arrays = program.arrays
    for op in program.ops:
        kind = op["op"]
        if kind == "quantize":
            out = quantize_input(images, op)
        elif kind in ("conv", "linear"):
            step = _conv if kind == "conv" else _linear
            out, hits = step(codes[op["input"]], op, arrays, rounding, saturation)
            if hits is not None:
                saturated[op["name"]] = hits
        elif kind == "add":
            out = _add(codes[op["inputs"][0]], codes[op["inputs"][1]], op, rounding)
        elif kind == "avgpool":
            out = _avgpool(codes[op["input"]], op, rounding)
        else:
            raise ValueError(f"unknown op {kind!r} in the integer model")
        codes[op["output"]] = out
    return RunResult(codes, saturated)


def run_batched(
    program: IntegerProgram,
    images: np.ndarray,
    rounding: str = "half_even",
    count_saturation: bool = False,
    batch: int = 64,
    emulate_avx2: bool = False,
) -> RunResult:
    """`run` in slices of `batch` images (bounds the im2col memory), results concatenated."""
    parts = [
        run(program, images[i : i + batch], rounding, count_saturation, emulate_avx2)
        for i in range(0, len(images), batch)
    ]
    codes = {k: np.concatenate([p.codes[k] for p in parts]) for k in parts[0].codes}
    saturated = {k: np.concatenate([p.saturated[k] for p in parts]) for k in parts[0].saturated}
    return RunResult(codes, saturated)
