"""The stage's loggers: a CSV logger whose metrics.csv survives `resume=true`, and a
TensorBoard logger whose steps follow the stage it starts from.

Lightning 2.6's CSVLogger deletes an existing metrics.csv when its writer starts
(`_ExperimentWriter._check_log_dir_exists`), so a resumed run's metrics.csv and
loss_accuracy.png would lose every epoch before the kill. Lightning offers no option for this,
and the writer starts before the checkpoint is restored, so it cannot know the resumed step.

This writer keeps the old rows and decides at its first save: rows logged by the killed run at
or after the first step this run logs are dropped (this run logs them again), earlier rows are
kept. Lightning logs every row with the global step it belongs to, and the learning-rate monitor
logs first, at the resumed step itself, so each epoch ends up in the file exactly once. A fresh
run logs from step 0 and therefore keeps nothing, as before.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from labquant.reports.artifacts import write_atomic


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


class ResumableExperimentWriter(ExperimentWriter):
    """Lightning's writer, minus the deletion of the previous run's metrics.csv."""

    def __init__(self, log_dir: str) -> None:
        self._previous: list[dict[str, str]] | None = None
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="") as handle:
                self._previous = list(csv.DictReader(handle))

    def save(self) -> None:
        if self._previous is not None and self.metrics:
            self._merge_previous()
        super().save()

    def _merge_previous(self) -> None:
        """Write the rows of the previous run that come before this run's first step, once."""
        first_step = min(_step(row) for row in self.metrics)
        kept = [row for row in self._previous or [] if _step(row) < first_step]
        self._previous = None
        keys = sorted({key for row in [*kept, *self.metrics] for key in row})
        self.metrics_keys = keys

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=keys)
                writer.writeheader()
                writer.writerows(kept)

        # Atomic: a second kill during this rewrite leaves the old file, not half of it. The
        # temporary file is created 0600; the file keeps the permissions it had.
        path = Path(self.metrics_file_path)
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        write_atomic(path, write)
        path.chmod(mode)


class ResumableCSVLogger(CSVLogger):
    """`lightning.pytorch.loggers.CSVLogger` with a metrics.csv that a resumed run extends."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir or ".", exist_ok=True)
            self._experiment = ResumableExperimentWriter(log_dir=self.log_dir)
        return self._experiment


class StageTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger for one stage's run, as a user reads it in TensorBoard.

    - `step_offset` shifts every step: a QAT run starts at the FP32 run's last step, so its
      curves follow FP32's on one axis instead of lying on top of FP32's first epochs
      (tasks/quantize.py sets it from the FP32 checkpoints).
    - Lightning's `epoch` value (added to every row) and the test-image counter are left out:
      single-point charts that would open the SCALARS tab. metrics.csv keeps both.
    """

    OMITTED = frozenset({"epoch", "test/images"})

    def __init__(self, *args: Any, step_offset: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_offset = step_offset

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        kept = {key: value for key, value in metrics.items() if key not in self.OMITTED}
        if kept:
            super().log_metrics(kept, None if step is None else step + self.step_offset)
