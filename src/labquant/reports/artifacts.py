"""Writing run artifacts so that a kill mid-write never leaves a partial file behind."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a temporary file beside `path`, then rename it over `path`.

    The rename is atomic on POSIX, so readers see the old file or the new one, never half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file 0600; results are meant to be read by others, as open() would allow.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def file_size_mib(path: Path) -> float:
    return Path(path).stat().st_size / 2**20


def serialized_mib(obj: Any, save: Callable[[Any, IO[bytes]], None] = torch.save) -> float:
    """Size in MiB of `obj` saved with `save` (a state_dict by default), without a file."""
    buffer = io.BytesIO()
    save(obj, buffer)
    return buffer.getbuffer().nbytes / 2**20


def completed_results(folder: Path) -> dict[str, Any] | None:
    """folder/results.json when it says the run is complete, else None (missing, damaged,
    failed): what makes a run skipped, protected, or a row of a report."""
    path = Path(folder) / "results.json"
    try:
        results = read_json(path) if path.is_file() else None
    except ValueError:
        return None
    return results if isinstance(results, dict) and results.get("status") == "complete" else None
