"""Loaders, sampling and on-device augmentation of TensorImageDataModule (on generated data)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labquant.data import EpochSeededRandomSampler, SyntheticDataModule, normalize

SMALL = {"num_train": 240, "num_test": 60, "val_size": 40, "batch_size": 50, "eval_batch_size": 16}


def small_dm(**kwargs) -> SyntheticDataModule:
    dm = SyntheticDataModule(**{**SMALL, **kwargs})
    dm.setup("fit")
    return dm


# --------------------------------------------------------------------------- sampler


def test_sampler_order_depends_only_on_seed_and_epoch() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        s = EpochSeededRandomSampler(100, seed)
        s.set_epoch(epoch)
        return list(s)

    assert order(0, 3) == order(0, 3)  # a resumed run at epoch 3 sees the same order
    assert sorted(order(0, 3)) == list(range(100))
    assert order(0, 0) != order(0, 1)
    assert order(0, 1) != order(1, 0)  # seed and epoch are mixed, not added


def test_train_loader_batches_cover_each_index_once_and_follow_set_epoch() -> None:
    dm = small_dm()
    loader = dm.train_dataloader()
    labels = []
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)  # what Lightning calls: loader.sampler is the batch sampler
        batches = list(loader)  # training batches: (images, labels, their indices)
        assert [len(y) for _, y, _ in batches] == [50, 50, 50, 50]
        assert all(x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32) for x, _, _ in batches)
        assert all(torch.equal(dm.arrays("train")[1][i], y) for _, y, i in batches)
        labels.append(torch.cat([y for _, y, _ in batches]))
    train_y = dm.arrays("train")[1]
    for y in labels:
        assert torch.equal(y.sort().values, train_y.sort().values)
    assert not torch.equal(labels[0], labels[1])


def test_eval_loaders_are_sequential_and_unshuffled() -> None:
    dm = small_dm()
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        x = torch.cat([xb for xb, _ in loader])
        assert torch.equal(x, dm.arrays(split)[0])
        assert len(next(iter(loader))[1]) == 16


def test_split_is_seeded_and_disjoint() -> None:
    a, b, c = small_dm(seed=0), small_dm(seed=0), small_dm(seed=1)
    assert torch.equal(a.arrays("val")[0], b.arrays("val")[0])
    assert not torch.equal(a.arrays("val")[0], c.arrays("val")[0])
    train = {tuple(v) for v in a.arrays("train")[0].flatten(1)[:, :64].tolist()}
    assert not any(tuple(v) in train for v in a.arrays("val")[0].flatten(1)[:, :64].tolist())


# --------------------------------------------------------------------------- augmentation hook


def hook(dm: SyntheticDataModule, batch, training: bool | None, epoch: int = 0):
    dm.trainer = (
        None if training is None else SimpleNamespace(training=training, current_epoch=epoch)
    )
    try:
        return dm.on_after_batch_transfer(batch, 0)
    finally:
        dm.trainer = None


def test_eval_batches_only_normalised_train_batches_augmented() -> None:
    dm = small_dm()
    x, y = next(iter(dm.val_dataloader()))
    for training in (False, None):  # validating/testing, or no trainer attached
        out_x, out_y = hook(dm, (x, y), training)
        assert torch.equal(out_x, normalize(x)) and torch.equal(out_y, y)
    aug_x, aug_y = hook(dm, (x, y), training=True)
    assert aug_x.dtype == torch.float32 and aug_x.shape == x.shape
    assert not torch.equal(aug_x, normalize(x)) and torch.equal(aug_y, y)


def test_augmentation_reseeded_per_epoch() -> None:
    """Same (seed, epoch, batch order) -> same augmentation, whatever ran before."""
    dm = small_dm()
    x, y = next(iter(dm.val_dataloader()))
    first = hook(dm, (x, y), training=True, epoch=0)[0]
    hook(dm, (x, y), training=True, epoch=0)  # a second batch in epoch 0 advances the stream
    assert not torch.equal(first, hook(dm, (x, y), training=True, epoch=1)[0])
    assert torch.equal(first, hook(dm, (x, y), training=True, epoch=0)[0])  # epoch changed: reseed
    assert torch.equal(first, hook(small_dm(), (x, y), training=True, epoch=0)[0])
    assert not torch.equal(first, hook(small_dm(seed=9), (x, y), training=True, epoch=0)[0])


# --------------------------------------------------------------------------- workers path


@pytest.mark.parametrize("num_workers", [0, 1])
def test_workers_path_gives_normalised_float_batches(num_workers: int) -> None:
    dm = small_dm(augment="workers", num_workers=num_workers)
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.float32 and x.shape == (50, 3, 32, 32) and y.dtype == torch.int64
    vx, vy = next(iter(dm.val_dataloader()))
    raw_x, raw_y = dm.arrays("val")
    assert (vx - normalize(raw_x[:16])).abs().max() < 1e-6 and torch.equal(vy, raw_y[:16])
    for training in (True, False):  # float batches pass through the hook untouched
        out = hook(dm, (vx, vy), training)
        assert out[0] is vx and out[1] is vy


# --------------------------------------------------------------------------- through Lightning


class Recorder(pl.LightningModule):
    """Linear model that records every batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3 * 32 * 32, 10)
        self.seen: dict[str, list] = {"train": [], "val": [], "test": []}

    def _step(self, split: str, batch) -> torch.Tensor:
        x, y = batch
        self.seen[split].append((self.current_epoch, x.detach().clone(), y.clone()))
        return F.cross_entropy(self.net(x.flatten(1)), y)

    def training_step(self, batch, batch_idx):
        return self._step("train", batch)

    def validation_step(self, batch, batch_idx):
        self._step("val", batch)

    def test_step(self, batch, batch_idx):
        self._step("test", batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit_and_test(seed: int = 0, accelerator: str = "cpu") -> tuple[Recorder, SyntheticDataModule]:
    dm = SyntheticDataModule(**SMALL, seed=seed)
    model = Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm, verbose=False)
    return model, dm


