"""`inference` and `sizes`: FP32 (best of contiguous and channels_last, eager) against the int8
TorchScript file that labquant exports (x86 and pot), on the CPU at batch 1 and batch 256."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from labquant.bench.common import build_model, normalized_batch
from labquant.bench.timing import interleaved_best_seconds, rate, ratio
from labquant.quant import workflow
from labquant.quant.export import save_torchscript, serialized_mib, to_torchscript
from labquant.quant.qconfigs import backend_for, get_qconfig

BATCH_SIZES = (1, 256)


def int8_model(fp32: nn.Module, qconfig: str, calibration: list[Tensor]) -> nn.Module:
    """PTQ as labquant-quantize does it (fuse, observe, convert), without the Lightning loop."""
    net = copy.deepcopy(fp32)
    workflow.set_engine(backend_for(qconfig))
    workflow.prepare_ptq(net, get_qconfig(qconfig, qat=False))
    with torch.inference_mode():
        for x in calibration:
            net(x)
    return workflow.convert_int8(net)


def forward_pass(net: nn.Module, batch: Tensor, engine: str | None) -> Callable[[], object]:
    """One inference call; the int8 engine is set per call because contenders alternate."""

    def run() -> object:
        if engine is not None:
            workflow.set_engine(engine)
        return net(batch)

    return run


def interleaved_img_s(
    nets: dict[str, tuple[nn.Module, bool, str | None]], batch: Tensor, repeats: int
) -> dict[str, float]:
    """Images per second of each (net, channels_last input, int8 engine), timed round-robin;
    the warm-up passes let oneDNN build its kernels for this shape."""
    channels_last = batch.contiguous(memory_format=torch.channels_last)
    runs = {
        name: forward_pass(net, channels_last if nhwc else batch, engine)
        for name, (net, nhwc, engine) in nets.items()
    }
    with torch.inference_mode():
        seconds = interleaved_best_seconds(runs, repeats, warmup=2 if len(batch) == 1 else 1)
    return {name: rate(len(batch), s) for name, s in seconds.items()}


def bench_model(
    name: str, qconfigs: list[str], repeats: dict[int, int], calibration_batches: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(inference row, sizes row) of one model."""
    fp32 = build_model(name).eval()
    calibration = [normalized_batch(64, seed=i)[0] for i in range(calibration_batches)]
    batches = {b: normalized_batch(b, seed=100 + b)[0] for b in BATCH_SIZES}
    nhwc = copy.deepcopy(fp32).to(memory_format=torch.channels_last)
    contenders = {"fp32_contiguous": (fp32, False, None), "fp32_channels_last": (nhwc, True, None)}
    fp32_mib = serialized_mib(fp32.state_dict())
    sizes: dict[str, Any] = {"fp32_mib": fp32_mib}
    for qconfig in qconfigs:
        int8 = int8_model(fp32, qconfig, calibration)
        script = to_torchscript(int8, batches[1])
        contenders[qconfig] = (script, False, backend_for(qconfig))
        int8_mib = serialized_mib(int8.state_dict())
        sizes[qconfig] = {
            "int8_mib": int8_mib,
            "torchscript_mib": serialized_mib(script, save_torchscript),
            "ratio": ratio(int8_mib, fp32_mib),
        }
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
    qconfigs: list[str],
    repeats_b1: int,
    repeats_b256: int,
    calibration_batches: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`inference` and `sizes` sections for every model (both need the same int8 models)."""
    inference: dict[str, Any] = {"threads": torch.get_num_threads(), "int8_file": "torchscript"}
    sizes: dict[str, Any] = {"file": "state_dict (as labquant saves it: size_mib in results.json)"}
    for name in models:
        inference[name], sizes[name] = bench_model(
            name, qconfigs, {1: repeats_b1, 256: repeats_b256}, calibration_batches
        )
    return inference, sizes
