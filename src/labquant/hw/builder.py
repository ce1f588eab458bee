"""The one builder of the integer program (program.py) that every backend's export calls.

A backend reads its converted model (weights, scales, graph order, names) and hands the numbers
to `ProgramBuilder`, which writes the op dicts and arrays of the format: the quantize op, the
conv / linear op (int8 weight codes, per-tensor or per-channel shifts, the int32 bias on its
accumulator grid), the residual add, the global avgpool, and the clamp record (`out_range`,
an output narrower than 0..255). Pure numpy: nothing here knows torch or a backend.

`round_bias_to_int32` also stands alone: a float bias on its grid `2**-grid_shift`, rounded
half to even, refused in one line when it does not fit int32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from labquant.errors import ConfigError
from labquant.hw.program import (
    ACTIVATION_RANGE,
    Codes,
    IntegerProgram,
    _with_out_range,
    add_op,
    avgpool_op,
)

Shift = int | list[int]  # one shift, or one per output channel
INT32_LIMIT = 2**31


def narrowed(code_range: Sequence[int] | None) -> list[int] | None:
    """The clamp record of an output code range: `[lo, hi]` where it is narrower than 0..255,
    None (no `out_range` key) for the full range or no range."""
    if code_range is None:
        return None
    lo, hi = (int(v) for v in code_range)
    return None if (lo, hi) == ACTIVATION_RANGE else [lo, hi]


def channel_shifts(shift: Shift, channels: int) -> np.ndarray:
    """A per-tensor or per-channel shift as one int64 per output channel."""
    return np.broadcast_to(np.asarray(shift, dtype=np.int64), (channels,))


def offset_shift(shift: Shift, offset: int) -> Shift:
    """A per-tensor or per-channel shift plus a common offset, in the same form."""
    return [s + offset for s in shift] if isinstance(shift, list) else shift + offset


def accumulator_shifts(in_shift: int, weight_shift: Shift, channels: int) -> np.ndarray:
    """Each output channel's accumulator grid shift: `in_shift + weight_shift[c]`."""
    return channel_shifts(weight_shift, channels) + in_shift


def round_bias_to_int32(bias: Any, grid_shift: Any, where: str) -> np.ndarray:
    """A float bias as int32 codes on its grid `2**-grid_shift` (an int, or one per channel):
    `rint(bias * 2**grid_shift)`, half to even; a value that does not fit int32 (or is not
    finite) is refused in one line naming `where`."""
    grid = np.asarray(grid_shift, dtype=np.int64)
    rounded = np.rint(np.ldexp(np.asarray(bias, dtype=np.float64), grid))
    if not np.isfinite(rounded).all():
        raise ConfigError(f"{where}: a bias is not finite")
    if (np.abs(rounded) >= INT32_LIMIT).any():
        raise ConfigError(f"{where}: a bias needs more than 32 bits at its accumulator scale")
    return rounded.astype(np.int32)


def quantize_op(name: str, out_shift: int, out_zero_point: int, out_range: Any = None) -> dict:
    """The input quantization (the only op that reads floats)."""
    op = {"name": name, "op": "quantize", "output": name, "out_shift": out_shift,
          "out_zero_point": out_zero_point, "dtype": "uint8"}  # fmt: skip
    return _with_out_range(op, out_range)


@dataclass(frozen=True)
class Conv:
    """A convolution's geometry: stride and padding go into the op; groups and dilation other
    than 1 have no integer op."""

    stride: Sequence[int] = (1, 1)
    padding: Sequence[int] = (0, 0)
    groups: int = 1
    dilation: Sequence[int] = (1, 1)

    def check(self, name: str) -> None:
        if int(self.groups) != 1 or [int(d) for d in self.dilation] != [1, 1]:
            raise ConfigError(f"{name}: grouped or dilated convolutions are not supported")