def test_lightning_trainer_augments_train_only_and_reshuffles_each_epoch() -> None:
    model, dm = fit_and_test()
    val_x, test_x = dm.arrays("val")[0], dm.arrays("test")[0]
    for epoch in (0, 1):
        seen_val = torch.cat([x for e, x, _ in model.seen["val"] if e == epoch])
        assert torch.equal(seen_val, normalize(val_x))
    assert torch.equal(torch.cat([x for _, x, _ in model.seen["test"]]), normalize(test_x))

    loader = dm.train_dataloader()
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        raw_x, raw_y, _ = next(iter(loader))
        _, seen_x, seen_y = next(b for b in model.seen["train"] if b[0] == epoch)
        assert torch.equal(seen_y, raw_y)  # Lightning reached the inner sampler's set_epoch
        assert seen_x.dtype == torch.float32 and not torch.equal(seen_x, normalize(raw_x))
    order = [torch.cat([y for e, _, y in model.seen["train"] if e == ep]) for ep in (0, 1)]
    assert not torch.equal(order[0], order[1])

    again, _ = fit_and_test()
    other, _ = fit_and_test(seed=1)
    pairs = list(zip(model.seen["train"], again.seen["train"], other.seen["train"], strict=True))
    assert all(torch.equal(a[1], b[1]) for a, b, _ in pairs)  # augmentation is reproducible
    assert not all(torch.equal(a[1], c[1]) for a, _, c in pairs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_resident_splits_on_gpu() -> None:
    """With a GPU Trainer the whole data set lives on the GPU and batches are cut there."""
    model, dm = fit_and_test(accelerator="gpu")
    for split in ("train", "val", "test"):
        assert all(t.device.type == "cuda" for t in dm.arrays(split))
    assert dm.train_dataloader().num_workers == 0
    assert all(x.device.type == "cuda" for _, x, _ in model.seen["train"])
    seen_val = torch.cat([x for e, x, _ in model.seen["val"] if e == 0])
    assert torch.allclose(seen_val, normalize(dm.arrays("val")[0]), atol=1e-6)
    loader = dm.train_dataloader()
    raw_x, raw_y, _ = next(iter(loader))
    _, seen_x, seen_y = model.seen["train"][0]
    assert torch.equal(seen_y, raw_y) and not torch.equal(seen_x, normalize(raw_x))


@pytest.mark.parametrize(
    ("pin_memory", "device", "augment", "expected"),
    [
        (None, "cuda", "workers", True),  # host batches feeding a GPU: pinned copies overlap
        (None, "cpu", "workers", False),  # a CPU run gains nothing from pinning
        (None, "cuda", "device", True),  # device_resident=false: uint8 batches from host memory
        (True, "cpu", "workers", True),  # an explicit setting wins
        (False, "cuda", "workers", False),
    ],
)
def test_pin_memory_follows_the_path(pin_memory, device, augment, expected) -> None:
    dm = small_dm(pin_memory=pin_memory, augment=augment, device_resident=False)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device(device)), global_rank=0, world_size=1
    )
    assert dm.train_dataloader().pin_memory is expected
