"""Generated CIFAR-shaped data with a real, learnable class signal, for tests and offline runs.

Each class is a fixed smooth colour template; each sample is a randomly shifted crop of its
class template, blended with a little of another class, with random brightness, contrast and
pixel noise. A small CNN learns it in an epoch or two, but it is not trivially separable, so
accuracy and quantization drops stay meaningful without downloading CIFAR-10.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from labquant.data.augment import gather_crops
from labquant.data.tensors import TensorImageDataModule, derive_seed
from labquant.errors import ConfigError

_TEMPLATE_STREAM, _TRAIN_STREAM, _TEST_STREAM = 0, 1, 2


def make_templates(
    num_classes: int, size: int, generator: torch.Generator, grid: int = 4
) -> Tensor:
    """Smooth random colour patterns, float [K,3,size,size] in [0.1, 0.9]: a coarse random grid
    upsampled bilinearly, so nearby shifts of one class still look alike."""
    coarse = torch.rand(num_classes, 3, grid, grid, generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    lo = smooth.amin(dim=(1, 2, 3), keepdim=True)
    hi = smooth.amax(dim=(1, 2, 3), keepdim=True)
    return 0.1 + 0.8 * (smooth - lo) / (hi - lo).clamp_min(1e-6)


def make_samples(
    templates: Tensor,
    n: int,
    generator: torch.Generator,
    noise: float,
    max_shift: int,
    distractor: float,
    image_size: int = 32,
) -> tuple[Tensor, Tensor]:
    """n balanced samples -> (uint8 [n,3,S,S], int64 [n]), all random draws from generator.

    Each sample blends in up to `distractor` (< 0.5) of another class's template, so classes
    overlap and nearest-mean is not perfect.
    """
    num_classes = templates.shape[0]
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
    other = (labels + torch.randint(1, num_classes, (n,), generator=generator)) % num_classes

    def crops(source: Tensor) -> Tensor:
        span = 2 * max_shift + 1
        top = torch.randint(0, span, (n,), generator=generator)
        left = torch.randint(0, span, (n,), generator=generator)
        no_flip = torch.zeros(n, dtype=torch.bool)
        return gather_crops(templates, top, left, no_flip, image_size, image_size, source=source)

    mix = distractor * torch.rand(n, 1, 1, 1, generator=generator)
    x = (1 - mix) * crops(labels) + mix * crops(other)
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=generator)
    brightness = 0.3 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    x = (x - 0.5) * contrast + 0.5 + brightness
    x = x + noise * torch.randn(x.shape, generator=generator)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels


class SyntheticDataModule(TensorImageDataModule):
    """Same API as CIFAR10DataModule, on generated data (no files, no network).

    `data_seed` fixes the task (templates and samples); the base `seed` only drives the split,
    shuffling and augmentation, as it does for real CIFAR-10.
    """

    def __init__(
        self,
        num_train: int = 5000,
        num_test: int = 1000,
        noise: float = 0.15,
        max_shift: int = 8,
        distractor: float = 0.45,
        data_seed: int = 1234,
        val_size: int | float = 500,
        **kwargs: Any,
    ) -> None:
        super().__init__(val_size=val_size, **kwargs)
        for name, value in (("num_train", num_train), ("num_test", num_test)):
            if isinstance(value, bool) or not isinstance(value, int) or value < self.num_classes:
                raise ConfigError(
                    f"data.{name}={value!r} is invalid; set it to an integer >= "
                    f"{self.num_classes} (one image per class)"
                )
        if not isinstance(noise, int | float) or noise < 0:
            raise ConfigError(f"data.noise={noise!r} is invalid; set it to a number >= 0")
        if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
            raise ConfigError(f"data.max_shift={max_shift!r} is invalid; set it to an integer >= 0")
        self.num_train, self.num_test = num_train, num_test
        if not isinstance(distractor, int | float) or not 0 <= distractor < 0.5:
            raise ConfigError(
                f"data.distractor={distractor!r} is invalid; set it to a number in [0, 0.5)"
            )
        if isinstance(data_seed, bool) or not isinstance(data_seed, int) or data_seed < 0:
            raise ConfigError(f"data.data_seed={data_seed!r} is invalid; set it to an integer >= 0")
        self.noise, self.max_shift, self.data_seed = float(noise), max_shift, data_seed
        self.distractor = float(distractor)

    def _load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        size = self.image_shape[1]

        def gen(stream: int) -> torch.Generator:
            return torch.Generator().manual_seed(derive_seed(self.data_seed, stream))

        templates = make_templates(
            self.num_classes, size + 2 * self.max_shift, gen(_TEMPLATE_STREAM)
        )
        args = (self.noise, self.max_shift, self.distractor, size)
        train_x, train_y = make_samples(templates, self.num_train, gen(_TRAIN_STREAM), *args)
        test_x, test_y = make_samples(templates, self.num_test, gen(_TEST_STREAM), *args)
        return train_x, train_y, test_x, test_y
