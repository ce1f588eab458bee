"""backend=pt2e (torch.export + torchao): power-of-two scales read back from the saved .pt2 and
.onnx files, int8 vs FP32 agreement, ONNX Runtime vs torch, eager vs pt2e scales, and the
one-line errors for a missing or damaged artifact."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from labquant import onnx_runtime
from labquant.config.groups import load_group_option
from labquant.config.instantiate import instantiate
from labquant.errors import ConfigError
from labquant.models.resnet import small_resnet
from labquant.quant.eager import EagerBackend
from labquant.quant.pt2e import stem
from labquant.quant.pt2e.backend import PT2EBackend, load_pt2
from labquant.quant.pt2e.bias_quant import FoldedBiasSnap
from labquant.quant.pt2e.inspect import getattr_path
from labquant.tasks.lab import exported_stages
from labquant.tasks.quantize import quantize
from tests.conftest import (
    QUANT_MODEL,
    compose_config,
    held_out_images,
    qconfig_spec,
    trained_fp32_net,
)

PT2E = ["backend=pt2e", "backend.compile=false", "quant.measure_latency=false"]
needs_onnx = pytest.mark.skipif(not onnx_runtime.available(), reason="the [export] extra")


@pytest.fixture(scope="module")
def ptq_pt2e_pot(fp32_checkpoint_run, tmp_path_factory: pytest.TempPathFactory):
    fp32, run = fp32_checkpoint_run
    out = tmp_path_factory.mktemp("ptq_pt2e_pot")
    overrides = [*QUANT_MODEL, f"ckpt_path={run / fp32['checkpoint']}", *PT2E]
    overrides += ["quant=ptq", "qconfig=pot", "quant.calibration_batches=8"]
    overrides += ["backend.stem=fp32"]  # the exact stem every CPU runs (auto: int8 with VNNI)
    return quantize(compose_config("quantize", overrides, out)), out


def _power_of_two_exponent(scale: float) -> int:
    mantissa, _ = math.frexp(scale)
    assert mantissa == 0.5, scale  # exactly 2**k, nothing rounded
    return round(-math.log2(scale))


def _pt2_scales(path: Path) -> list[tuple[float, torch.dtype]]:
    """(scale, quantized dtype) of every quantize / dequantize node of a saved program."""
    program = load_pt2(path)
    gm = program.module()
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or "quantize_per" not in str(node.target):
            continue
        scale, dtype = node.args[1], node.args[-1]
        if isinstance(scale, torch.fx.Node):  # per-channel weights: a tensor constant
            tensor = gm
            for part in scale.target.split("."):
                tensor = getattr(tensor, part)
            found += [(float(s), dtype) for s in tensor.flatten()]
        else:
            found.append((float(scale), dtype))
    return found


def test_every_scale_in_the_saved_pt2_is_a_power_of_two_in_range(ptq_pt2e_pot) -> None:
    results, out = ptq_pt2e_pot
    scales = _pt2_scales(out / results["int8_pt2"])
    assert len({dtype for _, dtype in scales}) >= 2 and len(scales) > 30
    shift = results["max_shift_amount"]
    for scale, dtype in scales:
        n = _power_of_two_exponent(scale)
        # int32 biases sit on the accumulator grid s_in * s_w: two shifts deep
        assert 0 <= n <= (2 * shift if dtype == torch.int32 else shift), (scale, dtype)


@needs_onnx
def test_every_scale_in_the_onnx_file_is_a_power_of_two(ptq_pt2e_pot) -> None:
    results, out = ptq_pt2e_pot
    scales = onnx_runtime.initializer_scales(out / results["int8_onnx"])
    assert len(scales) > 30
    for scale in scales:
        assert 0 <= _power_of_two_exponent(scale) <= 2 * results["max_shift_amount"]


@needs_onnx
def test_onnx_runtime_matches_the_torch_int8_accuracy(ptq_pt2e_pot) -> None:
    results, _ = ptq_pt2e_pot
    assert abs(results["onnxruntime_test_acc"] - results["test_acc"]) <= 0.2


def test_pt2e_int8_agrees_with_fp32_on_held_out_images(fp32_checkpoint_run, ptq_pt2e_pot) -> None:
    fp32, run = fp32_checkpoint_run
    results, out = ptq_pt2e_pot
    int8 = PT2EBackend(compile=False).load(out, results)
    net = trained_fp32_net(fp32, run)
    x = held_out_images()
    with torch.inference_mode():
        agree = (int8(x).argmax(1) == net(x).argmax(1)).float().mean().item()
    assert agree >= 0.95, agree
    assert results["backend"] == "pt2e" and results["layers"]
    assert all(layer["sqnr_db"] > 5 for layer in results["layers"])


@pytest.mark.parametrize("name", ["pot", "pot_unsigned"])
def test_eager_and_pt2e_give_the_same_scales_on_the_same_batches(name: str) -> None:
    spec = qconfig_spec(name)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, 3, 32, 32, generator=g) for _ in range(3)]
    tables = {}
    for backend in (EagerBackend(), PT2EBackend(compile=False)):
        torch.manual_seed(0)
        fp32 = small_resnet(layers=[1, 1], base_width=8).eval()
        prepared = backend.prepare_ptq(fp32, spec, batches[0])
        with torch.inference_mode():
            for x in batches:
                prepared(x)
        int8 = backend.convert(prepared, spec, batches[0])
        torch.manual_seed(0)
        reference = small_resnet(layers=[1, 1], base_width=8).eval()
        table = backend.layer_table(reference, prepared, int8, batches[0])
        tables[backend.name] = {row["name"]: row for row in table}
    eager, pt2e = tables["eager"], tables["pt2e"]
    assert set(eager) == set(pt2e) and len(eager) >= 6  # every conv and the fc, same names
    for layer, row in eager.items():
        theirs = pt2e[layer]
        assert (theirs["scale"], theirs["zero_point"]) == (row["scale"], row["zero_point"]), layer
        assert theirs["weight_scale"] == row["weight_scale"], layer


def test_unsupported_qconfig_is_refused_before_any_work() -> None:
    with pytest.raises(ConfigError, match="backend=pt2e does not support qconfig=qnnpack"):
        PT2EBackend().check(qconfig_spec("qnnpack"))


@pytest.mark.parametrize("qconfig", ["pot", "pot_w4a4", "pot_mse"])
def test_fuse_residual_add_refuses_qconfigs_inductor_cannot_fuse(qconfig) -> None:
    """Zero point 128 and narrowed activation codes put a clamp between the add and its
    quantize, where Inductor's fusion stops (2-3x slower): refused with one line."""
    spec = qconfig_spec(qconfig)
    with pytest.raises(
        ConfigError,
        match=rf"^backend.fuse_residual_add=true does not support "
        rf"qconfig={qconfig} .*use qconfig=pot_unsigned, or backend=pt2e$",
    ):
        PT2EBackend(fuse_residual_add=True).check(spec)
    PT2EBackend().check(spec)  # plain pt2e takes it


