"""The FP32 ways to run an eval-mode network on the CPU, so that an int8 speedup is measured
against the fastest of them and not against the slowest convenient one.

- `eager`: the module as it is (contiguous input);
- `eager_channels_last`: a channels_last copy fed channels_last input (oneDNN's preferred
  layout; often, not always, the faster eager path);
- `compiled`: `torch.compile` with Inductor, weights frozen (BN folded, weights prepacked for
  oneDNN), one static-shape compile per batch size (30-60 s each on 2 cores);
- `onnxruntime`: the FP32 model exported with `torch.onnx.export(dynamo=True)` (dynamic batch)
  and run by ONNX Runtime, when onnx, onnxscript and onnxruntime are installed.

Every runtime is a callable from a float NCHW batch to the logits, gradients off.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from labquant import onnx_runtime
from labquant.speed import inductor_options

FP32_ONNX = "model_fp32.onnx"


class EagerRuntime:
    """The module called as it is, optionally with channels_last weights and input."""

    def __init__(self, net: nn.Module, channels_last: bool = False) -> None:
        self.channels_last = channels_last
        self.net = (
            copy.deepcopy(net).to(memory_format=torch.channels_last) if channels_last else net
        )

    def __call__(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            return self.net(x)


class CompiledRuntime:
    """torch.compile(Inductor, freezing on, static shapes): the first call with each batch
    size compiles (with the options the pt2e int8 program gets at that size,
    labquant.speed.inductor_options); later calls with that size run the generated code."""

    def __init__(self, net: nn.Module) -> None:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # as the pt2e int8 path sets it: constants folded
        self.net = net
        self.compiled: dict[int, Callable[[Tensor], Tensor]] = {}

    def __call__(self, x: Tensor) -> Tensor:
        size = len(x)
        if size not in self.compiled:
            self.compiled[size] = torch.compile(
                self.net, dynamic=False, options=inductor_options(size)
            )
        with torch.no_grad():
            return self.compiled[size](x.contiguous())


def export_fp32_onnx(net: nn.Module, example: Tensor, path: Path) -> None:
    """The FP32 model as ONNX with a dynamic batch dimension (same opset as the int8 file)."""
    example = example[:2].detach().cpu().clone()
    onnx_runtime.quiet_exporter_logs()
    onnx_program = torch.onnx.export(
        net,
        (example,),
        dynamo=True,
        opset_version=onnx_runtime.OPSET,
        dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
        verbose=False,
    )
    onnx_program.save(str(path))


def onnxruntime_runtime(
    net: nn.Module, example: Tensor, workdir: Path | None
) -> Callable[[Tensor], Tensor]:
    """ONNX Runtime on the exported FP32 model; the file stays in `workdir` when given (else in
    a temporary folder that is removed once the session has read it)."""
    threads = torch.get_num_threads()
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        export_fp32_onnx(net, example, workdir / FP32_ONNX)
        return onnx_runtime.OnnxRuntimeModel(workdir / FP32_ONNX, threads=threads)
    with tempfile.TemporaryDirectory(prefix="labquant_fp32_onnx_") as tmp:
        path = Path(tmp) / FP32_ONNX
        export_fp32_onnx(net, example, path)
        return onnx_runtime.OnnxRuntimeModel(path, threads=threads)


def fp32_runtimes(
    net: nn.Module,
    example: Tensor,
    compile: bool = True,
    onnx: bool = True,
    workdir: Path | None = None,
) -> dict[str, Callable[[Tensor], Tensor]]:
    """Every FP32 CPU runtime of `net` by name (see the module docstring); `compile=False`
    leaves out `compiled`, `onnx=False` or a missing onnx stack leaves out `onnxruntime`.
    `net` is put in eval mode and is not otherwise changed."""
    net = net.eval()
    runtimes: dict[str, Callable[[Tensor], Tensor]] = {
        "eager": EagerRuntime(net),
        "eager_channels_last": EagerRuntime(net, channels_last=True),
    }
    if compile:
        runtimes["compiled"] = CompiledRuntime(net)
    if onnx and onnx_runtime.available():
        runtimes["onnxruntime"] = onnxruntime_runtime(net, example, workdir)
    return runtimes
