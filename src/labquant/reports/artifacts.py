"""Writing run artifacts so that a kill mid-write never leaves a partial file behind."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from labquant.errors import ArtifactWriteError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a temporary file beside `path`, then rename it over `path`.

    The rename is atomic on POSIX, so readers see the old file or the new one, never half: a
    full disk leaves the previous file intact. A file-system error (no space, quota, read-only)
    becomes ArtifactWriteError, one line that names `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise ArtifactWriteError(path, error) from error
    tmp = Path(tmp_name)
    try:
        # mkstemp makes the file 0600; results are read by others, as open() would allow.
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except OSError as error:
        raise ArtifactWriteError(path, error) from error
    finally:
        tmp.unlink(missing_ok=True)


def write_torch(path: Path, obj: Any) -> None:
    """torch.save `obj` to `path` atomically. Serialized in memory first: torch's C++ writer
    reports a full disk as an opaque RuntimeError, Python's file write as the OSError it is."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def write_bytes(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_csv(path: Path, rows: list[dict[str, Any]], fields: Sequence[str]) -> None:
    """`rows` as CSV with the `fields` columns (other keys left out), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


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
