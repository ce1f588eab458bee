"""`gpu`: a training epoch on 50,000 synthetic 32x32 images, labquant's default GPU path against
the lab's plain path, and the achieved TFLOP/s against the card's measured bf16 matmul peak."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from labquant.speed import best_seconds, rate, ratio
from labquant.tasks.bench.common import build_model, synthetic_data
from labquant.tasks.bench.training import lightning_epochs


def matmul_peak_tflops(device: str, size: int = 8192, repeats: int = 10) -> float:
    """bf16 matmul throughput of this device: the realistic ceiling, not the datasheet's."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    seconds = best_seconds(lambda: a @ b, repeats=repeats, warmup=3, device=device)
    return round(2 * size**3 / seconds / 1e12, 2)


def training_flops_per_image(net: nn.Module, device: str, batch_size: int = 8) -> float:
    """Forward + backward FLOPs of one image, counted by torch's FlopCounterMode."""
    net = copy.deepcopy(net).to(device).train()
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(net(x), y).backward()
    return counter.get_total_flops() / batch_size


def epoch_seconds(net: nn.Module, epochs: int, device: str, **path: Any) -> float:
    """Best epoch after the first (which pays for cuDNN autotuning, worker start and compile)."""
    data = {k: path.pop(k) for k in ("images", "batch_size", "augment", "num_workers")}
    dm = synthetic_data(
        data["images"],
        batch_size=data["batch_size"],
        augment=data["augment"],
        num_workers=data["num_workers"],
    )
    compile_net = path.pop("compile", False)
    channels_last = path.pop("channels_last")
    accelerator = torch.device(device).type
    seconds = lightning_epochs(
        net, dm, epochs, channels_last, compile_net, accelerator=accelerator, **path
    )
    return min(seconds[1:] or seconds)


def bench_gpu(
    models: list[str],
    images: int,
    epochs: int,
    default_path: dict[str, Any],
    plain_path: dict[str, Any],
    device: str = "cuda",
    matmul_size: int = 8192,
) -> dict[str, Any]:
    """Per model: epoch seconds and img/s of both paths, the speedup, and achieved TFLOP/s."""
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else str(device)
    result: dict[str, Any] = {
        "device": name,
        "images": images,
        "bf16_matmul_peak_tflops": matmul_peak_tflops(device, matmul_size),
        "default_path": dict(default_path),
        "plain_path": dict(plain_path),
    }
    for model in models:
        net = build_model(model)
        flops = training_flops_per_image(net, device)
        fast = epoch_seconds(copy.deepcopy(net), epochs, device, images=images, **default_path)
        plain = epoch_seconds(copy.deepcopy(net), epochs, device, images=images, **plain_path)
        achieved = flops * images / fast / 1e12
        result[model] = {
            "epoch_s": round(fast, 2),
            "img_s": rate(images, fast),
            "plain_epoch_s": round(plain, 2),
            "plain_img_s": rate(images, plain),
            "speedup": ratio(plain, fast),
            "train_gflop_per_image": round(flops / 1e9, 3),
            "achieved_tflops": round(achieved, 2),
            "fraction_of_peak": ratio(achieved, result["bf16_matmul_peak_tflops"]),
        }
    return result
