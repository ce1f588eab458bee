"""`augment`: the classic per-image torchvision pipeline (PIL, DataLoader workers) against the
batched pad-crop-flip + normalize that labquant runs on the training device."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from labquant.data.augment import normalize, random_pad_crop_flip, train_transform
from labquant.data.tensors import PILImageDataset
from labquant.speed import best_seconds, rate, ratio


def bench_augment(
    images: Tensor,
    labels: Tensor,
    batch_size: int = 256,
    workers: int = 2,
    device: str = "cpu",
    repeats: int = 3,
) -> dict[str, Any]:
    """Images per second of both paths over the same uint8 images, delivered on `device`.

    The worker pool is started by an untimed first pass (persistent workers), as it would be
    from the second epoch of a training run on.
    """
    n = len(labels)
    loader = DataLoader(
        PILImageDataset(images, labels, train_transform()),
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.device(device).type == "cuda",
    )

    def per_image_pass() -> None:
        for x, _ in loader:
            x.to(device, non_blocking=True)

    resident = images.to(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def batched_pass() -> None:
        for start in range(0, n, batch_size):
            normalize(random_pad_crop_flip(resident[start : start + batch_size], 4, generator))

    per_image_s = best_seconds(per_image_pass, repeats=1, warmup=1, device=device)
    batched_s = best_seconds(batched_pass, repeats=repeats, warmup=1, device=device)
    return {
        "images": n,
        "batch_size": batch_size,
        "workers": workers,
        "device": str(device),
        "per_image_img_s": rate(n, per_image_s),
        "batched_img_s": rate(n, batched_s),
        "speedup": ratio(per_image_s, batched_s),
    }
