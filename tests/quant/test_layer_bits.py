"""Per-layer widths (`qconfig.layer_bits`) on both backends, and the cost measures every stage
records beside accuracy (BitOps, packed size)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labquant.errors import ConfigError
from labquant.hw.program import check_program
from labquant.quant.layers import packed_bytes, quantizable_layers, total_bitops
from labquant.quant.plan import build_plan
from labquant.quant.pot import code_range
from labquant.quant.qconfigs import power_of_two
from labquant.quant.scheme import PowerOfTwo
from tests.hw.test_integer_reference import small_weight_net
from tests.quant.test_pot_design import calibrated

LAYER_BITS = {"layer1.*": {"weight": 4}, "layer2.0.conv1": {"weight": 2, "activation": 4}}
NARROWED = {"layer1.0.conv1": (4, 8), "layer1.0.conv2": (4, 8), "layer2.0.conv1": (2, 4)}


def test_layer_bits_applies_its_entries_in_order_over_the_defaults():
    spec = power_of_two(weight_bits=6, layer_bits={"layer1.*": {"weight": 4}, "*.conv2": {
        "activation": 5}})  # fmt: skip
    plan = build_plan(spec)
    assert plan.layer("conv1").widths == (6, 8)
    assert plan.layer("layer1.0.conv2").widths == (4, 5)
    assert spec.describe()["layer_bits"] == {"layer1.*": {"weight": 4}, "*.conv2": {
        "activation": 5}}  # fmt: skip


@pytest.mark.parametrize(
    ("layer_bits", "needle"),
    [
        ({"layer9.conv1": {"weight": 4}}, "'layer9.conv1', which names no layer of this model"),
        ({"fc": {"weight": 9}}, "qconfig.layer_bits.fc.weight=9 must be an integer in 2..8"),
        ({"fc": {"wieght": 4}}, "qconfig.layer_bits.fc must set weight and/or activation bits"),
        ({"fc": {}}, "qconfig.layer_bits.fc must set weight and/or activation bits"),
    ],
)
def test_bad_layer_bits_is_one_line_naming_the_fix(layer_bits, needle):
    layers = quantizable_layers(small_weight_net("basic", seed=3))
    with pytest.raises(ConfigError) as caught:
        power_of_two(layer_bits=layer_bits).check_layers(layers)
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    if "names no layer" in needle:
        assert "its layers are conv1, layer1.0.conv1" in str(caught.value)


@pytest.mark.parametrize("backend_name", ["eager", "pt2e"])
def test_layer_bits_reaches_the_right_modules(tmp_path, backend_name):
    """Read back from the saved int8 model (the integer export loads it): each named layer's
    weight codes and output codes at its own widths, every other layer at 8 bits."""
    torch.manual_seed(1)
    x = torch.randn(24, 3, 8, 8)
    spec = power_of_two(layer_bits=LAYER_BITS, range="mse")
    backend, net, prepared, int8 = calibrated(backend_name, spec, x)
    rows = {row["name"]: row for row in backend.layer_table(net, prepared, int8, x[:8])}
    saved = backend.save(int8, tmp_path)
    program = backend.integer_export(net, spec, tmp_path, saved, (8, 8)).program
    assert check_program(program) == []
    for op in program.ops:
        if op["op"] not in ("conv", "linear"):
            continue
        weight_bits, activation_bits = NARROWED.get(op["name"], (8, 8))
        weights = program.arrays[op["weight"]]
        qmin, qmax = code_range(weight_bits, signed=True)
        assert op["weight_bits"] == weight_bits, op["name"]
        assert qmin <= weights.min() and weights.max() <= qmax, op["name"]
        if weight_bits == 8:
            assert abs(int(weights.min())) > 8 or int(weights.max()) > 7, op["name"]
        assert op.get("out_range", [0, 255]) == [0, 2**activation_bits - 1], op["name"]
        assert rows[op["name"]]["bits"] == {"weight": weight_bits, "activation": activation_bits}
    # The layer after a 4-bit output reads 4-bit codes: its BitOps count 4 input bits.
    assert rows["layer2.0.conv2"]["input_bits"] == 4
    assert rows["layer2.0.downsample.0"]["input_bits"] == 8


def conv_output(size: int, conv: nn.Conv2d) -> int:
    return (size + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1


def test_bitops_and_packed_size_equal_hand_computed_values():
    """BitOps = multiply-accumulates x weight bits x input bits, from the convolutions' shapes
    (8x8 images; every layer reads 8-bit codes except the one after layer2.0.conv1's 4-bit
    output); packed bytes: weights at their width, int32 biases, one-byte shifts."""
    torch.manual_seed(1)
    x = torch.randn(16, 3, 8, 8)
    spec = power_of_two(layer_bits=LAYER_BITS)
    backend, net, prepared, int8 = calibrated("eager", spec, x)
    layers = backend.layer_table(net, prepared, int8, x[:8])
    # Each conv's input size: 8x8 up to layer2, whose stride-2 conv1 / downsample halve it.
    inputs = {"conv1": 8, "layer1.0.conv1": 8, "layer1.0.conv2": 8, "layer2.0.conv1": 8,
              "layer2.0.conv2": 4, "layer2.0.downsample.0": 8}  # fmt: skip
    expected_bitops = expected_bytes = 0
    for name, module in net.named_modules():
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        weight_bits = NARROWED.get(name, (8, 8))[0]
        input_bits = 4 if name == "layer2.0.conv2" else 8
        if isinstance(module, nn.Linear):
            macs = module.in_features * module.out_features
        else:
            size = conv_output(inputs[name], module)
            macs = size * size * module.weight.numel()
        expected_bitops += macs * weight_bits * input_bits
        channels = module.weight.shape[0]
        expected_bytes += -(-module.weight.numel() * weight_bits // 8) + 4 * channels + 1 + 2
    assert total_bitops(layers) == expected_bitops
    assert sum(packed_bytes(row, PowerOfTwo(), False) for row in layers) == expected_bytes