def int32_bias(bias: Any, bias_shift: int | None, grid: np.ndarray, name: str) -> np.ndarray:
    """The int32 bias of a conv / linear on its per-channel accumulator grid `grid`: None is
    zeros; a float bias (`bias_shift` None) is rounded onto the grid; int32 codes at
    `2**-bias_shift` must already be on it (one grid for every channel)."""
    if bias is None:
        return np.zeros(len(grid), dtype=np.int32)
    if bias_shift is None:
        return round_bias_to_int32(bias, grid, name)
    if len(set(grid.tolist())) != 1:
        raise ConfigError(f"{name}: a per-tensor int32 bias beside per-channel shifts")
    if int(bias_shift) != int(grid[0]):
        raise ConfigError(f"{name}: its int32 bias is not on the accumulator grid")
    return np.asarray(bias).astype(np.int32)


class ProgramBuilder:
    """Ops in execution order and the arrays they name; each method appends one op and returns
    the codes it produces `(output name, shift, zero point)`. `clamp` maps a layer name to its
    recorded clamp status (the `clamp` key of conv / linear / add ops)."""

    def __init__(self, clamp: dict[str, Any] | None = None) -> None:
        self.ops: list[dict[str, Any]] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.clamp = clamp or {}

    def program(self) -> IntegerProgram:
        return IntegerProgram(self.ops, self.arrays)

    def _emit(self, op: dict[str, Any]) -> Codes:
        self.ops.append(op)
        return op["output"], op["out_shift"], op["out_zero_point"]

    def quantize(self, name: str, out: tuple[int, int], out_range: Any = None) -> Codes:
        """The input quantization at `out = (shift, zero point)`."""
        return self._emit(quantize_op(name, out[0], out[1], out_range))

    def matmul(
        self,
        name: str,
        source: Codes,
        weight: Any,
        weight_shift: Shift,
        weight_bits: int,
        out: tuple[int, int],
        *,
        relu: bool,
        bias: Any = None,
        bias_shift: int | None = None,
        conv: Conv | None = None,
        out_range: Any = None,
    ) -> Codes:
        """A conv (`conv` its geometry) or linear (`conv` None) op: `weight` the int8 codes
        [out, in(, kh, kw)] at `2**-weight_shift` (one shift or one per output channel),
        `weight_bits` wide; `bias` a float bias (rounded onto the accumulator grid), int32
        codes at `2**-bias_shift`, or None; the output at `out = (shift, zero point)`."""
        in_name, in_shift, in_zp = source
        out_shift, out_zp = out
        codes = np.asarray(weight).astype(np.int8)
        channels = codes.shape[0]
        grid = accumulator_shifts(in_shift, weight_shift, channels)
        bias_codes = int32_bias(bias, bias_shift, grid, name)
        if conv is not None:
            conv.check(name)
        shift = offset_shift(weight_shift, in_shift - out_shift)
        self.arrays[f"{name}.weight"] = codes
        self.arrays[f"{name}.bias"] = bias_codes
        op: dict[str, Any] = {
            "name": name, "op": "linear" if conv is None else "conv", "input": in_name,
            "output": name, "weight": f"{name}.weight", "bias": f"{name}.bias",
            "in_shift": in_shift, "in_zero_point": in_zp, "weight_shift": weight_shift,
            "weight_zero_point": 0, "weight_bits": int(weight_bits), "out_shift": out_shift,
            "out_zero_point": out_zp, "shift": shift,
            "left_shift": bool((channel_shifts(shift, channels) < 0).any()), "relu": bool(relu),
            "clamp": self.clamp.get(name),
        }  # fmt: skip
        _with_out_range(op, out_range)
        if conv is not None:
            op["stride"] = [int(s) for s in conv.stride]
            op["padding"] = [int(p) for p in conv.padding]
        return self._emit(op)

    def add(
        self, name: str, a: Codes, b: Codes, out: tuple[int, int], relu: bool, out_range: Any = None
    ) -> Codes:
        """The residual add of two codes tensors, its output at `out = (shift, zero point)`."""
        return self._emit(add_op(name, a, b, out, relu, self.clamp.get(name), out_range=out_range))

    def avgpool(self, name: str, source: Codes, window: int, out_range: Any = None) -> Codes:
        """The global average pool over `window` positions (output at the input's qparams)."""
        return self._emit(avgpool_op(name, source, window, out_range=out_range))
