"""The integer model: what a shift-only accelerator needs, as numpy arrays and one JSON program.

`integer_model.npz` holds, besides the arrays, a key `program.json` (a 0-d unicode array, so
`np.load(path)` works without pickle) with this structure:

    {"format": "labquant-integer-model", "version": 2, "ops": [op, ...]}

Ops run in list order; each names its `output` tensor and its `input` (or `inputs`) tensors.
Every scale is `2**-shift` with an integer `shift`; activations are uint8 codes, weights int8
arrays holding `weight_bits`-bit codes.

- quantize: `codes = clamp(rint_half_even(x * 2**out_shift) + out_zero_point, lo, hi)`, the
  only step that touches floats (x is the float input image).
- conv / linear: `acc = sum((x - in_zero_point) * weight) + bias` (int32; bias quantized at
  `2**-(in_shift + weight_shift)`), `out = clamp(round_shift(acc, shift) + out_zero_point,
  max(out_zero_point, lo) if relu else lo, hi)` with `shift = in_shift + weight_shift -
  out_shift` (positive: right shift with rounding; negative: left shift, flagged `left_shift`).
  Weights are [out, in, kh, kw] (conv) / [out, in] (linear); linear flattens its input.
  `weight_bits` (2..8) bounds the weight codes to `-2**(b-1) .. 2**(b-1) - 1` (still stored
  as int8). Per-channel weight scales: `weight_shift` may be a list (one int per output
  channel); then `shift` is the list `in_shift + weight_shift[c] - out_shift`, applied along
  the output-channel axis, the bias of channel c is quantized at `2**-(in_shift +
  weight_shift[c])`, and the one bool `left_shift` says whether any channel's shift is
  negative.
- add: both operands minus their zero points are aligned to the finer grid with left shifts
  (`align`), summed, then `round_shift(sum, shift) + out_zero_point`, clamp (relu: at
  max(out_zero_point, lo)).
- avgpool (global): `sum(x - in_zero_point)` over the window, divided by the window size and
  rescaled; a power-of-two window is a rounding right shift by `log2(window)`; any other window
  needs a divider (the reference rounds the exact quotient; `window_is_power_of_two` false).

`[lo, hi]` is the op's `out_range` (codes, 0 <= lo <= hi <= 255), which any op that produces
activation codes (quantize, conv, linear, add, avgpool) may carry: a narrower activation width,
e.g. [0, 15] for 4-bit codes. Version 1 files have neither `out_range` nor `weight_bits` and
only integer shifts; an absent key means the old default: `out_range` [0, 255], `weight_bits`
8 (`out_range_of`, `weight_bits_of`). `load` reads both versions; `to_json` writes version 2.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "labquant-integer-model"
VERSION = 2  # what to_json writes
VERSIONS = (1, 2)  # what load reads
PROGRAM_KEY = "program.json"
ACTIVATION_RANGE = (0, 255)
WEIGHT_BITS = (2, 8)  # the allowed weight widths; absent = 8
DTYPES = {"weight": np.int8, "bias": np.int32}


def out_range_of(op: dict[str, Any]) -> tuple[int, int]:
    """The op's output code range `(lo, hi)`; absent (version 1): (0, 255)."""
    lo, hi = op.get("out_range") or ACTIVATION_RANGE
    return int(lo), int(hi)


def weight_bits_of(op: dict[str, Any]) -> int:
    """The op's weight width in bits; absent (version 1): 8."""
    return int(op.get("weight_bits", 8))


