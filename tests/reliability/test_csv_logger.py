"""ResumableCSVLogger: a resumed run's metrics.csv keeps the rows before the resumed step, once.

Lightning's CSVLogger deletes metrics.csv when a run starts in a folder that has one; the
kill-and-resume tests check the whole file after real runs, these check the rule quickly.
"""

from __future__ import annotations

import csv
from pathlib import Path

from labquant.lit.loggers import ResumableCSVLogger


def log_epochs(save_dir: Path, epochs: range, steps_per_epoch: int = 10) -> None:
    """What Lightning logs per epoch: lr at the epoch's first step, val/acc at its last."""
    logger = ResumableCSVLogger(save_dir, name="", version="")
    _ = logger.experiment  # as Lightning does in setup, before it restores a checkpoint
    for epoch in epochs:
        start = epoch * steps_per_epoch
        logger.log_metrics({"lr": 0.1 * (epoch + 1)}, step=start)
        logger.log_metrics(
            {"epoch": epoch, "val/acc": epoch / 10}, step=start + steps_per_epoch - 1
        )
        logger.save()


def rows(save_dir: Path) -> list[dict[str, str]]:
    with open(save_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_resumed_run_keeps_earlier_epochs_and_drops_the_killed_ones(tmp_path: Path) -> None:
    log_epochs(tmp_path, range(0, 3))  # killed after epoch 2 was logged but not checkpointed
    log_epochs(tmp_path, range(2, 4))  # resumed from epoch 1's checkpoint: epoch 2 again
    assert [r["epoch"] for r in rows(tmp_path) if r["epoch"]] == ["0", "1", "2", "3"]
    assert [r["lr"] for r in rows(tmp_path) if r["lr"]] == [
        "0.1",
        "0.2",
        "0.30000000000000004",
        "0.4",
    ]


def test_resumed_file_keeps_its_permissions(tmp_path: Path) -> None:
    log_epochs(tmp_path, range(0, 2))
    (tmp_path / "metrics.csv").chmod(0o644)
    log_epochs(tmp_path, range(1, 3))
    assert (tmp_path / "metrics.csv").stat().st_mode & 0o777 == 0o644


def test_fresh_run_in_the_same_folder_starts_a_new_file(tmp_path: Path) -> None:
    log_epochs(tmp_path, range(0, 3))
    log_epochs(tmp_path, range(0, 1))
    assert [r["epoch"] for r in rows(tmp_path) if r["epoch"]] == ["0"]


def test_a_run_that_logs_nothing_leaves_the_file_alone(tmp_path: Path) -> None:
    log_epochs(tmp_path, range(0, 2))
    before = (tmp_path / "metrics.csv").read_text()
    log_epochs(tmp_path, range(0))  # e.g. killed again before its first log
    assert (tmp_path / "metrics.csv").read_text() == before
