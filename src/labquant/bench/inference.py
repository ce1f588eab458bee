"""`inference` and `sizes`: FP32 (best of contiguous and channels_last, eager) against the int8
TorchScript file that labquant exports (x86 and pot), on the CPU at batch 1 and batch 256."""

from __future__ import annotations

import copy
import io
from typing import Any

import torch
from torch import Tensor, nn

from labquant.bench.common import build_model, normalized_batch
from labquant.bench.timing import best_seconds, rate, ratio
from labquant.quant import workflow
from labquant.quant.export import save_torchscript, to_torchscript
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


def img_s(net: nn.Module, batch: Tensor, repeats: int) -> float:
    """Best of `repeats` passes; the warm-up lets oneDNN build its kernels for this shape."""
    warmup = 2 if len(batch) == 1 else 1
    with torch.inference_mode():
        return rate(len(batch), best_seconds(lambda: net(batch), repeats=repeats, warmup=warmup))


def fp32_img_s(net: nn.Module, batch: Tensor, repeats: int) -> dict[str, float]:
    """Both memory layouts; which one wins depends on the model, the batch and the CPU."""
    channels_last = copy.deepcopy(net).to(memory_format=torch.channels_last)
    return {
        "contiguous": img_s(net, batch, repeats),
        "channels_last": img_s(
            channels_last, batch.contiguous(memory_format=torch.channels_last), repeats
        ),
    }


def file_mib(obj: Any, save: Any = torch.save) -> float:
    buffer = io.BytesIO()
    save(obj, buffer)
    return round(buffer.getbuffer().nbytes / 2**20, 4)


def bench_model(
    name: str, qconfigs: list[str], repeats: dict[int, int], calibration_batches: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(inference row, sizes row) of one model."""
    fp32 = build_model(name).eval()
    calibration = [normalized_batch(64, seed=i)[0] for i in range(calibration_batches)]
    batches = {b: normalized_batch(b, seed=100 + b)[0] for b in BATCH_SIZES}
    row: dict[str, Any] = {"fp32": {}, "fp32_best": {}}
    for b in BATCH_SIZES:
        row["fp32"][f"b{b}"] = fp32_img_s(fp32, batches[b], repeats[b])
        row["fp32_best"][f"b{b}"] = max(row["fp32"][f"b{b}"].values())
    fp32_mib = file_mib(fp32.state_dict())
    sizes: dict[str, Any] = {"fp32_mib": fp32_mib}
    for qconfig in qconfigs:
        int8 = int8_model(fp32, qconfig, calibration)
        script = to_torchscript(int8, batches[1])
        workflow.set_engine(backend_for(qconfig))
        row[qconfig] = {f"b{b}": img_s(script, batches[b], repeats[b]) for b in BATCH_SIZES}
        for b in BATCH_SIZES:
            row[f"{qconfig}_speedup_b{b}"] = ratio(row[qconfig][f"b{b}"], row["fp32_best"][f"b{b}"])
        int8_mib = file_mib(int8.state_dict())
        sizes[qconfig] = {
            "int8_mib": int8_mib,
            "torchscript_mib": file_mib(script, save_torchscript),
            "ratio": ratio(int8_mib, fp32_mib),
        }
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
