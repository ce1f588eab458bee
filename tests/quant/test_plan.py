"""The quantization plan (quant/plan.py): one description per quantized tensor, built from a
qconfig once, and both backends realising it with the scales they gave before the plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from labquant.errors import ConfigError
from labquant.quant.eager.backend import EagerBackend
from labquant.quant.plan import TensorPlan, build_plan
from labquant.quant.pt2e.backend import PT2EBackend
from labquant.quant.scheme import FloatScale, PowerOfTwo
from tests.conftest import qconfig_spec
from tests.hw.test_integer_reference import small_weight_net

LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "fc"]
POT = PowerOfTwo(8)
# Scales, zero points and widths per layer that both backends gave for this network before the
# plan existed (tests/quant/data/plan_scales.json, written by the pre-plan code).
GOLDEN = json.loads((Path(__file__).parent / "data" / "plan_scales.json").read_text())


def weight(bits: int, granularity: str = "per_tensor", **rest: object) -> TensorPlan:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    axis = 0 if granularity == "per_channel" else None
    fields = {"exponent": "round", "range_method": "minmax", "percentile": 99.99} | rest
    return TensorPlan("weight", POT, bits, low, high, True, 0, granularity, axis, **fields)


def activation(bits: int, zero_point: int | None = None, **rest: object) -> TensorPlan:
    zero_point = 2 ** (bits - 1) if zero_point is None else zero_point
    fields = {"exponent": "round", "range_method": "minmax", "percentile": 99.99} | rest
    return TensorPlan("activation", POT, bits, 0, 2**bits - 1, False, zero_point, **fields)


def test_pot_plans_eight_bit_symmetric_tensors_with_int32_biases():
    plan = build_plan(qconfig_spec("pot"), LAYERS)
    layer = plan.layer("layer1.0.conv1")
    assert layer.weight == weight(8)
    assert layer.output == layer.relu_output == activation(8)
    assert (layer.bias.bits, layer.bias.quant_min, layer.bias.quant_max) == (
        32,
        -(2**31),
        2**31 - 1,
    )
    assert plan.scheme == POT and plan.snap_bias and not plan.has_layer_widths


def test_pot_w4a8_pc_with_layer_bits_plans_each_layer_once():
    spec = qconfig_spec(
        "pot_w4a8_pc", layer_bits={"layer1.*": {"weight": 6}, "fc": {"activation": 4}}
    )
    plan = build_plan(spec, LAYERS)
    mse = {"range_method": "mse"}
    assert plan.layer("conv1").weight == weight(4, "per_channel", **mse)
    assert plan.layer("layer1.0.conv2").weight == weight(6, "per_channel", **mse)
    assert plan.layer("layer1.0.conv2").output == activation(8, **mse)
    assert plan.layer("fc").widths == (4, 4) and plan.layer("fc").output == activation(4, **mse)
    assert plan.layer("layer2.0.conv1") is plan.default
    assert set(plan.layers) == {"layer1.0.conv1", "layer1.0.conv2", "fc"}
    assert plan.layer("layer1.0.conv1").bias.axis == 0  # one grid per channel
    tensors = plan.tensors(["fc"])
    assert set(tensors) == {"fc.weight", "fc.bias", "fc.output"}


def test_pot_w4a4_plans_unsigned_post_relu_outputs():
    plan = build_plan(qconfig_spec("pot_w4a4"), LAYERS)
    layer = plan.layer("conv1")
    assert layer.widths == (4, 4)
    assert layer.relu_output.unsigned and layer.relu_output.code_range == (0, 15)
    assert layer.output.zero_point == 8 and not layer.output.unsigned


def test_x86_plans_the_engines_float_grid():
    plan = build_plan(qconfig_spec("x86"), LAYERS)
    layer = plan.default
    assert plan.scheme == FloatScale() and not plan.scheme.integer_program
    assert layer.weight.granularity == "per_channel" and layer.weight.code_range == (-128, 127)
    assert layer.output.zero_point is None and layer.output.code_range == (0, 255)
    assert not plan.snap_bias and layer.weight.exponent is None


def test_a_layer_bits_entry_that_names_no_layer_is_refused_by_the_plan():
    with pytest.raises(ConfigError, match=r"qconfig\.layer_bits has 'layer9\.\*'"):
        build_plan(qconfig_spec("pot", layer_bits={"layer9.*": {"weight": 4}}), LAYERS)


@pytest.mark.parametrize("backend_name", ["eager", "pt2e"])
@pytest.mark.parametrize("qconfig", ["pot_w4a8_pc", "pot_w4a4"])
def test_both_backends_realise_the_plan_with_the_scales_they_gave_before(backend_name, qconfig):
    backend = EagerBackend() if backend_name == "eager" else PT2EBackend(compile=False, onnx=False)
    overrides = {"layer_bits": {"layer1.*": {"weight": 6}}} if qconfig == "pot_w4a8_pc" else {}
    spec = qconfig_spec(qconfig, **overrides)
    generator = torch.Generator().manual_seed(11)
    batches = [torch.randn(8, 3, 8, 8, generator=generator) for _ in range(3)]
    prepared = backend.prepare_ptq(small_weight_net("basic", seed=5).eval(), spec, batches[0])
    with torch.no_grad():
        for x in batches:
            prepared(x)
    int8 = backend.convert(prepared, spec, batches[0])
    rows = backend.layer_table(small_weight_net("basic", seed=5).eval(), prepared, int8, batches[0])
    got = {r["name"]: [r["weight_scale"], r["scale"], r["zero_point"], r["bits"]] for r in rows}
    assert got == GOLDEN[f"{backend_name}/{qconfig}"]
