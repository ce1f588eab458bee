"""CIFAR-10 on disk and the in-memory tensor DataModule every labquant data set shares.

CIFAR-10 fits in memory (50k x 3 KiB), so each split is ONE uint8 tensor, optionally kept on the
accelerator; batches are cut by index and augmented there (augment="device"). The classic
torchvision/PIL pipeline in DataLoader workers (augment="workers") stays available to compare
against the lab's earlier runs.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from labquant.data.augment import eval_transform, normalize, random_pad_crop_flip, train_transform
from labquant.errors import ConfigError, DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
AUGMENT_MODES = ("device", "workers")

# Independent random streams derived from one user seed (split, shuffle, augmentation).
_SPLIT_STREAM, _SHUFFLE_STREAM, _AUGMENT_STREAM = 0, 1, 2
_REPAIR = (
    "delete the folder and re-download with data.download=true, "
    "or point data.root at an intact copy"
)


def derive_seed(*keys: int) -> int:
    """Mix integer keys (seed, epoch, stream) into one 64-bit seed.

    Plain `seed + epoch` would make (seed=0, epoch=1) and (seed=1, epoch=0) identical streams.
    """
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])


# --------------------------------------------------------------------------- files on disk


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no details"
    return f"{type(exc).__name__}: {text[:160]}"


def _read_batch_file(path: Path, num_classes: int = 10) -> tuple[Tensor, Tensor]:
    """One pickled CIFAR batch -> (uint8 [n,3,32,32], int64 [n]); any defect -> DataError naming it.

    No md5 check on purpose: valid subsets (e.g. cifar10-mini) have non-official sums. Pickle runs
    code on load, as in torchvision: only point data.root at files you trust.
    """
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except FileNotFoundError:
        raise DataError(f"data file {path} is missing; {_REPAIR}") from None
    except Exception as exc:  # truncated pickles raise EOFError, UnpicklingError, ValueError, ...
        raise DataError(
            f"data file {path} is truncated or corrupt ({_one_line(exc)}); {_REPAIR}"
        ) from exc
    if not isinstance(entry, dict):
        raise DataError(
            f"data file {path} is not a CIFAR-10 batch (a {type(entry).__name__}, not a dict); "
            f"{_REPAIR}"
        )
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data, labels = entry.get("data"), entry.get("labels")
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3 * 32 * 32
    ):
        got = (
            f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else repr(data)[:40]
        )
        raise DataError(f"data file {path} has 'data' {got}, expected uint8 [n, 3072]; {_REPAIR}")
    try:
        y = np.asarray(labels)
    except Exception:
        y = np.asarray([])
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != len(data):
        raise DataError(
            f"data file {path} has {len(y) if y.ndim == 1 else 'no usable'} integer labels for "
            f"{len(data)} images; {_REPAIR}"
        )
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(
            f"data file {path} has labels outside 0..{num_classes - 1} "
            f"(min {y.min()}, max {y.max()}); {_REPAIR}"
        )
    x = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))
    return x, torch.from_numpy(y.astype(np.int64))


def read_cifar10_folder(folder: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Read a `cifar-10-batches-py` folder -> (train_x, train_y, test_x, test_y).

    Images are uint8 [N,3,32,32] (R,G,B planes, as stored), labels int64 [N].
    """
    folder = Path(folder)
    train = [_read_batch_file(folder / name) for name in TRAIN_FILES]
    test_x, test_y = _read_batch_file(folder / TEST_FILE)
    train_x = torch.cat([x for x, _ in train])
    train_y = torch.cat([y for _, y in train])
    return train_x, train_y, test_x, test_y


