"""Plain evaluation loops for models that Lightning does not train: int8 (CPU only) and FP32
references measured the same way, so accuracy drops compare like with like."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labquant.data.augment import network_input

Model = Callable[[Tensor], Tensor]  # an nn.Module or a backend's deployable int8 model


def _eval_mode(net: Model) -> None:
    if isinstance(net, nn.Module):
        net.eval()


def evaluate(
    net: Model, batches: Iterable[tuple[Tensor, Tensor]], device: str = "cpu"
) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean cross-entropy of `net` on uint8 or normalised batches."""
    result = evaluate_confusion(net, batches, device)
    return result.acc, result.loss


@dataclass(frozen=True)
class Evaluation:
    """One pass over the test set: top-1 (%), mean cross-entropy, the confusion matrix (row =
    true class, column = predicted) and each image's top-1 hit, in loader order (the paired
    interval of an accuracy drop needs them per image)."""

    acc: float
    loss: float
    confusion: list[list[int]]
    correct: Tensor


@torch.inference_mode()
def evaluate_confusion(
    net: Model, batches: Iterable[tuple[Tensor, Tensor]], device: str = "cpu"
) -> Evaluation:
    """`evaluate` plus the confusion matrix and the per-image hits."""
    _eval_mode(net)
    loss_sum, classes = 0.0, 0
    counts: Tensor | None = None
    hits: list[Tensor] = []
    for x, y in batches:
        logits = net(network_input(x.to(device)))
        y = y.to(device)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        classes = logits.shape[1]
        predicted = logits.argmax(dim=1)
        hits.append((predicted == y).cpu())
        pairs = torch.bincount(y * classes + predicted, minlength=classes**2).cpu()
        counts = pairs if counts is None else counts + pairs
    if counts is None:
        return Evaluation(0.0, 0.0, [], torch.zeros(0, dtype=torch.bool))
    confusion = counts.reshape(classes, classes)
    total = int(confusion.sum())
    acc = 100.0 * int(confusion.trace()) / max(1, total)
    return Evaluation(acc, loss_sum / max(1, total), confusion.tolist(), torch.cat(hits))


def paired_drop(reference: Evaluation, quantized: Evaluation) -> dict[str, Any]:
    """The half-width of the 95 % interval of `quantized`'s accuracy drop (pp) against
    `reference` on the same images (normal approximation to the paired per-image differences),
    and the images only one of the two gets right; {} when there is no such pair of passes.

    Why: on ~1,000 test images one image is 0.1 pp, and int8 and FP32 disagree on dozens of
    images in both directions, so a drop target of a few tenths is within that noise; the
    interval says how far. Only the images where exactly one of the two is right move it.
    """
    if reference.correct.shape != quantized.correct.shape or len(reference.correct) < 2:
        return {}  # a spread needs two images (and NaN is not valid JSON)
    diff = reference.correct.double() - quantized.correct.double()
    n = len(diff)
    half_width = 1.96 * float(diff.std()) / math.sqrt(n)
    return {
        "acc_drop_ci95": round(100.0 * half_width, 4),
        "only_fp32_correct": int((diff > 0).sum()),
        "only_int8_correct": int((diff < 0).sum()),
    }
