"""The int8 program as Inductor compiles it: post-ReLU activations with zero point 0.

pot's symmetric activations are uint8 with zero point 128, so after a ReLU they use codes
128..255. oneDNN corrects every convolution whose input has a zero point (the `zpm1` weight
compensation in its verbose log), and at small batches that correction costs more than the
convolution: on 2 AMX cores pt2e pot ran ResNet-18 at batch 1 at 227 img/s against 710 for the
same network with zero point 0 after ReLU (pot_unsigned) and 708 for x86.

For a non-negative tensor the two forms hold the same numbers. With zero point z and top code
q_max, quantize(x) dequantizes to min(round(x / s), q_max - z) * s, and so does
quantize(hardtanh(x, 0, (q_max - z) * s)) with zero point 0. So before Inductor compiles the
program (quant/pt2e/backend.PT2EInt8Model), every relu -> quantize with a zero point above the
lowest code becomes hardtanh(0, top) -> quantize with zero point 0, and the dequantizes that
read it change with it. The result is bit-identical (a test says so), oneDNN fuses the hardtanh into
the convolution as it fuses the relu, and the saved `.pt2`, the ONNX file and the integer
program keep the declared zero points.
"""

from __future__ import annotations

import copy

import torch
from torch.fx import GraphModule, Node

from labquant.quant.pt2e.inspect import RELUS

_Q = torch.ops.quantized_decomposed.quantize_per_tensor.default
_DQ = torch.ops.quantized_decomposed.dequantize_per_tensor.default
_HARDTANH = torch.ops.aten.hardtanh.default


def _shiftable(quantize: Node) -> bool:
    """quantize(relu(...), scale, zero point above the lowest code, full uint8 range): read only
    by dequantizes with the same parameters."""
    if quantize.target is not _Q or len(quantize.args) < 6:
        return False
    source, scale, zero_point, qmin, qmax, dtype = quantize.args[:6]
    if not (isinstance(source, Node) and source.target in RELUS):
        return False
    if dtype is not torch.uint8 or (qmin, qmax) != (0, 255) or not isinstance(scale, float):
        return False
    if not isinstance(zero_point, int) or zero_point <= qmin:
        return False
    return all(
        user.target is _DQ and tuple(user.args[1:6]) == tuple(quantize.args[1:6])
        for user in quantize.users
    )


def zero_point_free_relus(module: GraphModule) -> tuple[GraphModule, int]:
    """A copy of `module` with every post-ReLU uint8 activation at zero point 0 (see the module
    docstring); returns it and how many activations changed."""
    gm = copy.deepcopy(module)
    changed = 0
    for quantize in list(gm.graph.nodes):
        if not _shiftable(quantize):
            continue
        relu, scale, zero_point, qmin, qmax, dtype = quantize.args[:6]
        top = (qmax - zero_point) * scale
        if len(relu.users) == 1:  # hardtanh(x, 0, top) is relu then the clip: one fused post-op
            relu.target, relu.args = _HARDTANH, (relu.args[0], 0.0, top)
            clipped = relu
        else:
            with gm.graph.inserting_after(relu):
                clipped = gm.graph.call_function(_HARDTANH, (relu, 0.0, top))
        quantize.args = (clipped, scale, 0, qmin, qmax, dtype)
        for dequantize in list(quantize.users):
            dequantize.args = (quantize, scale, 0, qmin, qmax, dtype, *dequantize.args[6:])
        changed += 1
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm, changed
