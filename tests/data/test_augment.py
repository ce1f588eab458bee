"""The batched device augmentation matches torchvision's pipeline in distribution and values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from labquant.data.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    eval_transform,
    gather_crops,
    normalize,
    random_pad_crop_flip,
    train_transform,
)

N = 3000
PAD = 4


def coded_image(seed: int = 0) -> torch.Tensor:
    """uint8 [3,32,32]: channel 0 = row+1, channel 1 = col+1 (never 0, unlike the padding),
    channel 2 = random content to check the pixels themselves."""
    rows = torch.arange(1, 33, dtype=torch.uint8).view(32, 1).expand(32, 32)
    cols = torch.arange(1, 33, dtype=torch.uint8).view(1, 32).expand(32, 32)
    content = torch.randint(0, 256, (32, 32), generator=torch.Generator().manual_seed(seed))
    return torch.stack([rows, cols, content.to(torch.uint8)])


def decode(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recover (top, left, flipped) per sample from augmented coded images [N,3,32,32] (int).

    The centre pixel always comes from the image (offsets <= 8), never from the padding.
    """
    out = out.to(torch.int64)
    top = out[:, 0, 16, 16] - 1 - 16 + PAD
    flipped = out[:, 1, 16, 15] > out[:, 1, 16, 16]
    col = out[:, 1, 16, 16] - 1  # original column seen at output column 16
    left = torch.where(flipped, col - (31 - 16) + PAD, col - 16 + PAD)
    return top, left, flipped


def reference(img: torch.Tensor, top: int, left: int, flipped: bool) -> torch.Tensor:
    out = TF.crop(TF.pad(img, [PAD], fill=0), top, left, 32, 32)
    return TF.hflip(out) if flipped else out


def device_path(n: int, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    batch = coded_image().unsqueeze(0).repeat(n, 1, 1, 1).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = random_pad_crop_flip(batch, padding=PAD, generator=gen)
    assert out.dtype == torch.uint8 and out.shape == batch.shape and out.device == batch.device
    return out.cpu()


def cuda_path(n: int, seed: int = 0) -> torch.Tensor:
    return device_path(n, seed, device="cuda")


def workers_path(n: int, seed: int = 0) -> torch.Tensor:
    """train_transform() on PIL images, de-normalised back to uint8 codes."""
    pil = Image.fromarray(coded_image().permute(1, 2, 0).numpy())
    transform = train_transform()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        out = torch.stack([transform(pil) for _ in range(n)])
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return ((out * std + mean) * 255).round().to(torch.uint8)


def chi_square_uniform(values: torch.Tensor, k: int) -> float:
    counts = torch.bincount(values, minlength=k).double()
    expected = len(values) / k
    return float(((counts - expected) ** 2 / expected).sum())


# chi-square critical values at p = 0.001: 8 dof (9 offsets), 80 dof (81 offset pairs)
CHI2_8, CHI2_80 = 26.12, 124.84


NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(
    "path",
    [device_path, workers_path, pytest.param(cuda_path, marks=NO_CUDA)],
    ids=["device", "workers", "cuda"],
)
def test_offsets_uniform_over_0_to_8_and_flip_half(path) -> None:
    top, left, flipped = decode(path(N))
    assert set(top.tolist()) == set(range(9)) and set(left.tolist()) == set(range(9))
    assert chi_square_uniform(top, 9) < CHI2_8
    assert chi_square_uniform(left, 9) < CHI2_8
    assert chi_square_uniform(top * 9 + left, 81) < CHI2_80  # independent axes
    assert abs(flipped.double().mean().item() - 0.5) < 4.5 * (0.25 / N) ** 0.5


def test_chi_square_rejects_offsets_0_to_7() -> None:
    """The bound above is tight enough to catch an off-by-one range (0..7 instead of 0..8)."""
    wrong = torch.randint(0, 8, (N,), generator=torch.Generator().manual_seed(1))
    assert chi_square_uniform(wrong, 9) > CHI2_8


def test_device_pixels_equal_torchvision_crop() -> None:
    """Pixels (not just offsets) match pad+crop+flip done by torchvision functional ops."""
    img = coded_image()
    out = device_path(64, seed=3)
    tops, lefts, flips = decode(out)
    for k in range(len(out)):
        ref = reference(img, int(tops[k]), int(lefts[k]), bool(flips[k]))
        assert torch.equal(out[k], ref)


def test_crops_from_shared_templates_equal_crops_of_copies() -> None:
    """`source` (crop sample k from template source[k]) gives what copying the templates would."""
    g = torch.Generator().manual_seed(0)
    templates = torch.rand(4, 3, 12, 10, generator=g)
    source = torch.randint(0, 4, (50,), generator=g)
    top, left = torch.randint(0, 5, (50,), generator=g), torch.randint(0, 3, (50,), generator=g)
    flip = torch.rand(50, generator=g) < 0.5
    shared = gather_crops(templates, top, left, flip, 8, 8, source=source)
    assert torch.equal(shared, gather_crops(templates[source], top, left, flip, 8, 8))
    k = 7
    crop = templates[source[k], :, top[k] : top[k] + 8, left[k] : left[k] + 8]
    assert torch.equal(shared[k], crop.flip(-1) if flip[k] else crop)


def test_device_augmentation_independent_per_sample_and_seeded() -> None:
    a, b = device_path(256, seed=5), device_path(256, seed=5)
    assert torch.equal(a, b)
    assert not torch.equal(a, device_path(256, seed=6))
    assert len({tuple(v) for v in torch.stack(decode(a)[:2], 1).tolist()}) > 40


def test_normalize_matches_torchvision_to_tensor_normalize() -> None:
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    ours = normalize(x)
    ref = torch.stack(
        [eval_transform()(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in x]
    )
    assert ours.dtype == torch.float32
    assert (ours - ref).abs().max().item() < 1e-6


def test_normalize_per_channel_mean_std() -> None:
    """An image at the data-set mean maps to 0 and one at mean+std to 1, channel by channel."""
    mean, std = np.array(CIFAR10_MEAN), np.array(CIFAR10_STD)
    for value, target in ((mean, 0.0), (mean + std, 1.0)):
        x = torch.from_numpy(np.round(value * 255)).to(torch.uint8).view(1, 3, 1, 1)
        out = normalize(x.expand(2, 3, 8, 8)).view(2, 3, -1)
        assert torch.allclose(out, torch.full_like(out, target), atol=0.5 / 255 / min(std))
