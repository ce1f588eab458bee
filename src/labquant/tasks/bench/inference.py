"""`inference` and `sizes`: every FP32 CPU path against every int8 path, side by side in one run,
at batch 1 and 256.

FP32 contenders (tasks/fp32_paths.py): eager (contiguous and channels_last), Inductor-compiled
(freezing on) and ONNX Runtime. int8 contenders: each backend of `inference.backends` in the
form it ships (eager: frozen TorchScript; pt2e: the Q/DQ program through Inductor), and each
runtime of its saved artifacts (pt2e: ONNX Runtime on model_int8.onnx, named `ort_<qconfig>`),
for every qconfig. All of them are timed round-robin, so a busy spell hits each alike.

Each int8 figure is reported against the BEST FP32 path (speedup) and against that model's own
int8 / FP32 kernel limit at that batch size (kernels.py: every conv shape of the model timed
alone, summed; `<model>.kernel`): `of_kernel` = speedup / that limit, the share of what this
CPU's int8 kernels allow on these layers that the whole network gets. `inference.kernel`, one
large 3x3 conv, is the CPU's own ratio, for comparison between CPUs.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from labquant.config.groups import load_group_option
from labquant.config.instantiate import instantiate
from labquant.errors import ConfigError
from labquant.machine import cpu
from labquant.quant.backend import Int8Model, QuantBackend
from labquant.quant.qconfigs import QConfigSpec
from labquant.reports.artifacts import serialized_mib
from labquant.speed import BATCH_SIZES, best_fp32, ratio, speed_by_batch
from labquant.tasks.bench.common import build_model, normalized_batch
from labquant.tasks.bench.kernels import KERNEL_REPEATS, bench_kernel_ratio, model_kernel_ratio
from labquant.tasks.fp32_paths import fp32_runtimes

# Short names of a backend's other runtimes in bench.json (`ort_x86`).
RUNTIME_PREFIX = {"onnxruntime": "ort"}

log = logging.getLogger(__name__)

Runner = Callable[[Tensor], Tensor]


def backend_for(name: str, compile: bool, onnx: bool) -> QuantBackend:
    """conf/backend/<name>.yaml, with the bench's `compile` / `onnx` switches merged into the
    backends whose YAML declares those settings (the bench names no backend)."""
    option = load_group_option("backend", name, "inference.backends")
    switches = {
        key: value for key, value in (("compile", compile), ("onnx", onnx)) if key in option
    }
    return instantiate(OmegaConf.merge(option, switches), f"backend={name}")


def int8_model(
    backend: QuantBackend, fp32: nn.Module, qconfig: QConfigSpec, calibration: list[Tensor]
) -> Int8Model:
    """PTQ as labquant-quantize does it (prepare, observe, convert), without the Lightning loop;
    the result is the backend's deployable form (eager: the frozen TorchScript module)."""
    net = backend.prepare_ptq(copy.deepcopy(fp32), qconfig, calibration[0])
    with torch.inference_mode():
        for x in calibration:
            net(x)
    return backend.convert(net, qconfig, calibration[0])


def shipped_runtimes(backend: QuantBackend, int8: Int8Model) -> dict[str, Runner]:
    """The backend's other runtimes of its saved artifacts (pt2e: ONNX Runtime on
    model_int8.onnx), from a temporary folder; each has read its file when this returns."""
    with tempfile.TemporaryDirectory(prefix="labquant_bench_") as tmp:
        saved = backend.save(int8, Path(tmp))
        return dict(backend.runtimes(Path(tmp), saved))


def batch_row(
    fp32: dict[str, float], int8: dict[str, float], kernel_ratio: float | None
) -> dict[str, Any]:
    """One batch size: every path's img/s, the best FP32 path, and each int8 contender's
    speedup over it and share of the kernel ratio."""
    best_path, best = best_fp32(fp32)
    speedup = {name: ratio(value, best) for name, value in int8.items()}
    row: dict[str, Any] = {
        "fp32": fp32,
        "fp32_best": best,
        "fp32_best_path": best_path,
        "int8": int8,
        "speedup": speedup,
    }
    if kernel_ratio:
        row["of_kernel"] = {name: ratio(s, kernel_ratio) for name, s in speedup.items()}
    if int8:
        int8_path = max(int8, key=lambda name: int8[name])
        row["int8_best"], row["int8_best_path"] = int8[int8_path], int8_path
    return row


def timed_rows(
    fp32_paths: dict[str, Runner],
    int8: dict[str, Runner],
    repeats: dict[int, int],
    kernel_ratios: dict[int, float] | None,
) -> dict[str, Any]:
    """`b1` and `b256`: every path timed together by labquant.speed, labquant-quantize's
    timer, so the lab report and the bench agree on the same model and CPU."""
    measured = speed_by_batch({**fp32_paths, **int8}, repeats)
    return {
        f"b{b}": batch_row(
            {path: measured[b][path] for path in fp32_paths},
            {contender: measured[b][contender] for contender in int8},
            (kernel_ratios or {}).get(b),
        )
        for b in BATCH_SIZES
    }


def headline(
    row: dict[str, Any], flavours: dict[str, list[str]], kernel_ratio: float | None, key: str
) -> dict[str, Any]:
    """`int8_speedup_<b>`: every qconfig must deploy fast with SOME runtime, so each qconfig's
    best contender counts and the worst qconfig decides (`..._path` names that contender)."""
    best_of = {
        q: max(names, key=lambda name: row["speedup"][name]) for q, names in flavours.items()
    }
    decisive = min(best_of.values(), key=lambda name: row["speedup"][name])
    speedup = row["speedup"][decisive]
    out = {
        f"int8_speedup_{key}": speedup,
        f"int8_speedup_{key}_path": decisive,
        f"deploy_{key}": best_of,  # the int8 path to ship per qconfig on this CPU
    }
    if kernel_ratio:
        out[f"int8_of_kernel_{key}"] = ratio(speedup, kernel_ratio)
    return out


