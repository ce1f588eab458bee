"""What the benchmark sections share: models by config name, generated data, SGD settings."""

from __future__ import annotations

from functools import partial

import hydra
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from labquant.cli.checks import CONF_DIR
from labquant.data.synthetic import SyntheticDataModule

# The training recipe's optimizer (conf/optimizer/sgd.yaml): both sides of a comparison use it.
SGD = partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4)


def build_model(name: str, seed: int = 0) -> nn.Module:
    """A network exactly as `model=<name>` builds it for labquant-train (conf/model/<name>.yaml)."""
    torch.manual_seed(seed)
    return hydra.utils.instantiate(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"))


def synthetic_data(num_train: int, seed: int = 0, **kwargs: object) -> SyntheticDataModule:
    """Generated CIFAR-shaped images (one held out for validation, which the benchmark skips)."""
    dm = SyntheticDataModule(num_train=num_train + 1, num_test=10, val_size=1, seed=seed, **kwargs)
    dm.setup("fit")
    return dm


def normalized_batch(batch_size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, 32, 32, generator=g), torch.randint(0, 10, (batch_size,))