def weight_code_range(bits: int) -> tuple[int, int]:
    """The signed codes of a `bits`-bit weight: `-2**(bits-1) .. 2**(bits-1) - 1`."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class IntegerProgram:
    """Ops (JSON-able dicts, in execution order) and the arrays they name."""

    ops: list[dict[str, Any]]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def op(self, name: str) -> dict[str, Any]:
        return next(op for op in self.ops if op["name"] == name)

    @property
    def output(self) -> str:
        return self.ops[-1]["output"]

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, "ops": self.ops}, indent=1)

    def save(self, path: Path) -> None:
        program = np.array(self.to_json())
        np.savez_compressed(path, **{PROGRAM_KEY: program}, **self.arrays)

    @classmethod
    def load(cls, path: Path) -> IntegerProgram:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data[PROGRAM_KEY]))
            arrays = {key: data[key] for key in data.files if key != PROGRAM_KEY}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file")
        if meta.get("version", 1) not in VERSIONS:
            raise ValueError(
                f"{path}: {FORMAT} version {meta.get('version')!r} is not one of {VERSIONS}"
            )
        return cls(meta["ops"], arrays)  # version 1: absent keys take their defaults

    def summary(self) -> list[dict[str, Any]]:
        """One row per op: layer, op, shapes, shifts (an int, or a list per output channel),
        clamp status, weight_bits and out_range where present (for integer_model.json)."""
        rows = []
        for op in self.ops:
            row = {"layer": op["name"], "op": op["op"]}
            for key in ("weight", "bias"):
                if key in op:
                    row[f"{key}_shape"] = list(self.arrays[op[key]].shape)
            keys = ("shift", "left_shift", "relu", "align", "clamp", "window_shift")
            for key in (*keys, "weight_bits", "out_range"):
                if key in op:
                    row[key] = op[key]
            rows.append(row)
        return rows


def check_program(program: IntegerProgram) -> list[str]:
    """What is wrong with a program (empty when every shift is an integer or a list of integers,
    one per output channel, every weight / bias fits its dtype and every weight code its
    `weight_bits`, and every `out_range` is a valid code range); the export refuses to write a
    program with problems."""
    problems = []
    for op in program.ops:
        name = op["name"]
        for key, value in op.items():
            if not key.endswith("shift"):
                continue
            if isinstance(value, list):
                bad = [v for v in value if not _is_int(v)]
                if bad:
                    problems.append(f"{name}.{key}={value!r} holds non-integers {bad!r}")
                if "weight" in op and op["weight"] in program.arrays:
                    channels = program.arrays[op["weight"]].shape[0]
                    if len(value) != channels:
                        problems.append(
                            f"{name}.{key} has {len(value)} entries for {channels} output channels"
                        )
            elif not isinstance(value, (int, bool, type(None))):
                problems.append(f"{name}.{key}={value!r} is not an integer")
        for key, dtype in DTYPES.items():
            if key not in op:
                continue
            array = program.arrays[op[key]]
            info = np.iinfo(dtype)
            if (
                array.dtype != dtype
                or array.min(initial=0) < info.min
                or array.max(initial=0) > info.max
            ):
                problems.append(f"{name}.{key} does not fit {np.dtype(dtype).name}")
        if "weight_bits" in op:
            bits = op["weight_bits"]
            if not _is_int(bits) or not WEIGHT_BITS[0] <= bits <= WEIGHT_BITS[1]:
                problems.append(f"{name}.weight_bits={bits!r} is not an integer in 2..8")
            elif "weight" in op:
                lo, hi = weight_code_range(bits)
                array = program.arrays[op["weight"]]
                if array.min(initial=0) < lo or array.max(initial=0) > hi:
                    problems.append(
                        f"{name}.weight has codes outside [{lo}, {hi}] ({bits}-bit weights): "
                        f"{int(array.min())}..{int(array.max())}"
                    )
        if "out_range" in op:
            value = op["out_range"]
            low, high = ACTIVATION_RANGE
            if not (
                isinstance(value, (list, tuple))
                and len(value) == 2
                and all(_is_int(v) for v in value)
                and low <= value[0] <= value[1] <= high
            ):
                problems.append(
                    f"{name}.out_range={value!r} is not [lo, hi] with {low} <= lo <= hi <= {high}"
                )
    return problems


Codes = tuple[str, int, int]  # (op output name, shift, zero point) of a uint8 tensor


def _with_out_range(op: dict, out_range: tuple[int, int] | list[int] | None) -> dict:
    if out_range is not None:
        lo, hi = out_range
        op["out_range"] = [int(lo), int(hi)]
    return op


def add_op(
    name: str,
    a: Codes,
    b: Codes,
    out: tuple[int, int],
    relu: bool,
    clamp: Any,
    *,
    out_range: tuple[int, int] | list[int] | None = None,
) -> dict:
    """The residual add: both operands aligned to the finer grid, one rounding shift; the
    output clamped to `out_range` (None: absent, i.e. 0..255)."""
    out_shift, out_zp = out
    finest = max(a[1], b[1])
    shift = finest - out_shift
    op = {
        "name": name, "op": "add", "inputs": [a[0], b[0]], "output": name,
        "in_shifts": [a[1], b[1]], "in_zero_points": [a[2], b[2]],
        "align": [finest - a[1], finest - b[1]], "out_shift": out_shift,
        "out_zero_point": out_zp, "shift": shift, "left_shift": shift < 0, "relu": relu,
        "clamp": clamp,
    }  # fmt: skip
    return _with_out_range(op, out_range)


def avgpool_op(
    name: str, source: Codes, window: int, out_range: tuple[int, int] | list[int] | None = None
) -> dict:
    """The global average pool: a sum and a shift by log2(window) (else a flagged divide); the
    output clamped to `out_range` (None: absent, i.e. 0..255)."""
    in_name, shift, zp = source
    power = window & (window - 1) == 0
    op = {
        "name": name, "op": "avgpool", "input": in_name, "output": name,
        "in_shift": shift, "in_zero_point": zp, "out_shift": shift, "out_zero_point": zp,
        "window": window, "window_is_power_of_two": power,
        "window_shift": int(math.log2(window)) if power else None,
    }  # fmt: skip
    return _with_out_range(op, out_range)
