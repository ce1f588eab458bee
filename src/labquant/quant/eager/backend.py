"""`backend=eager`: the backend protocols on eager-mode torch.ao.quantization.

Eager prepare works in place on modules (QuantStub, FloatFunctional, fused Conv+BN); the int8
model ships as a traced, frozen TorchScript file, the only form that runs an eager int8 model
without Python.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from labquant.quant.backend import check_mode
from labquant.quant.eager import bias_quant, conv_bn, inspect, integer, widths, workflow
from labquant.quant.eager.export import load_torchscript, save_torchscript, to_torchscript
from labquant.quant.eager.qconfigs import (
    eager_qconfig,
    engine_for,
    layer_qconfig_of,
    relu_output_qconfig,
)
from labquant.quant.layers import quantizable_layers
from labquant.quant.plan import QuantPlan, build_plan
from labquant.quant.qconfigs import QConfigSpec
from labquant.reports.artifacts import file_size_mib, serialized_mib, write_atomic, write_torch

INT8_TORCHSCRIPT = "model_int8.pt"
INT8_STATE_DICT = "model_int8_state_dict.pt"


def _realise(net: nn.Module, plan: QuantPlan, qat: bool, engine: str | None = None) -> nn.Module:
    """Fuse `net` and attach the plan's observers (PTQ) or fake-quants (QAT), with the int8
    engine whose kernels run the plan."""
    workflow.set_engine(engine or engine_for(plan))
    prepare = workflow.prepare_qat if qat else workflow.prepare_ptq
    relu = relu_output_qconfig(plan, qat=qat)
    return prepare(net, eager_qconfig(plan, qat=qat), relu, layer_qconfig_of(plan, qat))


@dataclass
class EagerInt8Model:
    """The converted eager module (inspectable) and its frozen TorchScript (what ships)."""

    module: nn.Module | None
    script: torch.jit.ScriptModule
    engine: str

    def __call__(self, x: Tensor) -> Tensor:
        # Weights are prepacked per engine: run them with the one they were converted for.
        workflow.set_engine(self.engine)
        return self.script(x)


class EagerBackend:
    """Eager-mode fuse / observe / convert: a Quantizer, QATQuantizer, Artifacts and
    IntegerExporter (quant/backend.py)."""

    modes = ("ptq", "qat")
    exports_integers = True

    def __init__(self, name: str = "eager", stage_suffix: str = "") -> None:
        # Its conf/backend option (eager.yaml); suffix "": the lab's stage folders before PT2E,
        # ptq_pot, qat_pot.
        self.name, self.stage_suffix = str(name), str(stage_suffix)

    def check(self, qconfig: QConfigSpec, mode: str = "ptq") -> None:
        check_mode(self, mode)
        engine_for(qconfig)  # the engine's int8 kernels must be in this torch build

    def _prepare(self, net: nn.Module, qconfig: QConfigSpec, qat: bool) -> nn.Module:
        plan = build_plan(qconfig, quantizable_layers(net))
        prepared = _realise(net, plan, qat)
        if qat:
            conv_bn.install(prepared)  # torch's fold, without the division's dead gradient
        if qat and plan.snap_bias:
            bias_quant.install(prepared)  # fine-tune against the bias convert will ship
        return prepared

    def prepare_ptq(self, net: nn.Module, qconfig: QConfigSpec, example: Tensor) -> nn.Module:
        return self._prepare(net, qconfig, qat=False)

    def prepare_qat(self, net: nn.Module, qconfig: QConfigSpec, example: Tensor) -> nn.Module:
        return self._prepare(net, qconfig, qat=True)

    def is_prepared(self, net: nn.Module) -> bool:
        return workflow.is_prepared(net)

    def set_observers(self, net: nn.Module, enabled: bool) -> None:
        if enabled:
            workflow.enable_observers(net)
        else:
            workflow.disable_observers(net)

    def freeze_bn_stats(self, net: nn.Module) -> None:
        workflow.freeze_bn_stats(net)

    def fake_quant_scales(self, net: nn.Module) -> dict[str, float]:
        return workflow.fake_quant_scales(net)

    def named_fake_quants(self, net: nn.Module) -> Iterable[tuple[str, nn.Module]]:
        return net.named_modules()

    def convert(self, prepared: nn.Module, qconfig: QConfigSpec, example: Tensor) -> EagerInt8Model:
        engine = engine_for(qconfig)  # the engine prepare chose for the same qconfig
        workflow.set_engine(engine)
        module = workflow.convert_int8(prepared)
        bias_quant.remove(module)
        widths.install_clamps(module, widths.activation_ranges(prepared))
        if build_plan(qconfig).snap_bias:
            integer.snap_biases(module, example.detach().cpu())
        script = to_torchscript(module, example[:1].detach().cpu())
        return EagerInt8Model(module=module, script=script, engine=engine)

    def layer_table(
        self, fp32_net: nn.Module, prepared: nn.Module, int8: EagerInt8Model, batch: Tensor
    ) -> list[dict[str, Any]]:
        if int8.module is None:
            raise ValueError("a loaded TorchScript file has no layers to inspect")
        return inspect.layer_table(fp32_net, prepared, int8.module, batch)

    def layer_weights(self, prepared: nn.Module, names: list[str]) -> dict[str, Tensor]:
        return inspect.layer_weights(prepared, names)

    def save(self, int8: EagerInt8Model, folder: Path) -> dict[str, Any]:
        folder.mkdir(parents=True, exist_ok=True)
        script = io.BytesIO()  # in memory first: a full disk is then Python's OSError
        save_torchscript(int8.script, script)
        write_atomic(folder / INT8_TORCHSCRIPT, lambda tmp: tmp.write_bytes(script.getbuffer()))
        state_path = folder / INT8_STATE_DICT
        if int8.module is not None:
            write_torch(state_path, int8.module.state_dict())
        return {
            "size_mib": file_size_mib(state_path),
            "int8_torchscript": INT8_TORCHSCRIPT,
            "int8_state_dict": INT8_STATE_DICT,
            "int8_engine": int8.engine,
        }

    def load(self, folder: Path, saved: dict[str, Any]) -> EagerInt8Model:
        script = load_torchscript(folder / saved.get("int8_torchscript", INT8_TORCHSCRIPT))
        engine = saved.get("int8_engine") or "x86"
        return EagerInt8Model(module=None, script=script, engine=engine)

    def integer_export(
        self,
        net: nn.Module,
        qconfig: QConfigSpec,
        folder: Path,
        saved: dict[str, Any],
        image_hw: tuple[int, int],
    ) -> integer.IntegerExport:
        """The saved int8 model of a stage folder as an integer program (hw/program.py).

        `net` is the stage's FP32 architecture, unprepared: it is fused and converted the same
        way (the module structure is the same after PTQ and QAT), then the saved int8 state dict
        (weights_only=True) gives it the stage's weights, biases and scales.
        """
        qconfig.scheme.require_integer_program(qconfig.name)
        plan = build_plan(qconfig, quantizable_layers(net))
        engine = saved.get("int8_engine") or engine_for(plan)
        prepared = _realise(net, plan, qat=False, engine=engine)
        ranges = widths.activation_ranges(prepared)
        module = workflow.convert_int8(prepared)
        state = torch.load(
            folder / saved.get("int8_state_dict", INT8_STATE_DICT), weights_only=True
        )
        module.load_state_dict(state)
        widths.install_clamps(module, ranges)
        clamp = {
            row["name"]: row.get("clamp") for row in saved.get("layers") or [] if "name" in row
        }
        program = integer.integer_program(
            module, image_hw, clamp, ranges, lambda name: plan.layer(name).weight.bits
        )
        return integer.IntegerExport(module.eval(), program, engine)

    def runtimes(self, folder: Path, saved: dict[str, Any]) -> dict[str, Any]:
        """The TorchScript file is the only runtime of an eager int8 model."""
        return {}

    def artifact_sizes(self, int8: EagerInt8Model) -> dict[str, float]:
        sizes = {"torchscript_mib": serialized_mib(int8.script, save_torchscript)}
        if int8.module is not None:
            sizes["int8_mib"] = serialized_mib(int8.module.state_dict())
        return sizes
