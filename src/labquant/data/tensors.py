"""The in-memory tensor DataModule every labquant data set shares, and its batch samplers.

A data set of CIFAR size fits in memory, so each split is ONE uint8 tensor, optionally kept on
the accelerator; batches are cut by index and augmented there (augment="device"). The classic
torchvision/PIL pipeline in DataLoader workers (augment="workers") stays available to compare
against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from labquant.data.augment import (
    crop_params,
    eval_transform,
    network_input,
    normalize,
    pad_crop_flip,
    random_pad_crop_flip,
    train_transform,
)
from labquant.errors import ConfigError

AUGMENT_MODES = ("device", "workers")

# Independent random streams derived from one user seed (split, shuffle, augmentation).
_SPLIT_STREAM, _SHUFFLE_STREAM, _AUGMENT_STREAM = 0, 1, 2


def derive_seed(*keys: int) -> int:
    """Mix integer keys (seed, epoch, stream) into one 64-bit seed.

    Plain `seed + epoch` would make (seed=0, epoch=1) and (seed=1, epoch=0) identical streams.
    """
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])


# --------------------------------------------------------------------------- sampling


class EpochSeededRandomSampler(Sampler[int]):
    """A shuffle whose order depends only on (seed, epoch), so a resumed run sees the same order.

    Lightning calls `set_epoch` each epoch (on `loader.sampler` or `loader.batch_sampler.sampler`).
    Under DDP (`world_size` > 1) rank r takes every world_size-th index of that order starting at
    r: the shards are disjoint, each rank's k-th batch of b images together with the other
    ranks' k-th batches is exactly the single-process k-th batch of b * world_size images, and
    the union is the epoch's order. When n is not a multiple of world_size, the last
    n % world_size indices of the order are left out of that epoch so that every rank runs the
    same number of steps (the order is reshuffled each epoch, so no image is always left out).
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.n, self.seed, self.epoch = int(n), int(seed), 0
        self.rank, self.world_size = int(rank), int(world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n // self.world_size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, _SHUFFLE_STREAM))
        order = torch.randperm(self.n, generator=g)
        if self.world_size > 1:
            order = order[: len(self) * self.world_size][self.rank :: self.world_size]
        return iter(order.tolist())


class ShardedSequentialSampler(Sampler[int]):
    """Evaluation order for one rank: indices rank, rank + world_size, ... with NO padding, so
    every image is evaluated exactly once across ranks (DistributedSampler would repeat images
    to even the shards out, and those repeats would count twice in the test accuracy)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, int(n), int(world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class EpochBatchSampler(BatchSampler):
    """BatchSampler that forwards set_epoch: passed as a DataLoader's `sampler` (batch_size=None),
    it is what Lightning sees, so without this the inner shuffle would never change epoch."""

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


class BatchTensorDataset(Dataset):
    """Map dataset indexed by a whole batch of indices: one tensor gather, no per-sample Python.

    `with_index=True` adds the batch's image indices as a third element (training batches: the
    augmentation of an image is keyed by its index, see `on_after_batch_transfer`).
    """

    def __init__(self, x: Tensor, y: Tensor, with_index: bool = False) -> None:
        self.x, self.y, self.with_index = x, y, with_index

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, indices: Sequence[int]) -> tuple[Tensor, ...]:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.x.device)
        return (self.x[idx], self.y[idx], idx) if self.with_index else (self.x[idx], self.y[idx])


class PILImageDataset(Dataset):
    """Per-image PIL dataset for the classic torchvision pipeline (augment="workers")."""

    def __init__(self, x: Tensor, y: Tensor, transform: Callable[[Image.Image], Tensor]) -> None:
        self.images = x.cpu().permute(0, 2, 3, 1).contiguous().numpy()  # HWC for PIL, once
        self.labels = y.cpu().tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


# --------------------------------------------------------------------------- base DataModule


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} is invalid; set it to an integer >= {minimum}")
    return value


class TensorImageDataModule(LightningDataModule):
    """Image classification data held as one uint8 tensor per split (train / val / test).

    Subclasses implement `_load_arrays`. With augment="device" batches arrive as uint8 and
    `on_after_batch_transfer` augments (training only) and normalises them on the device.
    """

    num_classes = 10
    image_shape = (3, 32, 32)

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int | float = 5000,
        num_workers: int = 0,
        augment: str = "device",
        seed: int = 0,
        pin_memory: bool | None = None,
        device_resident: bool = True,
    ) -> None:
        super().__init__()
        self.batch_size = _check_positive_int("data.batch_size", batch_size)
        self.eval_batch_size = (
            self.batch_size
            if eval_batch_size is None
            else _check_positive_int("data.eval_batch_size", eval_batch_size)
        )
        self.num_workers = _check_positive_int("data.num_workers", num_workers, minimum=0)
        self.seed = _check_positive_int("data.seed", seed, minimum=0)
        if augment not in AUGMENT_MODES:
            raise ConfigError(
                f"data.augment={augment!r} is unknown; set data.augment=device (batched on the "
                f"accelerator) or data.augment=workers (torchvision in DataLoader workers)"
            )
        self.augment = augment
        self.val_size = self._check_val_size(val_size)
        self.pin_memory = pin_memory
        self.device_resident = bool(device_resident)
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None
        self._aug_generator: torch.Generator | None = None
        self._aug_epoch: int | None = None
        self._crops: tuple[Tensor, Tensor, Tensor] | None = None
        self._crops_key: tuple[int, torch.device] | None = None

    # ---- loading and splitting

    def _load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return (train_x uint8 [N,3,H,W], train_y int64 [N], test_x, test_y)."""
        raise NotImplementedError

    @staticmethod
    def _check_val_size(val_size: Any) -> int | float:
        fix = "set data.val_size to an image count >= 1 or a fraction between 0 and 1 (e.g. 0.1)"
        if isinstance(val_size, bool) or not isinstance(val_size, int | float):
            raise ConfigError(f"data.val_size={val_size!r} is not a number; {fix}")
        if isinstance(val_size, int) and val_size >= 1:
            return val_size
        if isinstance(val_size, float) and 0.0 < val_size < 1.0:
            return val_size
        raise ConfigError(f"data.val_size={val_size!r} is out of range; {fix}")

    def _num_val(self, n_train: int) -> int:
        n_val = self.val_size if isinstance(self.val_size, int) else round(self.val_size * n_train)
        if not 1 <= n_val < n_train:
            raise ConfigError(
                f"data.val_size={self.val_size!r} gives {n_val} validation images out of "
                f"{n_train}; set data.val_size so that between 1 and {n_train - 1} images "
                f"are held out"
            )
        return n_val

    def setup(self, stage: str | None = None) -> None:
        """Load and split once (idempotent); move the splits to the accelerator if resident."""
        if self._splits is None:
            train_x, train_y, test_x, test_y = self._load_arrays()
            n_val = self._num_val(len(train_y))
            g = torch.Generator().manual_seed(derive_seed(self.seed, _SPLIT_STREAM))
            perm = torch.randperm(len(train_y), generator=g)
            val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
            self._splits = {
                "train": (train_x[train_idx], train_y[train_idx]),
                "val": (train_x[val_idx], train_y[val_idx]),
                "test": (test_x, test_y),
            }
        device = self._resident_device()
        if device is not None:
            self._splits = {k: (x.to(device), y.to(device)) for k, (x, y) in self._splits.items()}

    def _pin_memory(self) -> bool:
        """None (the default): pin host batches when they go to a GPU, so the copy can overlap
        compute; pinning for a CPU run only costs time."""
        if self.pin_memory is not None:
            return bool(self.pin_memory)
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def _shard(self) -> tuple[int, int]:
        """(rank, world size) of this process: each rank draws its own shard (the trainer sets
        use_distributed_sampler=false: Lightning's sampler would pad evaluation)."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _resident_device(self) -> torch.device | None:
        if not (self.device_resident and self.augment == "device" and self.trainer is not None):
            return None
        return self.trainer.strategy.root_device

    def arrays(self, split: str) -> tuple[Tensor, Tensor]:
        """Raw (uint8 images, labels) of "train", "val" or "test" after setup (e.g. calibration)."""
        if self._splits is None:
            raise RuntimeError("call setup() before asking for data arrays")
        return self._splits[split]

    # ---- loaders

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def calibration_dataloader(self) -> DataLoader:
        """Training images WITHOUT augmentation, in a seeded shuffled order: what PTQ observers
        see. Batches arrive as uint8 and are normalised by `on_after_batch_transfer`."""
        x, y = self.arrays("train")
        sampler = EpochSeededRandomSampler(len(y), self.seed)
        batches = EpochBatchSampler(sampler, self.batch_size, drop_last=False)
        return DataLoader(BatchTensorDataset(x, y), batch_size=None, sampler=batches)

    def calibration_view(self) -> LightningDataModule:
        """This data with the calibration batches as its validation set, so that Lightning's own
        loop (`trainer.validate`) drives the PTQ observers."""
        return _CalibrationView(self)

    def eval_dataloader(self, split: str = "test") -> DataLoader:
        """Every image of `split` in one process, whatever the trainer's world size: evaluation
        outside Lightning (FP32 reference, the int8 model on the CPU) after a DDP run."""
        return self._loader(split, train=False, shard=False)

    def _loader(self, split: str, train: bool, shard: bool = True) -> DataLoader:
        x, y = self.arrays(split)
        n = len(y)
        batch_size = self.batch_size if train else self.eval_batch_size
        rank, world_size = self._shard() if shard else (0, 1)
        sampler: Sampler[int] = (
            EpochSeededRandomSampler(n, self.seed, rank, world_size)
            if train
            else ShardedSequentialSampler(n, rank, world_size)
        )
        on_cpu = x.device.type == "cpu"
        workers = self.num_workers if on_cpu else 0  # CUDA tensors cannot be sliced in workers
        common = {
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "pin_memory": on_cpu and self._pin_memory(),
        }
        if self.augment == "device":
            batches = EpochBatchSampler(sampler, batch_size, drop_last=False)
            dataset = BatchTensorDataset(x, y, with_index=train)
            return DataLoader(dataset, batch_size=None, sampler=batches, **common)
        transform = train_transform() if train else eval_transform()
        return DataLoader(
            PILImageDataset(x, y, transform), batch_size=batch_size, sampler=sampler, **common
        )

    # ---- on-device augmentation

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 batches: augment (training only) and normalise; float batches pass through.

        Training batches carry their images' indices: each image's crop and flip is drawn once
        per epoch for the whole training split from (seed, epoch) and looked up by index, so it
        does not depend on which batch, rank or resumed run the image lands in (a 2-process run
        augments exactly as a 1-process one). Batches without indices draw per batch.
        """
        x, y = batch[0], batch[1]
        if x.dtype != torch.uint8:
            return batch
        trainer = self.trainer
        if trainer is not None and trainer.training:
            epoch = trainer.current_epoch
            if len(batch) > 2:
                idx = batch[2]
                top, left, flip = self._epoch_crops(x.device, epoch)
                x = pad_crop_flip(x, top[idx], left[idx], flip[idx])
            else:
                x = random_pad_crop_flip(x, generator=self._generator(x.device, epoch))
        out = (normalize(x), y)
        return list(out) if isinstance(batch, list) else out

    def _epoch_crops(self, device: torch.device, epoch: int) -> tuple[Tensor, Tensor, Tensor]:
        """Every training image's (top, left, flip) for `epoch`, drawn once on `device`."""
        key = (epoch, device)
        if self._crops_key != key:
            n = len(self.arrays("train")[1])
            self._crops = crop_params(n, generator=self._generator(device, epoch), device=device)
            self._crops_key = key
        return self._crops

    def _generator(self, device: torch.device, epoch: int) -> torch.Generator:
        """Reseeded from (seed, epoch) at each new epoch so augmentation never depends on how
        many batches ran before (e.g. validation or a resumed run)."""
        g = self._aug_generator
        if g is None or self._aug_epoch != epoch or g.device != device:
            g = torch.Generator(device=device)
            g.manual_seed(derive_seed(self.seed, epoch, _AUGMENT_STREAM))
            self._aug_generator, self._aug_epoch = g, epoch
        return g


class _CalibrationView(LightningDataModule):
    """`TensorImageDataModule.calibration_view()`: calibration batches served as validation."""

    def __init__(self, source: TensorImageDataModule) -> None:
        super().__init__()
        self.source = source

    def val_dataloader(self) -> DataLoader:
        return self.source.calibration_dataloader()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch[0], batch[1]
        return network_input(x), y
