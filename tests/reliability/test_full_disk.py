"""A disk that fills up while a run writes: one line naming the file and the cause, exit 1,
results.json "failed" where it can still be written, and the last good checkpoint intact."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY
from tests.reliability.faults import FullDiskFrom, fault_overrides
from tests.reliability.runs import TRAIN, output, run_cli

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it

RUN = [*TINY, "trainer.max_epochs=3", "scheduler.warmup_epochs=0"]


def assert_one_line_write_error(result: subprocess.CompletedProcess[str], run_dir: Path) -> str:
    """Exit 1 (work had begun) and one `labquant-train: error: no space left on device while
    writing <a file of the run>` line; no traceback."""
    assert result.returncode == 1, output(result)[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-2000:]
    prefix = f"labquant-train: error: no space left on device while writing {run_dir}/"
    assert errors[0].startswith(prefix), errors[0]
    return errors[0]


def assert_last_checkpoint_whole(run_dir: Path, epoch: int | None = None) -> None:
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    if epoch is not None:
        assert last["epoch"] == epoch
    assert not list((run_dir / "checkpoints").glob("*.tmp"))  # no half-written file left


@pytest.mark.slow
def test_a_write_failing_mid_checkpoint_keeps_the_last_good_one(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fault = fault_overrides("disk", FullDiskFrom, epoch=1)
    result = run_cli(TRAIN, *RUN, *fault, run_dir=run_dir)
    line = assert_one_line_write_error(result, run_dir)
    assert ".ckpt; free space there and rerun" in line
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "failed" and record["error_type"] == "ArtifactWriteError"
    assert_last_checkpoint_whole(run_dir, epoch=0)  # epoch 0's, not epoch 1's half


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A 3 MiB tmpfs: room for a few checkpoints of a width-24 network, not for the run."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root only): {mounted.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_real_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(
    tiny_tmpfs: Path,
) -> None:
    """Case 4 of the issue: today's main ends in three chained OSError tracebacks, exit 1."""
    run_dir = tiny_tmpfs / "run"
    result = run_cli(TRAIN, *RUN, "model.base_width=24", "trainer.max_epochs=4", run_dir=run_dir)
    assert_one_line_write_error(result, run_dir)
    assert_last_checkpoint_whole(run_dir)