def packaged_backend(option: str, **overrides) -> PT2EBackend:
    """conf/backend/<option>.yaml built as `backend=<option>` builds it."""
    cfg = load_group_option("backend", option)
    cfg.merge_with(overrides)
    return instantiate(cfg, f"backend={option}")


def test_fused_backend_names_its_stages_and_ships_no_onnx_or_integer_export() -> None:
    """pt2e and pt2e_fused share a class: each is named (results' `backend`, its stage folders)
    by its YAML's name and stage_suffix, not by its fuse_residual_add flag."""
    fused, plain = packaged_backend("pt2e_fused", onnx=True), packaged_backend("pt2e", onnx=True)
    assert fused.fuse_residual_add and not plain.fuse_residual_add
    for spec in (qconfig_spec("x86"), qconfig_spec("pot_unsigned")):
        fused.check(spec)
    assert (fused.name, fused.stage_suffix) == ("pt2e_fused", "_pt2e_fused")
    assert (plain.name, plain.stage_suffix) == ("pt2e", "_pt2e")
    assert not fused.onnx and not fused.exports_integers
    assert plain.onnx and plain.exports_integers
    stages = {
        "fp32": {},
        "ptq_pot_unsigned_pt2e": {"backend": "pt2e", "integer_program": True},
        "ptq_pot_unsigned_pt2e_fused": {"backend": "pt2e_fused", "integer_program": True},
    }
    backends = {b.name: SimpleNamespace(backend=b) for b in (plain, fused)}
    assert exported_stages(stages, backends) == ["ptq_pot_unsigned_pt2e"]


