"""`backend=pt2e`: the backend protocols on torch.export + torchao (prepare_pt2e /
prepare_qat_pt2e / convert_pt2e).

The float model is captured with `torch.export`, annotated by a torchao Quantizer (quantizer.py),
observed or fake-quantized inside Lightning's loops like eager, then converted to a Q/DQ graph
and re-exported: `model_int8.pt2` (torch.export.save, loadable without labquant once torchao is
imported) is what ships; `model_int8.onnx` (QuantizeLinear / DequantizeLinear) beside it when
the `[export]` extra is installed. On the CPU the program runs through torch.compile with
Inductor (freezing on), which lowers the Q/DQ patterns to oneDNN int8 kernels.
"""

from __future__ import annotations

import copy
import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.fx import GraphModule
from torchao.quantization.pt2e import FakeQuantizeBase
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

from labquant import onnx_runtime
from labquant.errors import ConfigError
from labquant.machine import has_vnni
from labquant.onnx_runtime import OnnxRuntimeModel
from labquant.quant.backend import check_mode
from labquant.quant.layers import quantizable_layers
from labquant.quant.plan import QuantPlan, build_plan
from labquant.quant.pt2e import (
    bias_quant,
    conv_bn,
    graph,
    inspect,
    integer,
    onnx_export,
    stem,
    widths,
    zero_points,
)
from labquant.quant.pt2e.quantizer import quantizer_for
from labquant.quant.qconfigs import QConfigSpec
from labquant.reports.artifacts import file_size_mib, write_atomic
from labquant.speed import inductor_options

INT8_PT2 = "model_int8.pt2"
INT8_ONNX = "model_int8.onnx"
SUPPORTED_ENGINES = ("x86", "fbgemm")  # what X86InductorQuantizer / Inductor's lowering target
_PREPARED_ATTR = "_labquant_prepared"  # marks a GraphModule this backend prepared
FIX_FILE = "pass stage_dir / int8 path of a complete backend=pt2e stage (rerun labquant-quantize)"


@dataclass
class PT2EInt8Model:
    """The converted, re-exported int8 program; calling it runs Inductor's int8 kernels.

    Each batch shape is compiled once, on its first call (30-60 s with freezing on 2 cores; small
    batches with Inductor's C++ wrapper, labquant.speed.inductor_options), and computes exactly
    the rows it is given: no batch is padded to a shape compiled before, so a
    batch-256 figure is the cost of 256 images. `compile=False` runs the Q/DQ graph as it is
    (float simulation, slow).
    """

    program: torch.export.ExportedProgram
    qconfig: str
    compile: bool = True
    _module: nn.Module | None = field(default=None, repr=False)
    _inductor_module: nn.Module | None = field(default=None, repr=False)
    _compiled: dict[int, Any] = field(default_factory=dict, repr=False)

    @property
    def module(self) -> nn.Module:
        if self._module is None:
            self._module = self.program.module()
        return self._module

    @property
    def inductor_module(self) -> nn.Module:
        """`module` with its post-ReLU activations at zero point 0, bit-identical
        (quant/pt2e/zero_points.py): what Inductor compiles."""
        if self._inductor_module is None:
            self._inductor_module, _ = zero_points.zero_point_free_relus(self.module)
        return self._inductor_module

    def _runner(self, batch: int) -> Any:
        if not self.compile:
            return self.module
        if batch not in self._compiled:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            self._compiled[batch] = torch.compile(
                copy.copy(self.inductor_module), dynamic=False, options=inductor_options(batch)
            )
        return self._compiled[batch]

    def __call__(self, x: Tensor) -> Tensor:
        x = x.detach().cpu().contiguous()
        with torch.no_grad():
            return self._runner(len(x))(x)


def fusable(plan: QuantPlan) -> bool:
    """Whether Inductor lowers a power-of-two conv + add + relu as one int8 conv: only with
    8-bit post-ReLU outputs at zero point 0 (zero point 128 needs a clamp after the ReLU,
    narrowed codes one after the add, and either breaks the pattern: measured 2-3x slower)."""
    relu = plan.default.relu_output
    return relu.unsigned and relu.bits == 8


