"""The integer export of a PT2E stage: the converted `.pt2` program read op by op into the same
integer program as eager's (hw/program.py), which the integer-only reference runs code for code
like the Q/DQ graph itself and like ONNX Runtime on the stage's `.onnx` file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from labquant import onnx_runtime
from labquant.hw import reference
from labquant.hw.program import check_program
from labquant.quant.eager.backend import EagerBackend
from labquant.quant.pt2e.backend import PT2EBackend
from labquant.quant.qconfigs import power_of_two
from tests.hw.test_integer_reference import small_weight_net


def saved_stage(folder: Path, activations: str, mode: str, onnx: bool, x: torch.Tensor):
    """A converted and saved PT2E pot model of the small-weight network (no pair saturates)."""
    backend = PT2EBackend(compile=False, onnx=onnx)
    spec = power_of_two(activations=activations, snap_bias=True)
    net = small_weight_net("basic", seed=3)
    if mode == "ptq":
        prepared = backend.prepare_ptq(net, spec, x)
        with torch.no_grad():
            prepared(x)
    else:
        prepared = backend.prepare_qat(net.train(), spec, x)
        backend.freeze_bn_stats(prepared)
        optimizer = torch.optim.SGD(prepared.parameters(), lr=1e-3)
        for _ in range(2):
            optimizer.zero_grad()
            prepared(x).square().mean().backward()
            optimizer.step()
    saved = backend.save(backend.convert(prepared, spec, x), folder)
    return backend, spec, saved


@pytest.mark.parametrize(
    ("activations", "mode", "onnx"),
    [("symmetric", "ptq", True), ("unsigned", "ptq", False), ("symmetric", "qat", False)],
)
def test_the_pt2e_program_is_the_integer_program_code_for_code(
    tmp_path: Path, activations: str, mode: str, onnx: bool
) -> None:
    torch.manual_seed(1)
    x = torch.randn(8, 3, 8, 8)
    backend, spec, saved = saved_stage(tmp_path, activations, mode, onnx, x)
    exported = backend.integer_export(None, spec, tmp_path, saved, (8, 8))
    program = exported.program
    assert check_program(program) == []
    assert [op["op"] for op in program.ops][:2] == ["quantize", "conv"]
    assert program.ops[-1]["name"] == "fc" and program.ops[-2]["op"] == "avgpool"
    ours = reference.run(program, x.numpy())
    theirs = exported.layer_codes(x)
    assert theirs.keys() == ours.codes.keys()
    for name, codes in theirs.items():
        np.testing.assert_array_equal(ours.codes[name], codes, err_msg=name)
    runtimes = exported.runtime_codes(x)
    if onnx and onnx_runtime.available():
        np.testing.assert_array_equal(runtimes["onnxruntime"], ours.logits)
    else:
        assert runtimes == {}


def test_eager_and_pt2e_export_the_same_ops(tmp_path: Path) -> None:
    """The same network, the same op names and kinds: one integer format for both flows."""
    torch.manual_seed(1)
    x = torch.randn(8, 3, 8, 8)
    pt2e, spec, saved = saved_stage(tmp_path / "pt2e", "symmetric", "ptq", False, x)
    pt2e_ops = pt2e.integer_export(None, spec, tmp_path / "pt2e", saved, (8, 8)).program.ops
    eager = EagerBackend()
    prepared = eager.prepare_ptq(small_weight_net("basic", seed=3), spec, x)
    with torch.no_grad():
        prepared(x)
    saved = eager.save(eager.convert(prepared, spec, x), tmp_path / "eager")
    net = small_weight_net("basic", seed=3)
    eager_ops = eager.integer_export(net, spec, tmp_path / "eager", saved, (8, 8)).program.ops
    assert [(op["name"], op["op"]) for op in pt2e_ops] == [
        (op["name"], op["op"]) for op in eager_ops
    ]


def test_a_non_power_of_two_pt2e_stage_is_refused(tmp_path: Path) -> None:
    from labquant.errors import ConfigError
    from labquant.quant.qconfigs import engine_default

    with pytest.raises(ConfigError, match="not a power-of-two qconfig"):
        PT2EBackend().integer_export(None, engine_default("x86", "x86"), tmp_path, {}, (8, 8))
