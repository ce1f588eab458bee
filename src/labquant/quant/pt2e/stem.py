"""The stem conv of a power-of-two int8 program, kept out of the CPU's saturating int8 kernels.

On an x86 CPU without VNNI, int8 kernels multiply u8 activations by s8 weights with
`vpmaddubsw`, which adds each pair of adjacent products into int16 with saturation. The stem
conv (the one reading the network's input: 3 channels, large BN-folded weights, image codes
around pot's zero point 128) saturates there: oneDNN pairs the input channels of one pixel
(R, G), fbgemm / ONNX Runtime pair (kernel row, kernel column, channel) entries. Measured on the
quick lab's PTQ pot model with the integer reference (hw/reference.py) emulating each pairing:
exact arithmetic 68.24 %, fbgemm's pairing 67.85 % (what eager and ORT give), oneDNN's 64.90 %
(what Inductor gave); exact stem and oneDNN pairing elsewhere: 68.24 %. No other layer of that
model saturates.

So on such a CPU the converted program of a power-of-two qconfig dequantizes the stem's int8
weight per tensor (pot weights have one scale; the backend writes it per channel only so that
Inductor lowers the other convs): Inductor's int8 lowering matches per-channel weight dequant
only, so the stem runs as an FP32 conv on the dequantized codes, which is exact (8-bit codes
times powers of two, 27-term sums far below 2**24, a power-of-two requantization). The file
keeps the int8 weight. The stem is about 1 % of the network's multiply-adds, but not of its
time: at batch 256 on 2 AMX cores the FP32 stem took a quarter of the small model's time and
held pt2e pot_unsigned at 6,300 img/s against 13,100 with an int8 stem (x86: 13,400).

With VNNI or AMX the int8 kernels sum u8 x s8 products in int32 (`vpdpbusd`, AMX tiles):
nothing saturates, so the stem stays int8 there. `backend.stem` decides: `auto` (int8 where
the CPU that converts has VNNI), `int8` or `fp32` (the exact FP32 stem on every CPU, e.g. for a
.pt2 that will run on an AVX2 machine).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch.fx import GraphModule, Node

from labquant.quant.pt2e.inspect import getattr_path
from labquant.quant.pt2e.widths import unclamped

_CONV = torch.ops.aten.conv2d.default
_DQ_PER_CHANNEL = torch.ops.quantized_decomposed.dequantize_per_channel.default
_DQ_PER_TENSOR = torch.ops.quantized_decomposed.dequantize_per_tensor.default
_Q_PER_TENSOR = torch.ops.quantized_decomposed.quantize_per_tensor.default


StemMode = Literal["auto", "int8", "fp32"]


def int8_stem(mode: StemMode, vnni: bool) -> bool:
    """Whether the stem conv runs in Inductor's int8 kernel (see the module docstring)."""
    return mode == "int8" or (mode == "auto" and vnni)


def reads_network_input(conv: Node) -> bool:
    """conv(dequantize(quantize(<graph input>)), ...)."""
    dq = conv.args[0]
    q = dq.args[0] if isinstance(dq, Node) and dq.target is _DQ_PER_TENSOR else None
    source = unclamped(q.args[0]) if isinstance(q, Node) and q.target is _Q_PER_TENSOR else None
    return isinstance(source, Node) and source.op == "placeholder"


def per_tensor_stem_weight(gm: GraphModule) -> int:
    """Replace the stem conv's per-channel weight dequant (all scales equal, zero points 0) by
    the per-tensor one; returns how many convs changed (0 or 1)."""
    changed = 0
    for conv in list(gm.graph.nodes):
        if conv.target is not _CONV or not reads_network_input(conv):
            continue
        dq = conv.args[1]
        if not (isinstance(dq, Node) and dq.target is _DQ_PER_CHANNEL):
            continue
        scales: Any = getattr_path(gm, dq.args[1].target)
        zero_points: Any = getattr_path(gm, dq.args[2].target)
        if scales.unique().numel() != 1 or bool(zero_points.any()):
            continue  # a genuinely per-channel weight: leave it
        weight, _, _, _axis, qmin, qmax, dtype = dq.args
        with gm.graph.inserting_before(conv):
            per_tensor = gm.graph.call_function(
                _DQ_PER_TENSOR, (weight, float(scales[0]), 0, qmin, qmax, dtype)
            )
        conv.replace_input_with(dq, per_tensor)
        if not dq.users:
            gm.graph.erase_node(dq)
        changed += 1
    if changed:
        gm.recompile()
    return changed
