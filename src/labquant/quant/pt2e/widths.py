"""Activation codes narrower than uint8 (qconfig.activation_bits < 8) in a converted program.

The Q/DQ graph's `quantize_per_tensor` clamps to its quant_min / quant_max, but what runs it
elsewhere need not: ONNX's QuantizeLinear saturates at the container's 0..255, and a fused
int8 kernel clamps its output to the dtype. A clamp of the float value to the codes' range
before each narrowed quantize makes every runtime produce the declared codes, and is exact:
the bounds (q - zp) * 2**-n are representable, so `quantize(clamp(x))` = `clamp(quantize(x))`.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

_Q = torch.ops.quantized_decomposed.quantize_per_tensor.default
CLAMP = torch.ops.aten.clamp.default
_FULL = {torch.uint8: (0, 255), torch.int8: (-128, 127)}


def clamp_narrow_codes(gm: GraphModule) -> int:
    """Insert `clamp(x, lo, hi)` before every quantize whose range is narrower than its dtype;
    returns how many."""
    count = 0
    for quantize in list(gm.graph.nodes):
        if quantize.target is not _Q:
            continue
        x, scale, zero_point, qmin, qmax, dtype = quantize.args[:6]
        if (qmin, qmax) == _FULL.get(dtype) or not isinstance(scale, float):
            continue
        low, high = (qmin - zero_point) * scale, (qmax - zero_point) * scale
        with gm.graph.inserting_before(quantize):
            clamp = gm.graph.call_function(CLAMP, (x, low, high))
        clamp.meta = dict(x.meta) if isinstance(x, Node) else {}
        quantize.replace_input_with(x, clamp)
        count += 1
    if count:
        gm.recompile()
    return count


def unclamped(node: object) -> object:
    """The value a narrowed quantize reads, through the clamp `clamp_narrow_codes` inserted."""
    if isinstance(node, Node) and node.target is CLAMP:
        return node.args[0]
    return node
