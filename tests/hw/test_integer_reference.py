"""The integer-only reference computes what torch's int8 model computes, code for code, on
models whose u8 x s8 pair sums cannot saturate int16 (small weights), with snapped biases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from labquant.hw import reference
from labquant.hw.program import IntegerProgram, check_program
from labquant.machine import has_vnni
from labquant.models.resnet import small_resnet
from labquant.quant.eager import workflow
from labquant.quant.eager.backend import EagerBackend
from labquant.quant.eager.integer import integer_program, snap_biases, torch_layer_codes
from labquant.quant.qconfigs import power_of_two


def test_rounding_rules_on_ties() -> None:
    acc = np.arange(-7, 8)
    half_even = reference.round_shift(acc, 1, "half_even")
    half_up = reference.round_shift(acc, 1, "half_up")
    np.testing.assert_array_equal(half_even, np.rint(acc / 2).astype(np.int64))
    np.testing.assert_array_equal(half_up, np.floor(acc / 2 + 0.5).astype(np.int64))
    assert half_even[acc == 5][0] == 2 and half_up[acc == 5][0] == 3
    assert reference.round_shift(np.array([3]), -2)[0] == 12  # a negative shift: left shift
    np.testing.assert_array_equal(
        reference.round_divide(np.array([5, 15, 25, -15]), 10), np.rint([0.5, 1.5, 2.5, -1.5])
    )


def small_weight_net(block: str, seed: int) -> nn.Module:
    """|w| <= 0.2 and BN that does not scale up: int8 weight codes <= 52 at scale 2**-8, so
    255 * (|w0| + |w1|) < 32768 and no pair can saturate on an AVX2 CPU either."""
    torch.manual_seed(seed)
    net = small_resnet(layers=[1, 1], base_width=8, block=block)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data.clamp_(-0.2, 0.2)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.0)
            m.bias.data.uniform_(-0.3, 0.3)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(1.0, 2.0)
    net.fc.weight.data.clamp_(-0.2, 0.2)
    return net


def converted(block: str, activations: str, mode: str, x: torch.Tensor) -> nn.Module:
    backend = EagerBackend()
    spec = power_of_two(activations=activations, snap_bias=True)
    net = small_weight_net(block, seed=len(block) + len(activations))
    if mode == "ptq":
        prepared = backend.prepare_ptq(net, spec, x)
        with torch.no_grad():
            prepared(x)
    else:
        prepared = backend.prepare_qat(net, spec, x)
        backend.freeze_bn_stats(prepared)  # keep the folded weights small
        optimizer = torch.optim.SGD(prepared.parameters(), lr=1e-3)
        for _ in range(2):
            optimizer.zero_grad()
            prepared(x).square().mean().backward()
            optimizer.step()
    # backend.convert also traces TorchScript (seconds); the int8 module is all this needs.
    int8 = workflow.convert_int8(prepared)
    assert snap_biases(int8, x) > 0
    return int8


@pytest.mark.parametrize("mode", ["ptq", "qat"])
@pytest.mark.parametrize("activations", ["symmetric", "unsigned"])
@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_reference_matches_torch_int8_code_for_code(
    block: str, activations: str, mode: str
) -> None:
    torch.manual_seed(1)
    x = torch.randn(8, 3, 8, 8)
    int8 = converted(block, activations, mode, x)
    program = integer_program(int8, (8, 8))
    assert check_program(program) == []
    relu_zero_points = {op["out_zero_point"] for op in program.ops if op.get("relu")}
    assert relu_zero_points == ({0} if activations == "unsigned" else {128})

    names = [op["output"] for op in program.ops]
    torch.backends.quantized.engine = "x86"
    theirs = torch_layer_codes(int8, x, names)
    ours = reference.run(program, x.numpy(), "half_even", count_saturation=True)
    assert sum(int(v.sum()) for v in ours.saturated.values()) == 0
    for name in names:
        np.testing.assert_array_equal(ours.codes[name], theirs[name], err_msg=name)

    # Power-of-two requantization makes ties common: a plain half-up shifter differs.
    half_up = reference.run(program, x.numpy(), "half_up")
    assert any((half_up.codes[n] != theirs[n]).any() for n in names)


def test_program_file_round_trip_and_dtypes(tmp_path) -> None:
    x = torch.randn(4, 3, 8, 8)
    program = integer_program(converted("basic", "symmetric", "ptq", x), (8, 8))
    program.save(tmp_path / "integer_model.npz")
    loaded = IntegerProgram.load(tmp_path / "integer_model.npz")
    assert loaded.ops == program.ops
    assert check_program(loaded) == []
    for op in loaded.ops:
        assert all(
            isinstance(v, int) for k, v in op.items() if k.endswith("shift") and v is not None
        )
        if "weight" in op:
            assert loaded.arrays[op["weight"]].dtype == np.int8
            assert loaded.arrays[op["bias"]].dtype == np.int32
    first = next(op for op in loaded.ops if "weight" in op)
    loaded.arrays[first["weight"]] = loaded.arrays[first["weight"]].astype(np.int16)
    first["shift"] = 1.5
    assert len(check_program(loaded)) == 2


@pytest.mark.skipif(
    has_vnni() or "x86" not in torch.backends.quantized.supported_engines,
    reason="int16 pair saturation exists only on x86 CPUs without VNNI",
)
def test_emulated_pair_saturation_explains_every_difference_from_torch() -> None:
    """Large weights: torch's x86 kernels on an AVX2 CPU clip u8 x s8 pair sums to int16. The
    exact reference then differs from torch, and the reference with that clipping emulated
    matches torch code for code: the saturation is the whole difference."""
    torch.manual_seed(3)
    x = torch.randn(8, 3, 8, 8) * 2
    net = small_resnet(layers=[1, 1], base_width=8)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(2.0, 4.0)  # folded weights near the int8 limit
    backend = EagerBackend()
    prepared = backend.prepare_ptq(net, power_of_two(snap_bias=True), x)
    with torch.no_grad():
        prepared(x)
    int8 = workflow.convert_int8(prepared)
    snap_biases(int8, x)
    program = integer_program(int8, (8, 8))
    names = [op["output"] for op in program.ops]
    torch.backends.quantized.engine = "x86"
    theirs = torch_layer_codes(int8, x, names)
    exact = reference.run(program, x.numpy(), "half_even", count_saturation=True)
    assert sum(int(v.sum()) for v in exact.saturated.values()) > 0
    assert any((exact.codes[n] != theirs[n]).any() for n in names)
    emulated = reference.run(program, x.numpy(), "half_even", emulate_avx2=True)
    for name in names:
        np.testing.assert_array_equal(emulated.codes[name], theirs[name], err_msg=name)