def download_cifar10(root: Path, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> None:
    """Download and unpack the CIFAR-10 archive into root; md5-checked, as this is the official
    archive (unlike folders a user points data.root at)."""
    root = Path(root).expanduser()
    archive = root / ARCHIVE_NAME
    try:
        download_and_extract_archive(url, download_root=str(root), filename=ARCHIVE_NAME, md5=md5)
    except Exception as exc:
        if archive.is_file() and not check_integrity(str(archive), md5):
            archive.unlink()  # never leave a bad archive that a retry would trust
            reason = f"the downloaded file's md5 is not {md5}"
        else:
            reason = _one_line(exc)
        raise DataError(
            f"could not download CIFAR-10 from {url} into data.root={root} ({reason}); check the "
            f"network, or fetch and unpack the archive by hand, point data.root at the folder "
            f"holding {BATCHES_DIR} and set data.download=false"
        ) from exc
    if not (root / BATCHES_DIR).is_dir():
        raise DataError(
            f"the archive {archive} has no {BATCHES_DIR} folder; delete it and retry with "
            f"data.download=true, or point data.root at an existing copy"
        )


# --------------------------------------------------------------------------- sampling


class EpochSeededRandomSampler(Sampler[int]):
    """A shuffle whose order depends only on (seed, epoch), so a resumed run sees the same order.

    Lightning calls `set_epoch` each epoch (on `loader.sampler` or `loader.batch_sampler.sampler`).
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, _SHUFFLE_STREAM))
        return iter(torch.randperm(self.n, generator=g).tolist())


class EpochBatchSampler(BatchSampler):
    """BatchSampler that forwards set_epoch: passed as a DataLoader's `sampler` (batch_size=None),
    it is what Lightning sees, so without this the inner shuffle would never change epoch."""

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


class BatchTensorDataset(Dataset):
    """Map dataset indexed by a whole batch of indices: one tensor gather, no per-sample Python."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.x.device)
        return self.x[idx], self.y[idx]


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
        pin_memory: bool = False,
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
        self.pin_memory = bool(pin_memory)
        self.device_resident = bool(device_resident)
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None
        self._aug_generator: torch.Generator | None = None
        self._aug_epoch: int | None = None

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

    def _loader(self, split: str, train: bool) -> DataLoader:
        x, y = self.arrays(split)
        n = len(y)
        batch_size = self.batch_size if train else self.eval_batch_size
        sampler: Sampler[int] = (
            EpochSeededRandomSampler(n, self.seed) if train else SequentialSampler(range(n))
        )
        on_cpu = x.device.type == "cpu"
        workers = self.num_workers if on_cpu else 0  # CUDA tensors cannot be sliced in workers
        common = {
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "pin_memory": self.pin_memory and on_cpu,
        }
        if self.augment == "device":
            batches = EpochBatchSampler(sampler, batch_size, drop_last=False)
            return DataLoader(BatchTensorDataset(x, y), batch_size=None, sampler=batches, **common)
        transform = train_transform() if train else eval_transform()
        return DataLoader(
            PILImageDataset(x, y, transform), batch_size=batch_size, sampler=sampler, **common
        )

    # ---- on-device augmentation

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 batches: augment (training only) and normalise; float batches pass through."""
        x, y = batch[0], batch[1]
        if x.dtype != torch.uint8:
            return batch
        trainer = self.trainer
        if trainer is not None and trainer.training:
            x = random_pad_crop_flip(x, generator=self._generator(x.device, trainer.current_epoch))
        out = (normalize(x), y, *batch[2:])
        return list(out) if isinstance(batch, list) else out

    def _generator(self, device: torch.device, epoch: int) -> torch.Generator:
        """Reseeded from (seed, epoch) at each new epoch so augmentation never depends on how
        many batches ran before (e.g. validation or a resumed run)."""
        g = self._aug_generator
        if g is None or self._aug_epoch != epoch or g.device != device:
            g = torch.Generator(device=device)
            g.manual_seed(derive_seed(self.seed, epoch, _AUGMENT_STREAM))
            self._aug_generator, self._aug_epoch = g, epoch
        return g


# --------------------------------------------------------------------------- CIFAR-10


class CIFAR10DataModule(TensorImageDataModule):
    """CIFAR-10 from `<root>/cifar-10-batches-py`, downloaded there if `download` is set."""

    def __init__(
        self,
        root: str,
        download: bool = False,
        url: str = CIFAR10_URL,
        md5: str = CIFAR10_MD5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not root or not isinstance(root, str | Path):
            raise ConfigError(
                f"data.root={root!r} is not a folder; set data.root to the folder that holds "
                f"{BATCHES_DIR}"
            )
        self.root = Path(root).expanduser()
        self.download = bool(download)
        self.url, self.md5 = url, md5

    @property
    def folder(self) -> Path:
        return self.root / BATCHES_DIR

    def _missing_error(self) -> DataError:
        if self.root.name == BATCHES_DIR and (self.root / TEST_FILE).is_file():
            return DataError(
                f"data.root={self.root} is the {BATCHES_DIR} folder itself; set "
                f"data.root={self.root.parent} (the folder that holds it)"
            )
        return DataError(
            f"data.root={self.root} has no {BATCHES_DIR} folder; point data.root at the folder "
            f"that holds it, or set data.download=true"
        )

    def prepare_data(self) -> None:
        if self.folder.is_dir():
            return
        if not self.download:
            raise self._missing_error()
        download_cifar10(self.root, self.url, self.md5)

    def _load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if not self.folder.is_dir():
            if self.download and self.trainer is None:
                self.prepare_data()  # plain use (no Trainer ran prepare_data on rank 0 first)
            else:
                raise self._missing_error()
        return read_cifar10_folder(self.folder)


__all__ = [
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "BatchTensorDataset",
    "CIFAR10DataModule",
    "EpochBatchSampler",
    "EpochSeededRandomSampler",
    "PILImageDataset",
    "TensorImageDataModule",
    "derive_seed",
    "download_cifar10",
    "read_cifar10_folder",
]
