"""One labquant process per run folder: an exclusive OS file lock on `<folder>/.labquant.lock`.

`fcntl.flock` belongs to the open file, so the kernel drops it when the process ends however it
ends (kill -9 included): no stale lock to clean up. The file keeps the holder's pid for the
error a second run gets. Locks are counted per process, so the entry point (before Hydra writes
`.hydra/`) and the task runner can both take the same folder's lock.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from labquant.errors import ArtifactWriteError, RunFolderInUse

LOCK_NAME = ".labquant.lock"
_held: dict[Path, tuple[int, int]] = {}  # folder -> (fd, how many holders in this process)


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


def acquire(folder: Path | str) -> None:
    """Take `folder`'s lock (creating the folder), or raise RunFolderInUse at once."""
    folder = Path(folder).resolve()
    if folder in _held:
        fd, count = _held[folder]
        _held[folder] = (fd, count + 1)
        return
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ArtifactWriteError(path, error) from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunFolderInUse(
            f"{folder} is in use by another labquant run ({_holder(path)}); wait for it to end "
            "or choose another hydra.run.dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[folder] = (fd, 1)


def release(folder: Path | str) -> None:
    """Give back one hold on `folder`'s lock; the last one unlocks it."""
    folder = Path(folder).resolve()
    if folder not in _held:
        return
    fd, count = _held.pop(folder)
    if count > 1:
        _held[folder] = (fd, count - 1)
        return
    os.close(fd)  # closing the only descriptor drops the flock


@contextmanager
def run_folder_lock(folder: Path | str, enabled: bool = True) -> Iterator[None]:
    """Hold `folder`'s lock for the block (`enabled=False`: DDP ranks > 0 share rank 0's)."""
    if not enabled:
        yield
        return
    acquire(folder)
    try:
        yield
    finally:
        release(folder)
