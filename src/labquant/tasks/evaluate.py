"""Plain evaluation loops for models that Lightning does not train: int8 (CPU only) and FP32
references measured the same way, so accuracy drops compare like with like."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labquant.data.augment import normalize

Model = Callable[[Tensor], Tensor]  # an nn.Module or a backend's deployable int8 model


def _eval_mode(net: Model) -> None:
    if isinstance(net, nn.Module):
        net.eval()


def _prepare_input(x: Tensor, device: torch.device | str) -> Tensor:
    x = x.to(device)
    return normalize(x) if x.dtype == torch.uint8 else x


def evaluate(
    net: Model, batches: Iterable[tuple[Tensor, Tensor]], device: str = "cpu"
) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean cross-entropy of `net` on uint8 or normalised batches."""
    acc, loss, _ = evaluate_confusion(net, batches, device)
    return acc, loss


@torch.inference_mode()
def evaluate_confusion(
    net: Model, batches: Iterable[tuple[Tensor, Tensor]], device: str = "cpu"
) -> tuple[float, float, list[list[int]]]:
    """`evaluate` plus the confusion matrix: row = true class, column = predicted class."""
    _eval_mode(net)
    loss_sum, classes = 0.0, 0
    counts: Tensor | None = None
    for x, y in batches:
        logits = net(_prepare_input(x, device))
        y = y.to(device)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        classes = logits.shape[1]
        pairs = torch.bincount(y * classes + logits.argmax(dim=1), minlength=classes**2).cpu()
        counts = pairs if counts is None else counts + pairs
    if counts is None:
        return 0.0, 0.0, []
    confusion = counts.reshape(classes, classes)
    total = int(confusion.sum())
    acc = 100.0 * int(confusion.trace()) / max(1, total)
    return acc, loss_sum / max(1, total), confusion.tolist()


@torch.inference_mode()
def images_per_second(net: Model, batch: Tensor, repeats: int = 5, warmup: int = 2) -> float:
    """Median throughput over `repeats` timed forward passes after `warmup` untimed ones."""
    _eval_mode(net)
    for _ in range(warmup):
        net(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net(batch)
        times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def cpu_latency(net: Model, image_shape: tuple[int, ...] = (3, 32, 32)) -> dict[str, float]:
    """The report's two CPU figures: batch-1 latency (ms) and batch-256 throughput (img/s)."""
    gen = torch.Generator().manual_seed(0)
    one = torch.randn(1, *image_shape, generator=gen)
    many = torch.randn(256, *image_shape, generator=gen)
    return {
        "latency_b1_ms": round(1000.0 / images_per_second(net, one, repeats=50, warmup=5), 3),
        "img_s_b256": round(images_per_second(net, many, repeats=5, warmup=1), 1),
    }
