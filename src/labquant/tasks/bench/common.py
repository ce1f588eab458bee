"""What the benchmark sections share: models by config name, generated data, SGD settings."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from labquant.config.groups import load_group_option
from labquant.config.instantiate import instantiate
from labquant.data.synthetic import SyntheticDataModule
from labquant.quant.qconfigs import QConfigSpec

# The training recipe's optimizer (conf/optimizer/sgd.yaml): both sides of a comparison use it.
SGD = partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4)


def build_model(name: str, seed: int = 0) -> nn.Module:
    """A network exactly as `model=<name>` builds it for labquant-train (conf/model/<name>.yaml)."""
    torch.manual_seed(seed)
    return instantiate(load_group_option("model", name), f"model={name}")


def qconfig_specs(names: list[str]) -> dict[str, QConfigSpec]:
    """`qconfigs=[x86,pot]` as the specs conf/qconfig/<name>.yaml builds."""
    return {
        name: instantiate(load_group_option("qconfig", name, "qconfigs"), f"qconfig={name}")
        for name in names
    }


def synthetic_data(num_train: int, seed: int = 0, **kwargs: object) -> SyntheticDataModule:
    """Generated CIFAR-shaped images (one held out for validation, which the benchmark skips)."""
    dm = SyntheticDataModule(num_train=num_train + 1, num_test=10, val_size=1, seed=seed, **kwargs)
    dm.setup("fit")
    return dm


def normalized_batch(batch_size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, 32, 32, generator=g), torch.randint(0, 10, (batch_size,))
