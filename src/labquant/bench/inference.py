"""`inference` and `sizes`: FP32 (best of contiguous and channels_last, eager) against the int8
TorchScript file that labquant exports (x86 and pot), on the CPU at batch 1 and batch 256."""

from __future__ import annotations

import copy
import io
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from labquant.bench.common import build_model, normalized_batch
from labquant.bench.timing import rate, ratio
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


@dataclass
class Contender:
    """One way to run a batch: a module, the memory layout of its input, its int8 engine."""

    net: nn.Module
    channels_last: bool = False
    engine: str | None = None

    def prepare(self, batch: Tensor) -> Tensor:
        if self.engine is not None:
            workflow.set_engine(self.engine)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch


def interleaved_img_s(
    contenders: dict[str, Contender], batch: Tensor, repeats: int
) -> dict[str, float]:
    """Images per second of each contender, timed round-robin: every one runs once per round, so
    a slow spell of a shared machine hits all of them alike; each one's best round counts.

    The warm-up passes let oneDNN build its kernels for this shape.
    """
    warmup = 2 if len(batch) == 1 else 1
    best = dict.fromkeys(contenders, float("inf"))
    with torch.inference_mode():
        for _ in range(warmup):
            for contender in contenders.values():
                contender.net(contender.prepare(batch))
        for _ in range(max(1, repeats)):
            for name, contender in contenders.items():
                x = contender.prepare(batch)
                start = time.perf_counter()
                contender.net(x)
                best[name] = min(best[name], time.perf_counter() - start)
    return {name: rate(len(batch), seconds) for name, seconds in best.items()}


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
    contenders = {
        "fp32_contiguous": Contender(fp32),
        "fp32_channels_last": Contender(
            copy.deepcopy(fp32).to(memory_format=torch.channels_last), channels_last=True
        ),
    }
    fp32_mib = file_mib(fp32.state_dict())
    sizes: dict[str, Any] = {"fp32_mib": fp32_mib}
    for qconfig in qconfigs:
        int8 = int8_model(fp32, qconfig, calibration)
        script = to_torchscript(int8, batches[1])
        contenders[qconfig] = Contender(script, engine=backend_for(qconfig))
        int8_mib = file_mib(int8.state_dict())
        sizes[qconfig] = {
            "int8_mib": int8_mib,
            "torchscript_mib": file_mib(script, save_torchscript),
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
