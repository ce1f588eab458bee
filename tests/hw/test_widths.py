"""Low bit widths and per-channel weight shifts in the integer program (format version 2): the
array round_shift, per-channel requantization, out_range clamps, weight_bits checks, and
version 1 files still loading and running as before. Tiny hand-built programs, numpy only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from labquant.hw import reference
from labquant.hw.program import (
    PROGRAM_KEY,
    IntegerProgram,
    add_op,
    avgpool_op,
    check_program,
)


def half_even_divide(num: np.ndarray, den: int) -> np.ndarray:
    """num / den rounded half to even, with integer numpy arithmetic only (den > 0)."""
    floor, rest = np.divmod(np.asarray(num, dtype=np.int64), den)
    return floor + ((2 * rest > den) | ((2 * rest == den) & (floor % 2 == 1)))


def quantize(out_shift: int, zp: int = 0, **extra) -> dict:
    return {"name": "q", "op": "quantize", "output": "q", "out_shift": out_shift,
            "out_zero_point": zp, **extra}  # fmt: skip


def layer(kind: str, name: str, source: str, io: tuple, weight_shift, relu=False, **extra):
    """A 1x1 conv (stride 1, no padding) or a linear op; io: in_shift, in_zp, out_shift, out_zp."""
    in_shift, in_zp, out_shift, out_zp = io
    if isinstance(weight_shift, list):
        shift = [in_shift + w - out_shift for w in weight_shift]
        left = any(s < 0 for s in shift)
    else:
        shift = in_shift + weight_shift - out_shift
        left = shift < 0
    op = {"name": name, "op": kind, "input": source, "output": name,
          "weight": f"{name}.weight", "bias": f"{name}.bias", "in_shift": in_shift,
          "in_zero_point": in_zp, "weight_shift": weight_shift, "weight_zero_point": 0,
          "out_shift": out_shift, "out_zero_point": out_zp, "shift": shift, "left_shift": left,
          "relu": relu, **extra}  # fmt: skip
    if kind == "conv":
        op["stride"], op["padding"] = [1, 1], [0, 0]
    return op


def arrays(name: str, weight, bias) -> dict[str, np.ndarray]:
    return {
        f"{name}.weight": np.array(weight, dtype=np.int8),
        f"{name}.bias": np.array(bias, dtype=np.int32),
    }


@pytest.mark.parametrize("rounding", ["half_even", "half_up"])
def test_array_round_shift_equals_the_scalar_shift_per_channel(rounding: str) -> None:
    acc = np.arange(-40, 41).reshape(-1, 1) * np.ones((1, 7), dtype=np.int64)  # every tie
    shifts = np.array([-2, 0, 1, 2, 3, -1, 5])
    per_channel = reference.round_shift(acc, shifts, rounding)
    assert per_channel.dtype == np.int64
    for c, s in enumerate(shifts):
        expected = reference.round_shift(acc[:, c], int(s), rounding)
        np.testing.assert_array_equal(per_channel[:, c], expected, err_msg=f"shift {s}")
    np.testing.assert_array_equal(reference.round_shift(acc, list(shifts), rounding), per_channel)
    # ties, spelled out: 5 >> 1 and -5 >> 1, 12 >> 3 (1.5), -4 >> 3 (-0.5), a left shift, none
    got = reference.round_shift(np.array([[5, -5, 12, -4, 3, 7]]), [1, 1, 3, 3, -2, 0], rounding)
    want = [2, -2, 2, 0, 12, 7] if rounding == "half_even" else [3, -2, 2, 0, 12, 7]
    np.testing.assert_array_equal(got[0], want)


def per_channel_program() -> IntegerProgram:
    """quantize (shift 2) -> 1x1 conv, 2 channels, weight_shift [1, 3] -> linear, 2 outputs."""
    ops = [
        quantize(2),
        layer("conv", "conv", "q", (2, 0, 2, 10), [1, 3]),  # shift [1, 3]
        layer("linear", "fc", "conv", (2, 10, 1, 0), 0),  # shift 1
    ]
    fc_weight = [[1, -1, 2, 0, 1, 1, -2, 3], [0, 2, 1, -1, -3, 1, 0, 1]]
    return IntegerProgram(
        ops, {**arrays("conv", [[[[3]]], [[[-2]]]], [1, -4]), **arrays("fc", fc_weight, [3, -6])}
    )


def test_per_channel_program_matches_a_hand_computation() -> None:
    program = per_channel_program()
    assert check_program(program) == []
    x = np.array([0.75, 1.25, 2.0, 3.0], dtype=np.float32).reshape(1, 1, 2, 2)
    result = reference.run(program, x)

    q = np.array([3, 5, 8, 12])  # rint(x * 4), (h, w) order
    np.testing.assert_array_equal(result.codes["q"].reshape(-1), q)
    acc0, acc1 = 3 * q + 1, -2 * q - 4  # [10, 16, 25, 37], [-10, -14, -20, -28]
    conv0 = half_even_divide(acc0, 2) + 10  # shift 1: 12.5 -> 12, 18.5 -> 18
    conv1 = half_even_divide(acc1, 8) + 10  # shift 3: -2.5 -> -2, -3.5 -> -4
    np.testing.assert_array_equal(conv0, [15, 18, 22, 28])
    np.testing.assert_array_equal(conv1, [9, 8, 8, 6])
    np.testing.assert_array_equal(
        result.codes["conv"], np.stack([conv0, conv1]).reshape(1, 2, 2, 2)
    )

    flat = np.concatenate([conv0, conv1]) - 10  # linear flattens (C, H, W)
    w = np.array([[1, -1, 2, 0, 1, 1, -2, 3], [0, 2, 1, -1, -3, 1, 0, 1]])
    acc = w @ flat + np.array([3, -6])
    fc = np.clip(half_even_divide(acc, 2), 0, 255)
    np.testing.assert_array_equal(result.codes["fc"], fc.reshape(1, 2))

    # half_up differs on the conv's ties (12.5 -> 13, -3.5 -> -3)
    up = reference.run(program, x, "half_up").codes["conv"].reshape(2, -1)
    np.testing.assert_array_equal(up, [[15, 18, 23, 29], [9, 8, 8, 7]])


def test_linear_per_channel_shift_and_negative_shift() -> None:
    op = layer("linear", "fc", "q", (0, 0, 1, 0), [-1, 0, 3])  # shift [-2, -1, 2]
    program = IntegerProgram([quantize(0), op], arrays("fc", [[1], [3], [5]], [0, 0, 0]))
    assert op["left_shift"] and check_program(program) == []
    x = np.array([[3.0], [6.0]], dtype=np.float32)  # codes 3, 6
    got = reference.run(program, x).codes["fc"]
    # acc = [[3, 9, 15], [6, 18, 30]]: << 2, << 1, round(/ 4): 3.75 -> 4, 7.5 -> 8
    np.testing.assert_array_equal(got, [[12, 18, 4], [24, 36, 8]])


def test_out_range_clamps_and_relu_clamps_low_at_the_zero_point() -> None:
    x = np.array([[0.0], [-1.0]], dtype=np.float32)  # codes 100, 99
    ops = [quantize(0, 100), layer("linear", "fc", "q", (0, 0, 0, 0), 0, out_range=[0, 15])]
    program = IntegerProgram(ops, arrays("fc", [[2]], [0]))
    assert check_program(program) == []
    plain = IntegerProgram([ops[0], layer("linear", "fc", "q", (0, 0, 0, 0), 0)], program.arrays)
    np.testing.assert_array_equal(reference.run(plain, x).codes["fc"], [[200], [198]])
    np.testing.assert_array_equal(reference.run(program, x).codes["fc"], [[15], [15]])

    # relu with zero point 8: 4-bit codes clamp low at 8 (and at lo when lo is above it)
    for lo, low in ((0, 8), (10, 10)):
        op = layer("linear", "fc", "q", (0, 100, 0, 8), 0, relu=True, out_range=[lo, 15])
        program = IntegerProgram([quantize(0, 100), op], arrays("fc", [[1]], [0]))
        codes = np.array([[-50.0], [-3.0], [1.0], [4.0], [20.0]], dtype=np.float32)
        got = reference.run(program, codes).codes["fc"][:, 0]
        np.testing.assert_array_equal(got, np.clip([-42, 5, 9, 12, 28], low, 15))

    # the input quantization, add and avgpool clamp too
    program = IntegerProgram([quantize(0, 0, out_range=[2, 15])])
    got = reference.run(program, np.array([-5.0, 7.0, 200.0], dtype=np.float32)).codes["q"]
    np.testing.assert_array_equal(got, [2, 7, 15])
    add = add_op("add", ("q", 0, 0), ("q", 0, 0), (0, 0), False, None, out_range=[0, 15])
    pool = avgpool_op("pool", ("q", 0, 0), 4, out_range=(0, 15))
    assert add["out_range"] == pool["out_range"] == [0, 15]
    assert "out_range" not in avgpool_op("pool", ("q", 0, 0), 4)
    assert "out_range" not in add_op("a", ("q", 0, 0), ("q", 0, 0), (0, 0), False, None)
    x = np.array([3.0, 9.0, 12.0, 40.0], dtype=np.float32).reshape(1, 1, 2, 2)
    codes = reference.run(IntegerProgram([quantize(0), add, pool]), x).codes
    np.testing.assert_array_equal(codes["add"].reshape(-1), [6, 15, 15, 15])
    np.testing.assert_array_equal(codes["pool"].reshape(-1), [15])  # 64 / 4 = 16 -> 15


def test_check_program_flags_weight_codes_outside_weight_bits() -> None:
    def program(weight: list[int], **extra) -> IntegerProgram:
        op = layer("linear", "fc", "q", (0, 0, 0, 0), 0, **extra)
        return IntegerProgram([quantize(0), op], arrays("fc", [weight], [0]))

    assert check_program(program([7, -8, 0], weight_bits=4)) == []
    problems = check_program(program([7, 8, -8], weight_bits=4))
    assert len(problems) == 1 and "fc" in problems[0] and "[-8, 7]" in problems[0]
    assert len(check_program(program([-9], weight_bits=4))) == 1
    assert check_program(program([127, -128])) == []  # absent: 8 bits
    assert len(check_program(program([1], weight_bits=9))) == 1
    assert len(check_program(program([1], out_range=[0, 256]))) == 1
    assert len(check_program(program([1], out_range=[9, 8]))) == 1
    assert check_program(program([1], out_range=[3, 3])) == []

    good = per_channel_program()
    good.op("conv")["weight_shift"] = [1, 2.5]
    good.op("conv")["shift"] = [1, 2.5]
    problems = check_program(good)
    assert len(problems) == 2 and all("non-integer" in p for p in problems)
    good.op("conv")["weight_shift"] = [1, 3, 0]  # 3 entries for 2 channels
    good.op("conv")["shift"] = [1, 3]
    assert len(check_program(good)) == 1


def test_summary_and_version_2_round_trip(tmp_path) -> None:
    program = per_channel_program()
    program.op("conv")["weight_bits"] = 4
    program.op("conv")["out_range"] = [0, 15]
    rows = {row["layer"]: row for row in program.summary()}
    assert rows["conv"]["shift"] == [1, 3]
    assert rows["conv"]["weight_bits"] == 4 and rows["conv"]["out_range"] == [0, 15]
    assert "weight_bits" not in rows["fc"] and "out_range" not in rows["fc"]
    assert json.loads(program.to_json())["version"] == 2
    program.save(tmp_path / "m.npz")
    loaded = IntegerProgram.load(tmp_path / "m.npz")
    assert loaded.ops == program.ops and check_program(loaded) == []


def test_version_1_program_still_loads_and_runs(tmp_path) -> None:
    ops = [quantize(1, 0), layer("conv", "conv", "q", (1, 0, 1, 3), 2, relu=True)]  # shift 2
    meta = {"format": "labquant-integer-model", "version": 1, "ops": ops}
    path = tmp_path / "v1.npz"
    np.savez_compressed(
        path, **{PROGRAM_KEY: np.array(json.dumps(meta))}, **arrays("conv", [[[[5]]]], [-2])
    )
    program = IntegerProgram.load(path)
    assert program.ops == ops and check_program(program) == []
    x = np.array([0.0, 1.0, 1.5, 30.0, 200.0], dtype=np.float32).reshape(1, 1, 1, 5)
    got = reference.run(program, x).codes
    q = np.array([0, 2, 3, 60, 255])  # rint(x * 2), clamped to 0..255
    np.testing.assert_array_equal(got["q"].reshape(-1), q)
    conv = np.clip(half_even_divide(5 * q - 2, 4) + 3, 3, 255)  # relu: clamp at zero point 3
    np.testing.assert_array_equal(conv, [3, 5, 6, 77, 255])
    np.testing.assert_array_equal(got["conv"].reshape(-1), conv)

    meta["version"] = 3
    np.savez_compressed(path, **{PROGRAM_KEY: np.array(json.dumps(meta))})
    with pytest.raises(ValueError, match="version"):
        IntegerProgram.load(path)
