"""The converted PT2E program as a QDQ ONNX model (labquant.onnx_runtime runs it).

`torch.onnx.export(dynamo=True)` turns the program's quantize / dequantize ops into
QuantizeLinear / DequantizeLinear (int8 weights as initializers with their DequantizeLinear);
ONNX Runtime then fuses Q/DQ around conv into QLinearConv. onnx, onnxscript and onnxruntime
come with the `[export]` extra; without it the backend writes the .pt2 only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from labquant.onnx_runtime import OPSET, quiet_exporter_logs


def export_onnx(program: torch.export.ExportedProgram, path: Path) -> None:
    quiet_exporter_logs()
    onnx_program = torch.onnx.export(program, dynamo=True, opset_version=OPSET, verbose=False)
    quantize_before_relu(onnx_program.model)
    unsigned_stem_weight(onnx_program.model)
    onnx_program.save(str(path))


def quantize_before_relu(model: Any) -> int:
    """Conv -> Relu -> QuantizeLinear(s, zp) becomes Conv -> Q(s, zp) -> DQ -> Relu -> Q(s, zp).

    The exporter keeps PT2E's fused pattern (the conv's output is quantized only after the
    ReLU), which ONNX Runtime cannot fuse into QLinearConv when the zero point is not the
    range's minimum (pot's symmetric 128): the conv stays FP32. Quantizing the conv output with
    the ReLU output's own qparams first is exact, since round(max(y, 0) / s) = max(round(y / s),
    0): the codes are the same, and ORT runs the conv in int8. `model` is the exporter's
    onnx_ir model, edited in place; returns how many convs it changed.
    """
    import onnx_ir as ir

    changed = 0
    for node in list(model.graph):
        if node.op_type != "Relu":
            continue
        value = node.inputs[0]
        producer = value.producer() if value is not None else None
        quantizers = [c for c in node.outputs[0].consumers() if c.op_type == "QuantizeLinear"]
        if producer is None or producer.op_type != "Conv" or len(quantizers) != 1:
            continue
        if len(value.consumers()) != 1:
            continue
        scale, zero_point = quantizers[0].inputs[1], quantizers[0].inputs[2]
        quantize = ir.node("QuantizeLinear", inputs=[value, scale, zero_point])
        dequantize = ir.node("DequantizeLinear", inputs=[quantize.outputs[0], scale, zero_point])
        model.graph.insert_before(node, [quantize, dequantize])
        node.replace_input_with(0, dequantize.outputs[0])
        changed += 1
    return changed


def _produced_by(value: Any, op_type: str) -> Any:
    producer = value.producer() if value is not None else None
    return producer if producer is not None and producer.op_type == op_type else None


def _initializer(model: Any, name: str, array: np.ndarray) -> Any:
    """A new uint8 initializer of the onnx_ir model."""
    import onnx_ir as ir

    tensor = ir.tensor(array.astype(np.uint8), name=name)
    value = ir.Value(name=name, shape=tensor.shape, type=ir.TensorType(tensor.dtype))
    value.const_value = tensor
    model.graph.register_initializer(value)
    return value


def unsigned_stem_weight(model: Any) -> int:
    """The stem conv's per-tensor int8 weight (see quant/pt2e/stem.py) as uint8 codes + 128
    with zero point 128: the same values, but ONNX Runtime then runs QLinearConv's U8U8 kernel,
    which widens to int16 before multiplying, instead of U8S8's saturating int16 pair sums on
    a CPU without VNNI. Only a per-tensor weight with zero point 0 is changed (what the pt2e
    backend writes for pot; per-channel x86 weights stay); returns how many convs changed.
    """
    inputs = set(model.graph.inputs)
    changed = 0
    for node in list(model.graph):
        if node.op_type != "Conv":
            continue
        dq_x = _produced_by(node.inputs[0], "DequantizeLinear")
        q_x = _produced_by(dq_x.inputs[0], "QuantizeLinear") if dq_x is not None else None
        if q_x is None or q_x.inputs[0] not in inputs:
            continue
        dq_w = _produced_by(node.inputs[1], "DequantizeLinear")
        if dq_w is None or len(dq_w.inputs) < 3:
            continue
        weight, scale, zero_point = dq_w.inputs[0], dq_w.inputs[1], dq_w.inputs[2]
        consts = [v.const_value if v is not None else None for v in (weight, scale, zero_point)]
        if any(c is None for c in consts) or consts[1].numpy().size != 1:
            continue
        codes, zp = consts[0].numpy(), consts[2].numpy()
        if codes.dtype != np.int8 or zp.any():
            continue
        unsigned = _initializer(model, f"{weight.name}_u8", (codes.astype(np.int16) + 128))
        zp_u8 = _initializer(model, f"{weight.name}_zp_u8", np.full(zp.shape, 128))
        dq_w.replace_input_with(0, unsigned)
        dq_w.replace_input_with(2, zp_u8)
        if not weight.consumers() and weight.name in model.graph.initializers:
            model.graph.initializers.pop(weight.name)  # the int8 copy, now unused
        changed += 1
    return changed
