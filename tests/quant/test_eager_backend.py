"""The eager backend behind the QuantBackend interface: the whole lifecycle through the seam
(prepare -> calibrate / fine-tune -> convert -> save -> load), as the pipelines use it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from labquant.models.resnet import small_resnet
from labquant.quant.backend import Int8Model, QuantBackend
from labquant.quant.eager import EagerBackend
from tests.conftest import qconfig_spec


def calibration(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 3, 32, 32, generator=g) for _ in range(3)]


@pytest.mark.parametrize("name", ["pot", "x86"])
def test_ptq_through_the_interface_saves_a_model_that_loads_and_runs_the_same(
    tmp_path: Path, name: str
) -> None:
    backend: QuantBackend = EagerBackend()
    torch.manual_seed(0)
    fp32 = small_resnet(layers=[1, 1], base_width=8).eval()
    batches = calibration()
    prepared = backend.prepare_ptq(fp32, qconfig_spec(name), batches[0])
    assert backend.is_prepared(prepared)
    with torch.inference_mode():
        for x in batches:
            prepared(x)
    int8 = backend.convert(prepared, qconfig_spec(name), batches[0])
    assert isinstance(int8, Int8Model)
    saved = backend.save(int8, tmp_path)
    assert saved["size_mib"] > 0 and (tmp_path / saved["int8_torchscript"]).is_file()
    loaded = backend.load(tmp_path, saved)
    x = calibration(seed=1)[0]
    with torch.inference_mode():
        assert torch.equal(loaded(x), int8(x))
    assert set(backend.artifact_sizes(int8)) >= {"int8_mib"}
    layers = backend.layer_table(
        small_resnet(layers=[1, 1], base_width=8).eval(), prepared, int8, x
    )
    assert layers and all({"name", "scale", "sqnr_db", "clamp"} <= set(row) for row in layers)


def test_qat_switches_go_through_the_interface() -> None:
    backend = EagerBackend()
    net = small_resnet(layers=[1], base_width=8).train()
    prepared = backend.prepare_qat(net, qconfig_spec("pot"), torch.zeros(2, 3, 32, 32))
    prepared(torch.randn(8, 3, 32, 32))
    scales = backend.fake_quant_scales(prepared)
    assert scales and all(
        torch.log2(torch.tensor(s)).round() == torch.log2(torch.tensor(s)) for s in scales.values()
    )  # pot: every scale 2**-n
    backend.set_observers(prepared, enabled=False)
    prepared(torch.randn(8, 3, 32, 32) * 50)  # ranges frozen: a wild batch moves nothing
    assert backend.fake_quant_scales(prepared) == scales
    backend.freeze_bn_stats(prepared)
    bn = next(m for m in prepared.modules() if hasattr(m, "freeze_bn"))
    assert bn.freeze_bn


@pytest.mark.parametrize("snap_bias", [True, False])
def test_qat_trains_against_the_folded_bias_on_its_accumulator_grid(snap_bias: bool) -> None:
    """pot + snap_bias: once BN is frozen, a fused conv-BN adds round(B / g) * g (g = s_in *
    s_w), the bias convert ships, not the float folded bias B; snap_bias=false adds B."""
    backend = EagerBackend()
    torch.manual_seed(0)
    net = small_resnet(layers=[1, 1], base_width=8).train()
    spec = qconfig_spec("pot", snap_bias=snap_bias)
    prepared = backend.prepare_qat(net, spec, torch.zeros(2, 3, 32, 32))
    opt = torch.optim.SGD(prepared.parameters(), lr=0.1)
    for step in range(4):
        if step == 2:
            backend.freeze_bn_stats(prepared)
        loss = prepared(torch.randn(8, 3, 32, 32)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    conv_bn = prepared.layer2[0].downsample[0]  # fused conv-BN without ReLU, reads block input
    assert conv_bn.bn.bias.grad is not None and conv_bn.bn.bias.grad.abs().sum() > 0
    bn = conv_bn.bn
    folded = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    grid = prepared.layer1[0].skip_add.activation_post_process.scale
    grid = grid * conv_bn.weight_fake_quant.scale
    conv_bn.activation_post_process.enable_fake_quant(False)  # see the bias, not the output
    with torch.no_grad():
        out = conv_bn(torch.zeros(1, 8, 8, 8))[0, :, 0, 0]  # conv of zeros: the bias alone
    codes = folded.detach() / grid
    assert not torch.equal(codes, codes.round())  # the float bias is off the grid
    expected = codes.round() * grid if snap_bias else folded.detach()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    int8 = backend.convert(prepared, spec, torch.zeros(2, 3, 32, 32))
    assert int8.module is not None
    assert not [h for m in int8.module.modules() for h in m._forward_hooks.values()]
