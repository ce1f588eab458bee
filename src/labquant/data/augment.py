"""CIFAR-10 augmentation and normalisation, batched on the device and as classic torchvision.

The device path (`random_pad_crop_flip` + `normalize`) exists because per-image PIL transforms in
DataLoader workers are the bottleneck for a small ResNet; it must match the torchvision pipeline
(`train_transform`) in distribution, which the tests check, so results stay comparable with the
lab's earlier runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision import transforms

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


def normalize(x: Tensor) -> Tensor:
    """uint8 [N,3,H,W] -> float32 (x/255 - mean)/std, with the same op order as ToTensor+Normalize.

    Same order (divide, subtract, divide) so results match torchvision bit for bit on CPU.
    """
    if x.dim() != 4 or x.shape[1] != len(CIFAR10_MEAN):
        raise ValueError(f"normalize expects uint8 [N,3,H,W], got shape {tuple(x.shape)}")
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.to(torch.float32).div(255).sub_(mean).div_(std)


def network_input(x: Tensor) -> Tensor:
    """What a network takes: uint8 images normalized, already-normalized (float) ones as they
    are (the data modules serve uint8 on the fast path and floats from torchvision)."""
    return normalize(x) if x.dtype == torch.uint8 else x


def gather_crops(
    x: Tensor,
    top: Tensor,
    left: Tensor,
    flip: Tensor,
    height: int,
    width: int,
    source: Tensor | None = None,
) -> Tensor:
    """Crops of x [M,C,H',W'] at (top, left), mirrored where flip, in one gather.

    Output k is cut from image `source[k]` (default k). Each output pixel's flat position in its
    source image is computed once per sample and shared by the channels; the flip is folded
    into the column index. Five times faster than 4-D advanced indexing on the CPU, and
    `source` lets callers crop many samples from a few templates without a copy per sample.
    """
    n, c, src_h, src_w = top.shape[0], x.shape[1], x.shape[2], x.shape[3]
    dev = x.device
    rows = top.view(n, 1) + torch.arange(height, device=dev).view(1, height)
    cols_fwd = torch.arange(width, device=dev).view(1, width)
    cols = left.view(n, 1) + torch.where(flip.view(n, 1), width - 1 - cols_fwd, cols_fwd)
    pixel = (rows.view(n, height, 1) * src_w + cols.view(n, 1, width)).view(n, 1, -1)
    flat = x.reshape(x.shape[0], c, src_h * src_w)
    if source is None:
        return flat.gather(2, pixel.expand(n, c, -1)).view(n, c, height, width)
    chan = torch.arange(c, device=dev).view(1, c, 1) * (src_h * src_w)
    index = source.view(n, 1, 1) * (c * src_h * src_w) + chan + pixel
    return flat.reshape(-1)[index].view(n, c, height, width)


def random_pad_crop_flip(
    x: Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> Tensor:
    """Batched Pad(padding, fill=0) + RandomCrop(H, W) + RandomHorizontalFlip on x's device.

    Offsets are independent per sample and uniform over 0..2*padding in each axis; each sample is
    flipped with probability 1/2, as in torchvision.
    """
    if x.dim() != 4:
        raise ValueError(f"random_pad_crop_flip expects [N,C,H,W], got shape {tuple(x.shape)}")
    return pad_crop_flip(x, *crop_params(len(x), padding, generator, x.device), padding=padding)


def crop_params(
    n: int, padding: int = 4, generator: torch.Generator | None = None, device: Any = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(top, left, flip) for n samples: offsets uniform over 0..2*padding, flip with p = 1/2."""
    kw = {"generator": generator, "device": device}
    top = torch.randint(0, 2 * padding + 1, (n,), **kw)
    left = torch.randint(0, 2 * padding + 1, (n,), **kw)
    flip = torch.rand(n, **kw) < 0.5
    return top, left, flip


def pad_crop_flip(x: Tensor, top: Tensor, left: Tensor, flip: Tensor, padding: int = 4) -> Tensor:
    """Pad(padding, fill=0), crop back to H x W at (top, left), mirror where flip: one gather."""
    _, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    return gather_crops(padded, top, left, flip, h, w)


def train_transform() -> transforms.Compose:
    """The lab's classic per-image training pipeline (PIL in, normalised float tensor out)."""
    return transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )


def eval_transform() -> transforms.Compose:
    """Per-image evaluation pipeline: no augmentation, only ToTensor + Normalize."""
    return transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    )
