"""What Inductor makes of the pt2e int8 programs on this (any x86) CPU: every convolution and
the linear layer of the power-of-two program lower to oneDNN's int8 ops, as the x86 program's
do (conv-bn-relu and the residual add included), so neither runs a float convolution; with
backend.stem=fp32 the stem alone does. backend=pt2e_fused folds each residual add into its conv
(oneDNN's sum post-op)."""

from __future__ import annotations

import collections

import pytest
import torch

from labquant.machine import has_vnni
from labquant.models.resnet import small_resnet
from labquant.quant.pt2e.backend import PT2EBackend
from tests.conftest import qconfig_spec

pytestmark = pytest.mark.slow  # an Inductor compile per program (~5 s each on 2 cores)


def _ops_per_forward(model, x: torch.Tensor) -> collections.Counter[str]:
    model(x)  # compiles
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x)
    return collections.Counter({e.key: e.count for e in prof.key_averages()})


@pytest.mark.parametrize(
    ("qconfig", "stem", "float_convs"),
    [("x86", "auto", 0), ("pot", "int8", 0), ("pot_unsigned", "int8", 0), ("pot", "fp32", 1)],
)
def test_every_conv_and_linear_runs_in_an_int8_kernel(qconfig, stem, float_convs) -> None:
    torch.manual_seed(0)
    net = small_resnet(layers=(1, 1), base_width=8, num_classes=10).eval()
    # above speed.CPP_WRAPPER_MAX_BATCH: the profiler sees ops called from the Python wrapper
    x = torch.randn(16, 3, 16, 16)
    backend = PT2EBackend(compile=True, onnx=False, stem=stem)
    spec = qconfig_spec(qconfig)
    prepared = backend.prepare_ptq(net, spec, x)
    prepared(x)
    int8 = backend.convert(prepared, spec, x)
    graph = int8.module.graph
    convs = sum(n.target is torch.ops.aten.conv2d.default for n in graph.nodes)
    linears = sum(n.target is torch.ops.aten.linear.default for n in graph.nodes)
    assert convs == 6 and linears == 1  # stem, two per block, the downsample; the classifier
    ops = _ops_per_forward(int8, x)
    int8_convs = sum(count for op, count in ops.items() if op.startswith("onednn::qconv"))
    int8_linears = sum(count for op, count in ops.items() if op.startswith("onednn::qlinear"))
    float_conv_ops = ops["aten::mkldnn_convolution"] + ops["aten::_slow_conv2d_forward"]
    assert (int8_convs, int8_linears) == (convs - float_convs, linears), ops
    assert float_conv_ops == float_convs, ops
    if stem == "int8" and not has_vnni():
        return  # an int8 stem saturates int16 pair sums here (quant/pt2e/stem.py): not comparable
    with torch.no_grad():
        reference = int8.module(x)  # the Q/DQ graph itself, uncompiled
    torch.testing.assert_close(int8(x), reference, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("qconfig", ["x86", "pot_unsigned"])
@pytest.mark.parametrize("fuse", [False, True])
def test_fuse_residual_add_lowers_conv_add_relu_to_one_int8_conv(qconfig, fuse) -> None:
    """backend.fuse_residual_add=true: each block's conv + add + relu is one int8 conv with a
    binary post-op (onednn::qconv2d_pointwise, the .binary overload), no conv runs in float,
    and the compiled program equals its own Q/DQ graph; without it none is fused."""
    torch.manual_seed(0)
    net = small_resnet(layers=(1, 1), base_width=8, num_classes=10).eval()
    x = torch.randn(16, 3, 16, 16)
    backend = PT2EBackend(compile=True, onnx=False, stem="int8", fuse_residual_add=fuse)
    spec = qconfig_spec(qconfig)
    prepared = backend.prepare_ptq(net, spec, x)
    prepared(x)
    int8 = backend.convert(prepared, spec, x)
    ops = _ops_per_forward(int8, x)
    fused = ops["onednn::qconv2d_pointwise"]
    assert fused == (2 if fuse else 0), ops  # one residual add per block
    assert ops["onednn::qconv_pointwise"] + fused == 6, ops
    assert ops["aten::mkldnn_convolution"] + ops["aten::_slow_conv2d_forward"] == 0, ops
    if not has_vnni():
        return  # an int8 stem saturates int16 pair sums here (quant/pt2e/stem.py)
    with torch.no_grad():
        reference = int8.module(x)
    torch.testing.assert_close(int8(x), reference, atol=0.1, rtol=0.05)
