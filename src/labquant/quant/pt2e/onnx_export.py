"""The converted PT2E program as a QDQ ONNX model, and ONNX Runtime to run it.

`torch.onnx.export(dynamo=True)` turns the program's quantize / dequantize ops into
QuantizeLinear / DequantizeLinear (int8 weights as initializers with their DequantizeLinear);
ONNX Runtime then fuses Q/DQ around conv into QLinearConv. onnx, onnxscript and onnxruntime
come with the `[export]` extra; without it the backend writes the .pt2 only.
"""

from __future__ import annotations

import importlib.util
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


def export_onnx(program: torch.export.ExportedProgram, path: Path) -> None:
    onnx_program = torch.onnx.export(program, dynamo=True, opset_version=OPSET, verbose=False)
    onnx_program.save(str(path))


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