def test_a_missing_or_damaged_pt2_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as missing:
        load_pt2(tmp_path / "model_int8.pt2")
    damaged = tmp_path / "damaged.pt2"
    damaged.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ConfigError, match=r"is not a readable \.pt2 program") as broken:
        load_pt2(damaged)
    for error in (missing, broken):
        assert "\n" not in str(error.value)


@needs_onnx
def test_a_missing_or_damaged_onnx_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        onnx_runtime.OnnxRuntimeModel(tmp_path / "model_int8.onnx")
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ConfigError, match="is not a readable ONNX model") as broken:
        onnx_runtime.OnnxRuntimeModel(damaged)
    assert "\n" not in str(broken.value)


def test_qat_trains_against_the_folded_bias_that_convert_ships() -> None:
    """pot + snap_bias: once BN is frozen, QAT adds each conv-BN's folded bias snapped to its
    accumulator grid s_in * s_w, and that is the bias the converted program holds."""
    backend = PT2EBackend(compile=False, onnx=False)
    torch.manual_seed(0)
    net = small_resnet(layers=[1, 1], base_width=8).train()
    prepared = backend.prepare_qat(net, qconfig_spec("pot"), torch.zeros(2, 3, 32, 32))
    snaps = [m for m in prepared.modules() if isinstance(m, FoldedBiasSnap)]
    assert len(snaps) == 6  # stem, 2 + 2 block convs, the downsample
    opt = torch.optim.SGD(prepared.parameters(), lr=0.05)
    for step in range(4):
        if step == 2:
            backend.freeze_bn_stats(prepared)
        assert all(m.active == (step >= 2) for m in snaps)  # on once BN stats are frozen
        loss = prepared(torch.randn(8, 3, 32, 32)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(_m: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        bn_out, gamma, beta, mean, var, s_in, s_w, eps = inputs
        folded = beta - mean * gamma / torch.sqrt(var + eps)
        trained.append((folded + (out - bn_out)[0, :, 0, 0], s_in * s_w))

    for m in snaps:
        m.register_forward_hook(record)
    prepared.eval()
    with torch.no_grad():
        prepared(torch.zeros(1, 3, 32, 32))
    gm = backend.convert(prepared, qconfig_spec("pot"), torch.zeros(2, 3, 32, 32)).module
    conv = torch.ops.aten.conv2d.default
    shipped = [
        getattr_path(gm, n.args[2].target)
        for n in gm.graph.nodes
        if n.target is conv and n.args[2] is not None and n.args[2].op == "get_attr"
    ]
    assert len(trained) == len(shipped) == 6
    for (bias, grid), ship in zip(trained, shipped, strict=True):
        codes = (bias / grid).detach()
        torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-3)  # on the grid
        torch.testing.assert_close(bias.detach(), ship, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("mode", "vnni", "int8"),
    [("auto", True, True), ("auto", False, False), ("int8", False, True), ("fp32", True, False)],
)
def test_backend_stem_setting_decides_where_the_stem_runs(mode, vnni, int8, monkeypatch) -> None:
    """auto: int8 where the converting CPU has VNNI / AMX (int32 sums, nothing saturates)."""
    from labquant.quant.pt2e import backend as pt2e_backend

    assert stem.int8_stem(mode, vnni) is int8
    monkeypatch.setattr(pt2e_backend, "has_vnni", lambda: vnni)
    net = small_resnet(layers=(1, 1), base_width=4, num_classes=3).eval()
    backend = PT2EBackend(compile=False, onnx=False, stem=mode)
    x = torch.randn(4, 3, 8, 8)
    prepared = backend.prepare_ptq(net, qconfig_spec("pot"), x)
    prepared(x)
    gm = backend.convert(prepared, qconfig_spec("pot"), x).module
    (first,) = [
        n for n in gm.graph.nodes if n.op == "call_function" and stem.reads_network_input(n)
    ]
    expected = "dequantize_per_channel" if int8 else "dequantize_per_tensor"
    assert expected in str(first.args[1].target)


def test_the_stem_conv_keeps_out_of_the_saturating_int8_kernels(ptq_pt2e_pot) -> None:
    """pot, backend.stem=fp32: the stem's weight is dequantized per tensor in the .pt2
    (Inductor lowers per-channel weight dequant only, so the stem runs exactly in FP32) and is
    uint8 with zero point 128 in the .onnx (ORT's U8U8 kernel); the codes and the scale are
    the same."""
    results, out = ptq_pt2e_pot
    gm = load_pt2(out / results["int8_pt2"]).module()
    convs = [n for n in gm.graph.nodes if n.target is torch.ops.aten.conv2d.default]
    stems = [n for n in convs if stem.reads_network_input(n)]
    assert len(stems) == 1 and len(convs) > 1
    weight_dq = {n: str(n.args[1].target) for n in convs}
    assert "dequantize_per_tensor" in weight_dq[stems[0]]
    assert all("dequantize_per_channel" in t for n, t in weight_dq.items() if n is not stems[0])
    dq = stems[0].args[1]
    codes = getattr_path(gm, dq.args[0].target)
    assert codes.dtype == torch.int8
    if not onnx_runtime.available():
        return
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(out / results["int8_onnx"]))
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: node for node in model.graph.node for o in node.output}
    weight_codes = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            weight_dq_node = producer[node.input[1]]
            weight_codes.append([consts.get(name) for name in weight_dq_node.input])
    (u8, scale, zp), *others = weight_codes
    assert u8.dtype == np.uint8 and zp.dtype == np.uint8 and int(zp) == 128
    assert float(scale) == dq.args[1]
    assert np.array_equal(u8.astype(np.int16) - 128, codes.numpy())
    assert all(w.dtype == np.int8 for w, _, _ in others)


