"""CIFAR-10 in the official "python version" layout: reading, downloading, DataModule."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from labquant.data.tensors import TensorImageDataModule
from labquant.errors import ConfigError, DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
_REPAIR = (
    "delete the folder and re-download with data.download=true, "
    "or point data.root at an intact copy"
)


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


# --------------------------------------------------------------------------- CIFAR-10


class CIFAR10DataModule(TensorImageDataModule):
    """CIFAR-10 from `<root>/cifar-10-batches-py`, downloaded there if `download` is set."""

    # Label order of the batch files (batches.meta); the report's per-class table names them.
    class_names = (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )

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
    "CIFAR10DataModule",
    "download_cifar10",
    "read_cifar10_folder",
]
