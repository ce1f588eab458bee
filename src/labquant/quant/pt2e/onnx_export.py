"""The converted PT2E program as a QDQ ONNX model, and ONNX Runtime to run it.

`torch.onnx.export(dynamo=True)` turns the program's quantize / dequantize ops into
QuantizeLinear / DequantizeLinear (int8 weights as initializers with their DequantizeLinear);
ONNX Runtime then fuses Q/DQ around conv into QLinearConv. onnx, onnxscript and onnxruntime
come with the `[export]` extra; without it the backend writes the .pt2 only.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from labquant.errors import ConfigError

OPSET = 20
MODULES = ("onnx", "onnxscript", "onnxruntime")
FIX = "pass the model_int8.onnx of a complete backend=pt2e stage (rerun labquant-quantize)"


def available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in MODULES)


def quiet_exporter_logs() -> None:
    """onnx_ir / onnxscript log every optimization pass at INFO into the run's log file."""
    for name in ("onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)


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


class OnnxInt8Model:
    """An ONNX file run by ONNX Runtime on the CPU (all graph optimizations: QDQ fusion)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise ConfigError(f"{path} does not exist; {FIX}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"{path} is not a readable ONNX model ({reason}); {FIX}") from exc
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: Tensor) -> Tensor:
        array = x.detach().cpu().contiguous().numpy().astype(np.float32)
        (out,) = self.session.run(None, {self.input: array})
        return torch.from_numpy(out)


def initializer_scales(path: Path) -> list[float]:
    """Every Q/DQ scale in an ONNX file (initializers and constants feeding a scale input)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    values: dict[str, Any] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    scales: list[float] = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 1:
            scale = values.get(node.input[1])
            if scale is not None:
                scales.extend(float(s) for s in np.asarray(scale).reshape(-1))
    return scales