class PT2EBackend:
    """torch.export + torchao PT2E: a Quantizer, QATQuantizer, Artifacts and IntegerExporter
    (quant/backend.py)."""

    modes = ("ptq", "qat")

    def __init__(
        self,
        compile: bool = True,
        onnx: bool = True,
        stem: stem.StemMode = "auto",
        fuse_residual_add: bool = False,
        name: str = "pt2e",
        stage_suffix: str = "_pt2e",
    ) -> None:
        # Its identity is its conf/backend option (pt2e.yaml, pt2e_fused.yaml share this class):
        # results' `backend`, bench contenders, the lab's stage folders <mode>_<qconfig><suffix>.
        self.name, self.stage_suffix = str(name), str(stage_suffix)
        self.compile = bool(compile)
        self.stem = stem
        self.fuse_residual_add = bool(fuse_residual_add)
        # Fused, the conv feeding each residual add has no QuantizeLinear: ONNX Runtime would run
        # it in FP32, and the integer program has no conv-with-accumulate op. Neither is written.
        self.onnx = bool(onnx) and not self.fuse_residual_add
        self.exports_integers = not self.fuse_residual_add

    def check(self, qconfig: QConfigSpec, mode: str = "ptq") -> None:
        check_mode(self, mode)
        if not qconfig.scheme.widths and qconfig.engine not in SUPPORTED_ENGINES:
            raise ConfigError(
                f"backend=pt2e does not support qconfig={qconfig.name} (engine "
                f"{qconfig.engine}): torchao's X86InductorQuantizer targets x86; use qconfig=x86, "
                "pot or pot_unsigned, or backend=eager"
            )
        if self.fuse_residual_add and qconfig.scheme.widths and not fusable(build_plan(qconfig)):
            raise ConfigError(
                f"backend.fuse_residual_add=true does not support qconfig={qconfig.name} "
                f"(activations={qconfig.activations}, activation_bits="
                f"{qconfig.activation_bits}): Inductor fuses the add's ReLU only into 8-bit "
                "outputs at zero point 0; use qconfig=pot_unsigned, or backend=pt2e"
            )

    def _prepare(self, net: nn.Module, qconfig: QConfigSpec, example: Tensor, qat: bool):
        self.check(qconfig, "qat" if qat else "ptq")
        net.train(qat)
        captured = graph.capture(net, example)
        plan = build_plan(qconfig, quantizable_layers(net))
        quantizer = quantizer_for(
            plan, qat=qat, reduce_range=not has_vnni(), fuse_residual_add=self.fuse_residual_add
        )
        prepare = prepare_qat_pt2e if qat else prepare_pt2e
        prepared = prepare(captured, quantizer)
        if qat and plan.snap_bias:
            bias_quant.install(prepared)  # fine-tune against the bias convert will ship
        prepared = graph.allow_train_eval(prepared)
        setattr(prepared, _PREPARED_ATTR, True)
        return prepared.train(qat)

    def prepare_ptq(self, net: nn.Module, qconfig: QConfigSpec, example: Tensor) -> nn.Module:
        return self._prepare(net, qconfig, example, qat=False)

    def prepare_qat(self, net: nn.Module, qconfig: QConfigSpec, example: Tensor) -> nn.Module:
        return self._prepare(net, qconfig, example, qat=True)

    def is_prepared(self, net: nn.Module) -> bool:
        return isinstance(net, GraphModule) and hasattr(net, _PREPARED_ATTR)

    def set_observers(self, net: nn.Module, enabled: bool) -> None:
        for m in net.modules():
            if isinstance(m, FakeQuantizeBase):
                m.enable_observer(enabled)

    def freeze_bn_stats(self, net: nn.Module) -> None:
        graph.freeze_batch_norm_stats(net)

    def fake_quant_scales(self, net: nn.Module) -> dict[str, float]:
        return inspect.fake_quant_scales(net)

    def named_fake_quants(self, net: nn.Module) -> Iterable[tuple[str, nn.Module]]:
        return inspect.named_fake_quants(net)

    def convert(self, prepared: nn.Module, qconfig: QConfigSpec, example: Tensor) -> PT2EInt8Model:
        work = copy.deepcopy(prepared).cpu().eval()  # `prepared` keeps training as it was
        bias_quant.remove(work)  # convert folds BN itself; snap_biases below does the rest
        conv_bn.sync_fold_divisors(work, detach=False)  # torchao's fold pattern, as prepared
        converted = convert_pt2e(work)
        plan = build_plan(qconfig)
        if plan.snap_bias:
            inspect.snap_biases(converted)
        if plan.scheme.widths:  # full-range and narrowed power-of-two codes
            if not stem.int8_stem(self.stem, has_vnni()):  # quant/pt2e/stem.py
                stem.per_tensor_stem_weight(converted)
            widths.clamp_narrow_codes(converted)  # narrowed codes in every runtime
        graph.drop_unused_state(converted)
        example = example[:2].detach().cpu().clone()  # not a view: export would store its base
        program = torch.export.export(
            converted, (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)
        )
        strip_debug_metadata(program)
        return PT2EInt8Model(program=program, qconfig=qconfig.name, compile=self.compile)

    def layer_table(
        self, fp32_net: nn.Module, prepared: nn.Module, int8: PT2EInt8Model, batch: Tensor
    ) -> list[dict[str, Any]]:
        return inspect.layer_table(fp32_net, prepared, int8.module, batch)

    def layer_weights(self, prepared: nn.Module, names: list[str]) -> dict[str, Tensor]:
        return inspect.layer_weights(prepared, names)

    def save(self, int8: PT2EInt8Model, folder: Path) -> dict[str, Any]:
        folder.mkdir(parents=True, exist_ok=True)
        pt2 = folder / INT8_PT2
        data = pt2_bytes(int8.program)  # archive named "archive", not after a temporary file
        write_atomic(pt2, lambda tmp: tmp.write_bytes(data))
        saved: dict[str, Any] = {
            "size_mib": file_size_mib(pt2),
            "int8_pt2": INT8_PT2,
            "int8_engine": "inductor",
        }
        if self.onnx and onnx_runtime.available():
            path = folder / INT8_ONNX
            write_atomic(path, lambda tmp: onnx_export.export_onnx(int8.program, tmp))
            saved["int8_onnx"] = INT8_ONNX
            saved["onnx_size_mib"] = file_size_mib(path)
        return saved

    def load(self, folder: Path, saved: dict[str, Any]) -> PT2EInt8Model:
        return PT2EInt8Model(
            program=load_pt2(folder / saved.get("int8_pt2", INT8_PT2)),
            qconfig=str(saved.get("qconfig", "")),
            compile=self.compile,
        )

    def integer_export(
        self,
        net: nn.Module,
        qconfig: QConfigSpec,
        folder: Path,
        saved: dict[str, Any],
        image_hw: tuple[int, int],
    ) -> integer.PT2EIntegerExport:
        """The stage's `.pt2` program as an integer program (hw/program.py), with the program's
        own codes per op and its runtimes' logits (Inductor when `compile`, ONNX Runtime on the
        `.onnx` file when there is one) to measure the reference against. `net` and
        `image_hw` are not needed: the program holds its weights and shapes."""
        qconfig.scheme.require_integer_program(qconfig.name)
        program = load_pt2(folder / saved.get("int8_pt2", INT8_PT2))
        runtimes: dict[str, Any] = {}
        if self.compile:
            runtimes["inductor"] = PT2EInt8Model(program, qconfig.name, compile=True)
        runtimes.update(self.runtimes(folder, saved))
        clamp = {
            row["name"]: row.get("clamp") for row in saved.get("layers") or [] if "name" in row
        }
        return integer.integer_export(program.module(), clamp, runtimes)

    def runtimes(self, folder: Path, saved: dict[str, Any]) -> dict[str, Any]:
        """Other runtimes of the saved artifacts, tested like the int8 model: ONNX Runtime on
        model_int8.onnx."""
        if "int8_onnx" not in saved:
            return {}
        path = folder / saved["int8_onnx"]
        return {"onnxruntime": OnnxRuntimeModel(path, threads=torch.get_num_threads())}

    def artifact_sizes(self, int8: PT2EInt8Model) -> dict[str, float]:
        pt2 = len(pt2_bytes(int8.program)) / 2**20
        return {"pt2_mib": pt2, "int8_mib": pt2}


