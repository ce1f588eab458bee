"""Artifacts are written to a temporary file and renamed: a write that stops half-way leaves
the previous file (or none), never half a file, and no temporary file behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from labquant.reports.artifacts import write_atomic, write_json
from labquant.reports.table import write_lab_report
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it


class SerializerDied(Exception):
    pass


def half_then_raise(data: bytes) -> Callable[[Path], None]:
    """A serializer that writes half of `data` and then fails, like a crash mid-write."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
        raise SerializerDied

    return write


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("previous", [b'{"status": "complete"}\n', None])
def test_interrupted_write_leaves_the_previous_file_or_none(
    tmp_path: Path, previous: bytes | None
) -> None:
    path = tmp_path / "results.json"
    if previous is not None:
        path.write_bytes(previous)
    with pytest.raises(SerializerDied):
        write_atomic(path, half_then_raise(b'{"status": "failed", "error": "x"}\n' * 100))
    assert (path.read_bytes() if path.exists() else None) == previous
    assert leftovers(tmp_path) == []


def test_interrupted_torch_save_keeps_the_previous_int8_file(tmp_path: Path) -> None:
    path = tmp_path / "model_int8_state_dict.pt"
    torch.save({"w": torch.ones(3)}, path)
    before = path.read_bytes()

    def save_then_die(tmp: Path) -> None:
        torch.save({"w": torch.zeros(10_000)}, tmp)
        raise SerializerDied

    with pytest.raises(SerializerDied):
        write_atomic(path, save_then_die)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_json_that_cannot_be_serialized_leaves_the_previous_results(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json(path, {"status": "complete"})

    class Unprintable:
        def __str__(self) -> str:
            raise SerializerDied

    with pytest.raises(SerializerDied):
        write_json(path, {"status": "complete", "bad": Unprintable()})
    assert json.loads(path.read_text()) == {"status": "complete"}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("failing", ["report.json", "report.md"])
def test_lab_report_write_that_fails_keeps_the_previous_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    rows = [{"stage": "fp32", "qconfig": None, "size_mib": 1.0, "test_acc": 90.0, "dir": "fp32"}]
    write_lab_report(tmp_path, rows, {}, notes=["first"])
    before = (tmp_path / failing).read_text()
    real_write_text = Path.write_text

    def write_text(self: Path, text: str, *args: object, **kwargs: object) -> int:
        if not self.name.startswith(f".{failing}."):  # the temporary file beside `failing`
            return real_write_text(self, text, *args, **kwargs)
        real_write_text(self, text[: len(text) // 2])
        raise SerializerDied

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(SerializerDied):
        write_lab_report(tmp_path, [{**rows[0], "test_acc": 10.0}], {}, notes=["second"])
    monkeypatch.undo()
    assert (tmp_path / failing).read_text() == before
    assert leftovers(tmp_path) == []


KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from labquant.reports.artifacts import write_atomic

def write(tmp):
    with open(tmp, "w") as handle:
        handle.write('{"status": "fai')
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

write_atomic(Path(sys.argv[1]), write)
"""


def test_kill_9_mid_write_keeps_the_previous_file(tmp_path: Path) -> None:
    """SIGKILL runs no cleanup: the previous file survives; the dead writer's hidden temporary
    file may stay beside it (readers never look at it)."""
    path = tmp_path / "results.json"
    path.write_text('{"status": "complete"}\n')
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_WRITE, str(path)], cwd=REPO_ROOT, timeout=120
    )
    assert killed.returncode == -9
    assert json.loads(path.read_text()) == {"status": "complete"}
    assert all(name.startswith(".results.json.") for name in leftovers(tmp_path))


def test_atomic_files_get_the_usual_permissions(tmp_path: Path) -> None:
    """Readable by others as with open(), not mkstemp's private 0600 (shared lab machines)."""
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "results.json", {"status": "complete"})
    finally:
        os.umask(old)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o644
