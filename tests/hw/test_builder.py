"""The one integer-op builder (hw/builder.py) on hand-made arrays: the ops both backends' exports
write, the int32 bias rounding and its one-line overflow error, per-channel shifts, the clamp
record."""

from __future__ import annotations

import numpy as np
import pytest

from labquant.errors import ConfigError
from labquant.hw import reference
from labquant.hw.builder import (
    Conv,
    ProgramBuilder,
    accumulator_shifts,
    narrowed,
    round_bias_to_int32,
)
from labquant.hw.program import IntegerProgram, check_program


def test_bias_rounds_half_to_even_on_its_grid() -> None:
    # 2**-3 grid: 0.0625 * 8 = 0.5 -> 0, 0.1875 * 8 = 1.5 -> 2, -0.3125 * 8 = -2.5 -> -2
    bias = np.array([0.0625, 0.1875, -0.3125, 1.0], dtype=np.float32)
    codes = round_bias_to_int32(bias, 3, "fc")
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, [0, 2, -2, 8])


def test_bias_rounds_per_channel_grids() -> None:
    grid = accumulator_shifts(4, [1, 2, 3], 3)  # in_shift 4 + each channel's weight shift
    np.testing.assert_array_equal(grid, [5, 6, 7])
    codes = round_bias_to_int32(np.full(3, 0.25), grid, "conv1")
    np.testing.assert_array_equal(codes, [8, 16, 32])
    np.testing.assert_array_equal(accumulator_shifts(4, 2, 3), [6, 6, 6])


def test_a_bias_over_int32_is_one_line_naming_the_layer() -> None:
    round_bias_to_int32(np.array([2.0**31 - 1]), 0, "ok")  # the largest int32 fits
    for value in (2.0**31, -(2.0**31)):
        with pytest.raises(ConfigError) as caught:
            round_bias_to_int32(np.array([0.0, value]), 0, "layer1.0.conv2")
        message = str(caught.value)
        assert message.startswith("layer1.0.conv2: a bias needs more than 32 bits")
        assert "\n" not in message
    with pytest.raises(ConfigError, match=r"^fc: a bias is not finite"):
        round_bias_to_int32(np.array([np.nan]), 0, "fc")


def test_narrowed_records_only_a_range_below_full() -> None:
    assert narrowed(None) is None
    assert narrowed((0, 255)) is None
    assert narrowed((0, 15)) == [0, 15]
    assert narrowed([np.int64(2), np.int64(200)]) == [2, 200]


def small_program() -> IntegerProgram:
    """quantize -> conv (per-channel shifts, 4-bit weights, float bias) -> avgpool -> add ->
    linear (per-tensor shift, int32 bias codes)."""
    build = ProgramBuilder({"conv": "ok"})
    x = build.quantize("quant", (4, 0), narrowed((0, 255)))
    weight = np.array([[[[1]], [[-2]]], [[[7]], [[-8]]]], dtype=np.int64)  # [2, 2, 1, 1]
    conv = build.matmul("conv", x, weight, [2, 3], 4, (3, 0), relu=True,
                        bias=np.array([0.25, -0.5]), conv=Conv(), out_range=(0, 15))  # fmt: skip
    pool = build.avgpool("pool", conv, 4, out_range=narrowed((0, 15)))
    add = build.add("add", pool, pool, (3, 0), relu=False)
    fc = np.array([[1, -1], [2, 0]], dtype=np.int8)
    build.matmul("fc", add, fc, 5, 8, (2, 0), relu=False, bias=np.array([32, -32]),
                 bias_shift=8)  # fmt: skip
    return build.program()


def test_the_conv_op_holds_per_channel_shifts_and_its_bias_on_each_grid() -> None:
    program = small_program()
    assert [op["op"] for op in program.ops] == ["quantize", "conv", "avgpool", "add", "linear"]
    assert check_program(program) == []
    assert "out_range" not in program.op("quant")
    conv = program.op("conv")
    assert conv["weight_shift"] == [2, 3] and conv["shift"] == [3, 4]
    assert conv["left_shift"] is False and conv["relu"] is True and conv["clamp"] == "ok"
    assert conv["weight_bits"] == 4 and conv["out_range"] == [0, 15]
    assert (conv["stride"], conv["padding"]) == ([1, 1], [0, 0])
    np.testing.assert_array_equal(program.arrays["conv.bias"], [16, -64])  # grids 2**-6, 2**-7
    assert program.arrays["conv.weight"].dtype == np.int8
    assert program.op("pool")["out_range"] == [0, 15]
    fc = program.op("fc")
    assert fc["op"] == "linear" and "stride" not in fc and fc["clamp"] is None
    assert fc["shift"] == 6 and fc["left_shift"] is False
    np.testing.assert_array_equal(program.arrays["fc.bias"], [32, -32])
    codes = reference.run(program, np.random.default_rng(0).normal(size=(2, 2, 2, 2)))
    assert codes.logits.shape == (2, 2)


def test_a_negative_channel_shift_flags_the_op_left_shift() -> None:
    build = ProgramBuilder()
    x = build.quantize("quant", (0, 0))
    build.matmul("fc", x, np.ones((2, 3)), [1, 4], 8, (3, 0), relu=False)
    op = build.program().op("fc")
    assert op["shift"] == [-2, 1] and op["left_shift"] is True
    np.testing.assert_array_equal(build.arrays["fc.bias"], [0, 0])  # no bias: zeros


def test_int32_bias_codes_must_sit_on_the_accumulator_grid() -> None:
    build = ProgramBuilder()
    x = build.quantize("quant", (4, 0))
    bias = np.zeros(2, dtype=np.int32)
    with pytest.raises(ConfigError, match="fc: its int32 bias is not on the accumulator grid"):
        build.matmul("fc", x, np.ones((2, 3)), 2, 8, (3, 0), relu=False, bias=bias, bias_shift=5)
    with pytest.raises(ConfigError, match="fc: a per-tensor int32 bias beside per-channel"):
        build.matmul("fc", x, np.ones((2, 3)), [2, 3], 8, (3, 0), relu=False, bias=bias,
                     bias_shift=6)  # fmt: skip


def test_grouped_or_dilated_convolutions_are_refused() -> None:
    build = ProgramBuilder()
    x = build.quantize("quant", (4, 0))
    weight = np.ones((2, 1, 3, 3))
    for conv in (Conv(groups=2), Conv(dilation=(2, 2))):
        with pytest.raises(ConfigError, match="conv1: grouped or dilated convolutions"):
            build.matmul("conv1", x, weight, 2, 8, (3, 0), relu=False, conv=conv)
