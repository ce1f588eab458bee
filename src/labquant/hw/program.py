"""The integer model: what a shift-only accelerator needs, as numpy arrays and one JSON program.

`integer_model.npz` holds, besides the arrays, a key `program.json` (a 0-d unicode array, so
`np.load(path)` works without pickle) with this structure:

    {"format": "labquant-integer-model", "version": 1, "ops": [op, ...]}

Ops run in list order; each names its `output` tensor and its `input` (or `inputs`) tensors.
Every scale is `2**-shift` with an integer `shift`; activations are uint8 codes, weights int8.

- quantize: `codes = clamp(rint_half_even(x * 2**out_shift) + out_zero_point, 0, 255)`, the
  only step that touches floats (x is the float input image).
- conv / linear: `acc = sum((x - in_zero_point) * weight) + bias` (int32; bias quantized at
  `2**-(in_shift + weight_shift)`), `out = clamp(round_shift(acc, shift) + out_zero_point,
  out_zero_point if relu else 0, 255)` with `shift = in_shift + weight_shift - out_shift`
  (positive: right shift with rounding; negative: left shift, flagged `left_shift`).
  Weights are [out, in, kh, kw] (conv) / [out, in] (linear); linear flattens its input.
- add: both operands minus their zero points are aligned to the finer grid with left shifts
  (`align`), summed, then `round_shift(sum, shift) + out_zero_point`, clamp (relu: at the
  zero point).
- avgpool (global): `sum(x - in_zero_point)` over the window, divided by the window size and
  rescaled; a power-of-two window is a rounding right shift by `log2(window)`; any other window
  needs a divider (the reference rounds the exact quotient; `window_is_power_of_two` false).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "labquant-integer-model"
PROGRAM_KEY = "program.json"
ACTIVATION_RANGE = (0, 255)
DTYPES = {"weight": np.int8, "bias": np.int32}


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
        return json.dumps({"format": FORMAT, "version": 1, "ops": self.ops}, indent=1)

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
        return cls(meta["ops"], arrays)

    def summary(self) -> list[dict[str, Any]]:
        """One row per op: layer, op, shapes, shift, clamp status (for integer_model.json)."""
        rows = []
        for op in self.ops:
            row = {"layer": op["name"], "op": op["op"]}
            for key in ("weight", "bias"):
                if key in op:
                    row[f"{key}_shape"] = list(self.arrays[op[key]].shape)
            for key in ("shift", "left_shift", "relu", "align", "clamp", "window_shift"):
                if key in op:
                    row[key] = op[key]
            rows.append(row)
        return rows


def check_program(program: IntegerProgram) -> list[str]:
    """What is wrong with a program (empty when every shift is an integer and every weight /
    bias fits its dtype); the export refuses to write a program with problems."""
    problems = []
    for op in program.ops:
        for key, value in op.items():
            if key.endswith("shift") and not isinstance(value, (int, bool, type(None))):
                problems.append(f"{op['name']}.{key}={value!r} is not an integer")
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
                problems.append(f"{op['name']}.{key} does not fit {np.dtype(dtype).name}")
    return problems


Codes = tuple[str, int, int]  # (op output name, shift, zero point) of a uint8 tensor


def add_op(name: str, a: Codes, b: Codes, out: tuple[int, int], relu: bool, clamp: Any) -> dict:
    """The residual add: both operands aligned to the finer grid, one rounding shift."""
    out_shift, out_zp = out
    finest = max(a[1], b[1])
    shift = finest - out_shift
    return {
        "name": name, "op": "add", "inputs": [a[0], b[0]], "output": name,
        "in_shifts": [a[1], b[1]], "in_zero_points": [a[2], b[2]],
        "align": [finest - a[1], finest - b[1]], "out_shift": out_shift,
        "out_zero_point": out_zp, "shift": shift, "left_shift": shift < 0, "relu": relu,
        "clamp": clamp,
    }  # fmt: skip


def avgpool_op(name: str, source: Codes, window: int) -> dict:
    """The global average pool: a sum and a shift by log2(window) (else a flagged divide)."""
    in_name, shift, zp = source
    power = window & (window - 1) == 0
    return {
        "name": name, "op": "avgpool", "input": in_name, "output": name,
        "in_shift": shift, "in_zero_point": zp, "out_shift": shift, "out_zero_point": zp,
        "window": window, "window_is_power_of_two": power,
        "window_shift": int(math.log2(window)) if power else None,
    }  # fmt: skip
