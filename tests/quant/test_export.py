"""The int8 deployment file: frozen TorchScript computing exactly what the eager int8 net does."""

from __future__ import annotations

import io
import warnings

import torch

from labquant.models.resnet import small_resnet
from labquant.quant.eager import workflow
from labquant.quant.eager.export import load_torchscript, save_torchscript, to_torchscript
from tests.conftest import backend_for, get_qconfig


def test_frozen_torchscript_equals_eager_int8_at_any_batch_size() -> None:
    torch.manual_seed(0)
    net = small_resnet(layers=[1, 1], base_width=8).eval()
    workflow.set_engine(backend_for("pot"))
    workflow.prepare_ptq(net, get_qconfig("pot", qat=False))
    with torch.inference_mode():
        net(torch.randn(32, 3, 32, 32))
    int8 = workflow.convert_int8(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the deprecation notes stay inside
        script = to_torchscript(int8, torch.zeros(1, 3, 32, 32))
        buffer = io.BytesIO()
        save_torchscript(script, buffer)
        buffer.seek(0)
        loaded = load_torchscript(buffer)
    assert "prim::GetAttr" not in str(loaded.graph)  # frozen: weights inlined as constants
    x = torch.randn(5, 3, 32, 32)  # traced at batch 1, run at batch 5
    with torch.inference_mode():
        expected = int8(x)
        assert torch.equal(script(x), expected)
        assert torch.equal(loaded(x), expected)
