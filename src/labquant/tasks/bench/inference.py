"""`inference` and `sizes`: FP32 (best of contiguous and channels_last, eager) against the int8
model in the form the backend ships (eager: frozen TorchScript), on the CPU at batch 1 and 256."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from labquant.quant.backend import Int8Model, QuantBackend
from labquant.quant.qconfigs import QConfigSpec
from labquant.reports.artifacts import serialized_mib
from labquant.tasks.bench.common import build_model, normalized_batch
from labquant.tasks.bench.timing import interleaved_best_seconds, rate, ratio

BATCH_SIZES = (1, 256)


def int8_model(
    backend: QuantBackend, fp32: nn.Module, qconfig: QConfigSpec, calibration: list[Tensor]
) -> Int8Model:
    """PTQ as labquant-quantize does it (prepare, observe, convert), without the Lightning loop;
    the result is the backend's deployable form (eager: the frozen TorchScript module)."""
    net = backend.prepare_ptq(copy.deepcopy(fp32), qconfig, calibration[0])
    with torch.inference_mode():
        for x in calibration:
            net(x)
    return backend.convert(net, calibration[0])


def forward_pass(net: Callable[[Tensor], Tensor], batch: Tensor) -> Callable[[], object]:
    """One inference call (an int8 model sets its own kernels per call: contenders alternate)."""
    return lambda: net(batch)


def interleaved_img_s(
    nets: dict[str, tuple[Callable[[Tensor], Tensor], bool]], batch: Tensor, repeats: int
) -> dict[str, float]:
    """Images per second of each (model, channels_last input), timed round-robin; the warm-up
    passes let oneDNN build its kernels for this shape."""
    channels_last = batch.contiguous(memory_format=torch.channels_last)
    runs = {
        name: forward_pass(net, channels_last if nhwc else batch)
        for name, (net, nhwc) in nets.items()
    }
    with torch.inference_mode():
        seconds = interleaved_best_seconds(runs, repeats, warmup=2 if len(batch) == 1 else 1)
    return {name: rate(len(batch), s) for name, s in seconds.items()}


def bench_model(
    name: str,
    backend: QuantBackend,
    qconfigs: dict[str, QConfigSpec],
    repeats: dict[int, int],
    calibration_batches: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(inference row, sizes row) of one model."""
    fp32 = build_model(name).eval()
    calibration = [normalized_batch(64, seed=i)[0] for i in range(calibration_batches)]
    batches = {b: normalized_batch(b, seed=100 + b)[0] for b in BATCH_SIZES}
    nhwc = copy.deepcopy(fp32).to(memory_format=torch.channels_last)
    contenders: dict[str, tuple[Callable[[Tensor], Tensor], bool]] = {
        "fp32_contiguous": (fp32, False),
        "fp32_channels_last": (nhwc, True),
    }
    fp32_mib = serialized_mib(fp32.state_dict())
    sizes: dict[str, Any] = {"fp32_mib": fp32_mib}
    for qconfig, spec in qconfigs.items():
        int8 = int8_model(backend, fp32, spec, calibration)
        contenders[qconfig] = (int8, False)
        artifact = backend.artifact_sizes(int8)
        sizes[qconfig] = {**artifact, "ratio": ratio(artifact["int8_mib"], fp32_mib)}
    row: dict[str, Any] = {"fp32": {}, "fp32_best": {}, **{q: {} for q in qconfigs}}
    for b in BATCH_SIZES:
        key = f"b{b}"
        measured = interleaved_img_s(contenders, batches[b], repeats[b])
        row["fp32"][key] = {
            "contiguous": measured["fp32_contiguous"],
            "channels_last": measured["fp32_channels_last"],
        }
        row["fp32_best"][key] = max(row["fp32"][key].values())
        for qconfig in qconfigs:
            row[qconfig][key] = measured[qconfig]
            row[f"{qconfig}_speedup_{key}"] = ratio(measured[qconfig], row["fp32_best"][key])
    for b in BATCH_SIZES:  # the target applies to every int8 flavour: report the worst
        row[f"int8_speedup_b{b}"] = min(row[f"{q}_speedup_b{b}"] for q in qconfigs)
    sizes["ratio"] = max(sizes[q]["ratio"] for q in qconfigs)
    return row, sizes


def bench_inference(
    models: list[str],
    backend: QuantBackend,
    qconfigs: dict[str, QConfigSpec],
    repeats_b1: int,
    repeats_b256: int,
    calibration_batches: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`inference` and `sizes` sections for every model (both need the same int8 models)."""
    inference: dict[str, Any] = {"threads": torch.get_num_threads(), "backend": backend.name}
    sizes: dict[str, Any] = {"file": "state_dict (as labquant saves it: size_mib in results.json)"}
    for name in models:
        inference[name], sizes[name] = bench_model(
            name, backend, qconfigs, {1: repeats_b1, 256: repeats_b256}, calibration_batches
        )
    return inference, sizes
