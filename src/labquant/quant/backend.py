"""The seam between labquant's pipelines and a quantization library.

Callbacks, pipelines and the benchmark talk only to `QuantBackend`; everything a library does its
own way (in-place or returned prepare, observer modules or graph nodes, the deployable file
format) stays behind it. A backend is chosen with `backend=<name>` (conf/backend/<name>.yaml),
so a new one is one subpackage of quant/ plus one YAML and touches nothing in lit/, tasks/ or
cli/. As in torchao, prepared and converted models are returned: callers never assume that the
module they passed in was changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from labquant.quant.qconfigs import QConfigSpec


@runtime_checkable
class Int8Model(Protocol):
    """A converted model in the form that ships; calling it runs int8 kernels on the CPU."""

    def __call__(self, x: Tensor) -> Tensor: ...


class QuantBackend(Protocol):
    """Prepare, schedule, convert, inspect and save: the whole quantization lifecycle."""

    name: str

    def check(self, qconfig: QConfigSpec) -> None:
        """Refuse a qconfig this backend cannot realise (ConfigError), before any work."""
        ...

    def prepare_ptq(self, net: nn.Module, qconfig: QConfigSpec, example: Tensor) -> nn.Module:
        """Fuse (BN folded) and insert observers; the result is calibrated by running batches."""
        ...

    def prepare_qat(self, net: nn.Module, qconfig: QConfigSpec, example: Tensor) -> nn.Module:
        """Fuse (BN trainable) and insert fake quantization; the result is fine-tuned."""
        ...

    def is_prepared(self, net: nn.Module) -> bool: ...

    def set_observers(self, net: nn.Module, enabled: bool) -> None:
        """Let the QAT ranges move (True) or freeze them (False)."""
        ...

    def freeze_bn_stats(self, net: nn.Module) -> None:
        """Stop BatchNorm running statistics late in QAT so folded weights stop shifting."""
        ...

    def fake_quant_scales(self, net: nn.Module) -> dict[str, float]:
        """Every fake-quant scale by layer name (per-channel ones as their maximum), for logs."""
        ...

    def convert(self, prepared: nn.Module, example: Tensor) -> Int8Model:
        """An int8 CPU copy in its deployable form; `prepared` stays trainable as it was."""
        ...

    def layer_table(
        self, fp32_net: nn.Module, prepared: nn.Module, int8: Int8Model, batch: Tensor
    ) -> list[dict[str, Any]]:
        """results.json's `layers`: per quantized layer its qparams, clamp hits and SQNR."""
        ...

    def save(self, int8: Int8Model, folder: Path) -> dict[str, Any]:
        """Write the int8 artifacts atomically; return results.json entries: the file names
        and `size_mib`, the size of the int8 weights file."""
        ...

    def load(self, folder: Path, saved: dict[str, Any]) -> Int8Model:
        """The deployable model that `save` wrote into `folder` (`saved`: what it returned)."""
        ...

    def runtimes(self, folder: Path, saved: dict[str, Any]) -> dict[str, Int8Model]:
        """Other runtimes of the saved artifacts by name (pt2e: `onnxruntime` on the .onnx
        file), each tested on the test set beside the int8 model; empty when there are none."""
        ...

    def artifact_sizes(self, int8: Int8Model) -> dict[str, float]:
        """MiB of each saved form, measured in memory (the benchmark's `sizes`); `int8_mib` is
        the int8 weights file that `size_mib` in results.json measures."""
        ...