@pytest.mark.parametrize(
    ("qconfig", "expected"), [("pot", "some"), ("pot_unsigned", 0), ("x86", 0)]
)
def test_inductor_form_moves_post_relu_zero_points_to_zero_bit_for_bit(qconfig, expected) -> None:
    """pot's post-ReLU codes 128..255 become 0..127 behind a hardtanh for Inductor (oneDNN's
    zero-point correction is what made pt2e pot slow); every output is the same number."""
    from labquant.quant.pt2e.zero_points import zero_point_free_relus

    torch.manual_seed(0)
    net = small_resnet(layers=(1, 1), base_width=8, num_classes=10).eval()
    backend = PT2EBackend(compile=False, onnx=False)
    x = torch.randn(16, 3, 16, 16)
    prepared = backend.prepare_ptq(net, qconfig_spec(qconfig), x)
    prepared(x)
    int8 = backend.convert(prepared, qconfig_spec(qconfig), x)
    rewritten, changed = zero_point_free_relus(int8.module)
    if expected == "some":
        assert changed >= 4  # every conv-(bn)-relu and add-relu output of the network
    else:
        assert changed == 0
    zero_points = [
        n.args[2]
        for n in rewritten.graph.nodes
        if n.target is torch.ops.quantized_decomposed.dequantize_per_tensor.default
        and any(u.target is torch.ops.aten.conv2d.default for u in n.users)
    ]
    assert zero_points[1:] == [0] * (len(zero_points) - 1)  # all but the stem's input
    with torch.no_grad():
        for seed in range(3):
            images = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2
            assert torch.equal(rewritten(images), int8.module(images))
    assert int8.inductor_module is not int8.module
