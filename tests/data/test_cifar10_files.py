"""Reading, validating and downloading CIFAR-10 folders; user mistakes give one-line errors."""

from __future__ import annotations

import functools
import hashlib
import http.server
import pickle
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from labquant.data import CIFAR10DataModule, read_cifar10_folder
from labquant.errors import ConfigError, DataError


def assert_one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_read_folder_shapes_and_dtypes(tmp_path: Path, make_cifar_folder) -> None:
    root = make_cifar_folder(tmp_path, n_per_file=7, n_test=5)
    train_x, train_y, test_x, test_y = read_cifar10_folder(root / "cifar-10-batches-py")
    assert train_x.shape == (35, 3, 32, 32) and train_x.dtype == torch.uint8
    assert train_y.shape == (35,) and train_y.dtype == torch.int64
    assert test_x.shape == (5, 3, 32, 32) and test_y.tolist() == [0, 1, 2, 3, 4]


def test_read_accepts_bytes_keys(tmp_path: Path, make_cifar_folder) -> None:
    """The official files are Python 2 pickles whose keys load as bytes under encoding=bytes."""
    folder = make_cifar_folder(tmp_path) / "cifar-10-batches-py"
    path = folder / "data_batch_2"
    entry = pickle.loads(path.read_bytes())
    path.write_bytes(pickle.dumps({k.encode(): v for k, v in entry.items()}))
    assert read_cifar10_folder(folder)[0].shape[0] == 60


def test_missing_folder_names_root_and_download(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(root=str(tmp_path / "nowhere"), download=False, val_size=2)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    assert_one_line(err, "data.root=", "data.download=true", "cifar-10-batches-py")
    with pytest.raises(DataError) as err:  # a direct setup() says the same
        dm.setup("fit")
    assert_one_line(err, "data.root=", "data.download=true")


def test_root_pointing_at_batches_folder_itself(tmp_path: Path, make_cifar_folder) -> None:
    folder = make_cifar_folder(tmp_path) / "cifar-10-batches-py"
    with pytest.raises(DataError) as err:
        CIFAR10DataModule(root=str(folder), val_size=2).setup()
    assert_one_line(err, f"data.root={tmp_path}")


def corrupt_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_shape(path: Path) -> None:
    entry = pickle.loads(path.read_bytes())
    entry["data"] = entry["data"][:, :1000]
    path.write_bytes(pickle.dumps(entry))


def corrupt_dtype(path: Path) -> None:
    entry = pickle.loads(path.read_bytes())
    entry["data"] = entry["data"].astype(np.float32)
    path.write_bytes(pickle.dumps(entry))


def corrupt_label_count(path: Path) -> None:
    entry = pickle.loads(path.read_bytes())
    entry["labels"] = entry["labels"][:-1]
    path.write_bytes(pickle.dumps(entry))


def corrupt_label_range(path: Path) -> None:
    entry = pickle.loads(path.read_bytes())
    entry["labels"][0] = 10
    path.write_bytes(pickle.dumps(entry))


def corrupt_delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("corrupt", "needle"),
    [
        (corrupt_truncate, "truncated or corrupt"),
        (corrupt_shape, "expected uint8 [n, 3072]"),
        (corrupt_dtype, "expected uint8 [n, 3072]"),
        (corrupt_label_count, "labels for"),
        (corrupt_label_range, "outside 0..9"),
        (corrupt_delete, "missing"),
    ],
)
def test_bad_batch_file_names_the_file(tmp_path: Path, make_cifar_folder, corrupt, needle) -> None:
    root = make_cifar_folder(tmp_path)
    bad = root / "cifar-10-batches-py" / "data_batch_3"
    corrupt(bad)
    with pytest.raises(DataError) as err:
        CIFAR10DataModule(root=str(root), val_size=2).setup("fit")
    assert_one_line(err, str(bad), needle, "data.download=true", "data.root")


@pytest.mark.parametrize("val_size", [0, -3, 0.0, 1.0, 1.5, True, "10", None])
def test_bad_val_size_is_config_error(tmp_path: Path, val_size) -> None:
    with pytest.raises(ConfigError) as err:
        CIFAR10DataModule(root=str(tmp_path), val_size=val_size)
    assert_one_line(err, "data.val_size")


