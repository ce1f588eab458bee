"""Generated data is deterministic, balanced and carries a real class signal."""

from __future__ import annotations

import pytest
import torch

from labquant.data import SyntheticDataModule
from labquant.errors import ConfigError


@pytest.fixture(scope="module")
def synthetic() -> SyntheticDataModule:
    dm = SyntheticDataModule(num_train=2000, num_test=500, val_size=200)
    dm.setup("fit")
    return dm


def test_shapes_dtypes_and_balance(synthetic: SyntheticDataModule) -> None:
    sizes = {s: len(synthetic.arrays(s)[1]) for s in ("train", "val", "test")}
    assert sizes == {"train": 1800, "val": 200, "test": 500}
    x, y = synthetic.arrays("test")
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32) and y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == [50] * 10
    assert x.float().std() > 20  # uses the range, not a flat grey


def test_deterministic_given_data_seed() -> None:
    def test_x(**kwargs) -> torch.Tensor:
        dm = SyntheticDataModule(num_train=100, num_test=50, val_size=10, **kwargs)
        dm.setup()
        return dm.arrays("test")[0]

    assert torch.equal(test_x(), test_x())
    assert torch.equal(test_x(), test_x(seed=5))  # seed drives split/order, not the task
    assert not torch.equal(test_x(), test_x(data_seed=7))


def test_nearest_class_mean_well_above_chance(synthetic: SyntheticDataModule) -> None:
    """A learnable signal: class means of raw training pixels classify test images."""
    train_x, train_y = synthetic.arrays("train")
    test_x, test_y = synthetic.arrays("test")
    feats = train_x.float().flatten(1)
    means = torch.stack([feats[train_y == k].mean(0) for k in range(10)])
    pred = torch.cdist(test_x.float().flatten(1), means).argmin(1)
    accuracy = (pred == test_y).float().mean().item()
    assert 0.4 < accuracy < 0.99, accuracy  # learnable, yet not a perfect lookup


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"num_train": 5}, "data.num_train"),
        ({"num_test": 0}, "data.num_test"),
        ({"noise": -1.0}, "data.noise"),
        ({"distractor": 0.5}, "data.distractor"),
        ({"max_shift": -1}, "data.max_shift"),
        ({"data_seed": -2}, "data.data_seed"),
        ({"augment": "cpu"}, "data.augment"),
    ],
)
def test_bad_settings(kwargs, setting) -> None:
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        SyntheticDataModule(**kwargs)
