"""The seam between labquant's pipelines and a quantization library: a few small protocols.

Callbacks, pipelines and the benchmark talk only to these; everything a library does its own
way (in-place or returned prepare, observer modules or graph nodes, the deployable file format)
stays behind them. A backend is chosen with `backend=<name>` (conf/backend/<name>.yaml), so a
new one is one subpackage of quant/ plus one YAML and touches nothing in lit/, tasks/ or cli/.
As in torchao, prepared and converted models are returned: callers never assume that the module
they passed in was changed.

Every backend is a `Quantizer` (PTQ: check, prepare, convert, inspect) with `Artifacts` (save,
load, other runtimes, sizes). One whose `modes` include "qat" is also a `QATQuantizer` (prepare
for fine-tuning, the observer / BatchNorm schedule; learned exponents start and are read by
the shared `start_learned_scales` / `learned_thresholds` below); one that can write the
integer-only program of a power-of-two stage is also an `IntegerExporter`. The lab runs each
backend's own modes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, TypeGuard, runtime_checkable

from torch import Tensor, nn

from labquant.errors import ConfigError
from labquant.quant.names import LEARNED_THRESHOLD  # noqa: F401 (lit's optimizer groups)
from labquant.quant.qconfigs import QConfigSpec

MODES = ("ptq", "qat")


@runtime_checkable
class Int8Model(Protocol):
    """A converted model in the form that ships; calling it runs int8 kernels on the CPU."""

    def __call__(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class Quantizer(Protocol):
    """Post-training quantization: what every backend does."""

    name: str  # results.json's `backend`
    modes: tuple[str, ...]  # what the lab runs: ("ptq",) or ("ptq", "qat")
    stage_suffix: str  # the lab's stage folders: <mode>_<qconfig><suffix>

    def check(self, qconfig: QConfigSpec, mode: str) -> None:
        """Refuse a qconfig or mode this backend cannot realise (ConfigError), before work."""
        ...

    def prepare_ptq(self, net: nn.Module, qconfig: QConfigSpec, example: Tensor) -> nn.Module:
        """Fuse (BN folded) and insert observers; the result is calibrated by running batches."""
        ...

    def is_prepared(self, net: nn.Module) -> bool: ...

    def convert(self, prepared: nn.Module, qconfig: QConfigSpec, example: Tensor) -> Int8Model:
        """An int8 CPU copy in its deployable form; `prepared` stays trainable as it was."""
        ...

    def layer_table(
        self, fp32_net: nn.Module, prepared: nn.Module, int8: Int8Model, batch: Tensor
    ) -> list[dict[str, Any]]:
        """results.json's `layers`: per quantized layer its qparams, clamp hits and SQNR."""
        ...

    def layer_weights(self, prepared: nn.Module, names: list[str]) -> dict[str, Tensor]:
        """The float weights of the named layers of a prepared model (TensorBoard histograms)."""
        ...


@runtime_checkable
class QATQuantizer(Protocol):
    """Quantization-aware training: a backend whose `modes` include "qat"."""

    def prepare_qat(self, net: nn.Module, qconfig: QConfigSpec, example: Tensor) -> nn.Module:
        """Fuse (BN trainable) and insert fake quantization; the result is fine-tuned."""
        ...

    def set_observers(self, net: nn.Module, enabled: bool) -> None:
        """Let the QAT ranges (or learned exponents) move (True) or freeze them (False)."""
        ...

    def freeze_bn_stats(self, net: nn.Module) -> None:
        """Stop BatchNorm running statistics late in QAT so folded weights stop shifting."""
        ...

    def fake_quant_scales(self, net: nn.Module) -> dict[str, float]:
        """Every fake-quant scale by layer name (per-channel ones as their maximum), for logs."""
        ...

    def named_fake_quants(self, net: nn.Module) -> Iterable[tuple[str, nn.Module]]:
        """Every fake-quant module of a prepared model by the name fake_quant_scales uses
        (what the shared `learned_thresholds` reads)."""
        ...


@runtime_checkable
class Artifacts(Protocol):
    """The int8 model's files: what ships, and the runtimes that read them."""

    def save(self, int8: Int8Model, folder: Path) -> dict[str, Any]:
        """Write the int8 artifacts atomically; return results.json entries: the file names
        (`int8_<format>` keys) and `size_mib`, the size of the int8 weights file."""
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


@runtime_checkable
class IntegerExporter(Protocol):
    """A backend that turns a saved power-of-two stage into the integer-only program."""

    exports_integers: bool  # False where its settings make a program the integer ops cannot hold

    def integer_export(
        self,
        net: nn.Module,
        qconfig: QConfigSpec,
        folder: Path,
        saved: dict[str, Any],
        image_hw: tuple[int, int],
    ) -> Any:
        """An object with `program` (hw/program.py), `engine`, and `layer_codes(x)`: the torch
        int8 model's own output codes per op, to measure bit-exactness against."""
        ...


def exports_integers(backend: object) -> TypeGuard[IntegerExporter]:
    """Whether `labquant-export` can turn this backend's stages into the integer program: an
    IntegerExporter whose settings keep to the integer ops (not backend=pt2e_fused)."""
    return isinstance(backend, IntegerExporter) and backend.exports_integers


@runtime_checkable
class QuantBackend(Quantizer, Artifacts, Protocol):
    """What `backend=<name>` instantiates: a Quantizer with Artifacts."""


def start_learned_scales(prepared: nn.Module, batches: Iterable[Tensor]) -> int:
    """qconfig.learn_scales: the observers see `batches`, then every learnable threshold starts
    at their choice (quant/learned.py); returns how many (0: nothing learns). The same for every
    backend: the thresholds are modules of the prepared model, whatever its form."""
    from labquant.quant.learned import start_learning

    return start_learning(prepared, batches)


def learned_thresholds(backend: QATQuantizer, net: nn.Module) -> dict[str, float]:
    """Every learned log2 threshold by the names the backend's fake_quant_scales uses (per
    channel: their mean); empty without qconfig.learn_scales."""
    from labquant.quant.learned import learned_thresholds as thresholds

    return thresholds(backend.named_fake_quants(net))


def check_mode(backend: Quantizer, mode: str) -> None:
    """A mode the backend does not offer is the one-line error naming the ones it does."""
    if mode not in backend.modes or (mode == "qat" and not isinstance(backend, QATQuantizer)):
        raise ConfigError(
            f"backend={backend.name} does not support quant={mode} (it offers "
            f"{', '.join(backend.modes)}); choose another backend or quant={backend.modes[0]}"
        )