DEBUG_METADATA = ("stack_trace", "from_node", "torch_fn")


def strip_debug_metadata(program: torch.export.ExportedProgram) -> None:
    """Drop what only a debugger reads (source stack traces, provenance) and the example
    inputs: a third of a small model's .pt2 otherwise. `nn_module_stack` stays: layer names."""
    for node in program.graph.nodes:
        for key in DEBUG_METADATA:
            node.meta.pop(key, None)
    program.example_inputs = None


def pt2_bytes(program: torch.export.ExportedProgram) -> bytes:
    """torch.export.save's archive with its JSON records (the graph: a fifth of a small int8
    model's file) deflated. The tensor records stay stored as torch wrote them; the PT2 reader
    (miniz) inflates any deflated record, so plain `torch.export.load` reads the file."""
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    packed = io.BytesIO()
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(packed, "w") as dst:
        for info in src.infolist():
            record = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            if info.filename.endswith(".json"):
                record.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(record, src.read(info.filename))
    return packed.getvalue()


def load_pt2(path: Path) -> torch.export.ExportedProgram:
    """torch.export.load with the one-line error for a missing or damaged file (torchao is
    imported by this module: a converted program's Q/DQ ops are registered by it)."""
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; {FIX_FILE}")
    try:
        return torch.export.load(path)
    except Exception as exc:  # zip / pickle / schema errors all mean "not a .pt2 program"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path} is not a readable .pt2 program ({reason}); {FIX_FILE}") from exc