def test_val_size_larger_than_train_set(tmp_path: Path, make_cifar_folder) -> None:
    root = make_cifar_folder(tmp_path, n_per_file=4)  # 20 training images
    with pytest.raises(ConfigError) as err:
        CIFAR10DataModule(root=str(root), val_size=20).setup()
    assert_one_line(err, "data.val_size=20", "between 1 and 19")


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"augment": "gpu"}, "data.augment"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"eval_batch_size": -1}, "data.eval_batch_size"),
        ({"num_workers": -1}, "data.num_workers"),
        ({"seed": -1}, "data.seed"),
        ({"root": ""}, "data.root"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path: Path, kwargs, setting) -> None:
    with pytest.raises(ConfigError) as err:
        CIFAR10DataModule(**{"root": str(tmp_path), **kwargs})
    assert_one_line(err, setting)


def test_fraction_val_size(tmp_path: Path, make_cifar_folder) -> None:
    dm = CIFAR10DataModule(root=str(make_cifar_folder(tmp_path)), val_size=0.25)
    dm.setup()
    assert len(dm.arrays("val")[1]) == 15 and len(dm.arrays("train")[1]) == 45


# --------------------------------------------------------------------------- download


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # torchvision probes the URL and hangs up early: a broken pipe here is expected


@pytest.fixture
def http_dir(tmp_path: Path, monkeypatch) -> Iterator[tuple[Path, str]]:
    """(folder served, base url) of an HTTP server on 127.0.0.1 at a free port."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    server = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def make_archive(tmp_path: Path, served: Path, make_cifar_folder) -> str:
    """Write served/cifar-10-python.tar.gz holding cifar-10-batches-py/; return its md5."""
    src = make_cifar_folder(tmp_path / "src", n_per_file=6, n_test=4)
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_extract_and_read(tmp_path: Path, http_dir, make_cifar_folder) -> None:
    served, base = http_dir
    md5 = make_archive(tmp_path, served, make_cifar_folder)
    root = tmp_path / "dl"
    dm = CIFAR10DataModule(
        root=str(root), download=True, url=f"{base}/cifar-10-python.tar.gz", md5=md5, val_size=3
    )
    dm.prepare_data()
    dm.setup("fit")
    assert (root / "cifar-10-batches-py" / "test_batch").is_file()
    assert len(dm.arrays("train")[1]) == 27 and len(dm.arrays("val")[1]) == 3
    assert dm.arrays("test")[0].shape == (4, 3, 32, 32)


def test_download_in_plain_setup(tmp_path: Path, http_dir, make_cifar_folder) -> None:
    """Without a Trainer (no prepare_data call), setup() downloads when download=true."""
    served, base = http_dir
    md5 = make_archive(tmp_path, served, make_cifar_folder)
    dm = CIFAR10DataModule(
        root=str(tmp_path / "dl"), download=True, url=f"{base}/cifar-10-python.tar.gz", md5=md5
    )
    dm.val_size = 3
    dm.setup()
    assert len(dm.arrays("test")[1]) == 4


def test_download_wrong_md5(tmp_path: Path, http_dir, make_cifar_folder) -> None:
    served, base = http_dir
    make_archive(tmp_path, served, make_cifar_folder)
    root = tmp_path / "dl"
    dm = CIFAR10DataModule(
        root=str(root), download=True, url=f"{base}/cifar-10-python.tar.gz", md5="0" * 32
    )
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    assert_one_line(err, "md5", "data.root", "data.download")
    assert not (root / "cifar-10-python.tar.gz").exists()  # a retry must not trust it
    assert not (root / "cifar-10-batches-py").exists()


def test_download_network_failure(tmp_path: Path, monkeypatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dm = CIFAR10DataModule(
        root=str(tmp_path), download=True, url=f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    )
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    assert_one_line(err, "could not download", "data.root", "data.download")


# --------------------------------------------------------------------------- real mini subset


def test_real_mini_data(mini_root: Path) -> None:
    dm = CIFAR10DataModule(root=str(mini_root), val_size=500)
    dm.prepare_data()
    dm.setup("fit")
    sizes = {split: len(dm.arrays(split)[1]) for split in ("train", "val", "test")}
    # 1102 + 4 * 1017 = 5170 training images (the README's "6,170" total is a miscount of its
    # own per-file table)
    assert sizes == {"train": 5170 - 500, "val": 500, "test": 1017}
    for split in ("train", "val", "test"):
        x, y = dm.arrays(split)
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32)
        assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    # real photos, not noise: neighbouring pixels are strongly correlated
    x = dm.arrays("test")[0].float()
    a, b = x[..., :-1].flatten(), x[..., 1:].flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.8
