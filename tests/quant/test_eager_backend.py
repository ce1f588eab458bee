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
    int8 = backend.convert(prepared, batches[0])
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
