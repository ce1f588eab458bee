"""ONNX Runtime as one more CPU runtime, for any ONNX file labquant writes: the FP32 model the
int8 speed is compared with, and a backend's int8 QDQ model. onnx, onnxscript and onnxruntime
come with the `[export]` extra; without it the ONNX paths are left out.
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

OPSET = 20  # every ONNX file labquant writes (FP32 and int8): the same opset
MODULES = ("onnx", "onnxscript", "onnxruntime")
FIX = "pass the .onnx file of a complete stage (rerun labquant-quantize)"


def available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in MODULES)


def quiet_exporter_logs() -> None:
    """onnx_ir / onnxscript log every optimization pass at INFO into the run's log file."""
    for name in ("onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)


class OnnxRuntimeModel:
    """An ONNX file (FP32 or int8 QDQ) run by ONNX Runtime on the CPU, all graph optimizations
    on (QDQ fusion into QLinearConv for an int8 one)."""

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