def supports(backend: QuantBackend, spec: QConfigSpec) -> bool:
    """Whether the backend quantizes this qconfig (backend=pt2e_fused refuses pot at zero
    point 128, for one): a refused pair is left out of the bench, and the log says why."""
    try:
        backend.check(spec, "ptq")
    except ConfigError as refused:
        log.info("inference: no %s contender: %s", contender(backend.name, spec.name), refused)
        return False
    return True


def contender(backend: str, qconfig: str) -> str:
    """`pt2e_pot`: a backend's own int8 form of a qconfig, as bench.json names it."""
    return f"{backend}_{qconfig}"


def qconfig_ratios(
    int8: dict[str, float], backends: list[str], qconfigs: list[str], key: str
) -> dict[str, float]:
    """`<backend>_<qconfig>_over_<first qconfig>_<key>`: each qconfig's img/s over the first
    qconfig's in the same backend (`pt2e_pot_over_x86_b1` with the default qconfigs), what a
    qconfig's scales cost at equal runtime."""
    first, *rest = qconfigs
    out = {}
    for backend in backends:
        base = int8.get(contender(backend, first))
        for qconfig in rest:
            name = contender(backend, qconfig)
            if base and name in int8:
                out[f"{name}_over_{first}_{key}"] = ratio(int8[name], base)
    return out


def bench_model(
    name: str,
    backends: dict[str, QuantBackend],
    qconfigs: dict[str, QConfigSpec],
    repeats: dict[int, int],
    calibration_batches: int,
    compile: bool = True,
    onnx: bool = True,
    kernel_repeats: int | None = None,
    timed: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(inference row, sizes row) of one model; `kernel_repeats`: rounds of the model's own
    kernel limit (None: none measured); `timed=False`: the sizes only."""
    fp32 = build_model(name).eval()
    calibration = [normalized_batch(64, seed=i)[0] for i in range(calibration_batches)]
    fp32_mib = serialized_mib(fp32.state_dict())
    sizes: dict[str, Any] = {"fp32_mib": fp32_mib}
    int8: dict[str, Runner] = {}
    others: dict[str, Runner] = {}  # other runtimes, after the backends' own forms
    flavours: dict[str, list[str]] = {q: [] for q in qconfigs}
    for backend in backends.values():
        for qconfig, spec in qconfigs.items():
            if not supports(backend, spec):
                continue
            model = int8_model(backend, fp32, spec, calibration)
            own = contender(backend.name, qconfig)
            artifact = backend.artifact_sizes(model)
            sizes[own] = {**artifact, "ratio": ratio(artifact["int8_mib"], fp32_mib)}
            if not timed:
                continue
            int8[own] = model
            flavours[qconfig].append(own)
            if onnx:
                for runtime, run in shipped_runtimes(backend, model).items():
                    other = f"{RUNTIME_PREFIX.get(runtime, runtime)}_{qconfig}"
                    others[other] = run
                    flavours[qconfig].append(other)
    sizes["ratio"] = max(v["ratio"] for v in sizes.values() if isinstance(v, dict))
    if not timed:
        return {}, sizes
    int8.update(others)
    fp32_paths = fp32_runtimes(fp32, calibration[0], compile=compile, onnx=onnx)
    kernel = model_kernel_ratio(fp32, BATCH_SIZES, kernel_repeats) if kernel_repeats else None
    ratios = {b: kernel[f"b{b}"]["int8_over_fp32"] for b in BATCH_SIZES} if kernel else None
    row = timed_rows(fp32_paths, int8, repeats, ratios)
    if kernel:
        row["kernel"] = kernel
    names = [backend.name for backend in backends.values()]
    for b in BATCH_SIZES:
        row.update(headline(row[f"b{b}"], flavours, (ratios or {}).get(b), f"b{b}"))
        row.update(qconfig_ratios(row[f"b{b}"]["int8"], names, list(qconfigs), f"b{b}"))
    return row, sizes


def bench_inference(
    models: list[str],
    backends: dict[str, QuantBackend],
    qconfigs: dict[str, QConfigSpec],
    repeats_b1: int,
    repeats_b256: int,
    calibration_batches: int,
    compile: bool = True,
    onnx: bool = True,
    kernel: dict[str, int] | None = None,
    timed: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`inference` and `sizes` sections for every model (both need the same int8 models);
    `kernel`: bench_kernel_ratio's arguments (None: no kernel ratio); `timed=False`: sizes
    only (nothing compiled or timed)."""
    inference: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "isa": cpu()["isa"],
        "backends": [b.name for b in backends.values()],
    }
    if timed and kernel is not None:
        inference["kernel"] = bench_kernel_ratio(**kernel)
    sizes: dict[str, Any] = {
        "file": "int8_mib: what labquant saves per backend (eager: state_dict, pt2e: .pt2)"
    }
    repeats = {1: repeats_b1, 256: repeats_b256}
    for name in models:
        row, sizes[name] = bench_model(
            name,
            backends,
            qconfigs,
            repeats,
            calibration_batches,
            compile=compile,
            onnx=onnx,
            kernel_repeats=kernel.get("repeats", KERNEL_REPEATS) if kernel is not None else None,
            timed=timed,
        )
        if timed:
            inference[name] = row
    return inference, sizes
