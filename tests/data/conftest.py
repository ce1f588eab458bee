"""Shared fixtures for the data tests: generated CIFAR-style folders and the real mini subset."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]


def write_batch(path: Path, n: int, rng: np.random.Generator, label_offset: int = 0) -> None:
    """One pickled batch in the official layout (str keys, as a Python 3 pickle writes them)."""
    labels = [(i + label_offset) % 10 for i in range(n)]
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    with open(path, "wb") as f:
        pickle.dump({"batch_label": path.name, "data": data, "labels": labels}, f)


@pytest.fixture
def make_cifar_folder() -> Callable[..., Path]:
    """Build `<root>/cifar-10-batches-py` with n_per_file images per train batch, n_test test."""

    def make(root: Path, n_per_file: int = 12, n_test: int = 10, seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i, name in enumerate(TRAIN_FILES):
            write_batch(folder / name, n_per_file, rng, label_offset=i)
        write_batch(folder / "test_batch", n_test, rng)
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
        return root

    return make


@pytest.fixture(scope="session")
def mini_root() -> Path:
    """Folder holding the real cifar10-mini `cifar-10-batches-py`; skips the test without it."""
    env = os.environ.get("LABQUANT_CIFAR10_MINI")
    root = Path(env) if env else REPO.parent / "shared" / "data" / "cifar10-mini"
    if not (root / "cifar-10-batches-py").is_dir():
        where = f"LABQUANT_CIFAR10_MINI={env}" if env else str(root)
        pytest.skip(f"real cifar10-mini data not found ({where} has no cifar-10-batches-py)")
    return root
