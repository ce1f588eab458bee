"""Test-only Lightning callbacks that inject faults at exact points of a run.

Passed to a CLI run as Hydra overrides (see `fault_overrides`); `build_trainer` instantiates
every entry of `cfg.callbacks`, so the run under test is the real entry point, not a copy.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch


class SigkillAt(pl.Callback):
    """`kill -9` this process at a deterministic point, not after a sleep.

    batch=None: at the start of `epoch`, after the previous epoch's last.ckpt was written (an
    epoch boundary). batch=k: after training batch k of `epoch` (mid-epoch, so the run loses
    work that the resumed run must redo).
    """

    def __init__(self, epoch: int, batch: int | None = None) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.batch is None and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        batch_idx = args[-1]
        if self.batch == batch_idx and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonWeightsAt(pl.Callback):
    """Fill every weight with NaN before training batch 0 of `epoch`: the loss turns NaN,
    as it does when training diverges, from a chosen epoch on."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            with torch.no_grad():
                for param in pl_module.parameters():
                    param.fill_(float("nan"))


class PauseAt(pl.Callback):
    """Sleep at the start of `epoch`: a run that is still going, for a second run to meet."""

    def __init__(self, epoch: int, seconds: float) -> None:
        self.epoch, self.seconds = epoch, seconds

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            time.sleep(self.seconds)


class FullDiskFrom(pl.Callback):
    """From the start of `epoch` on, every `Path.write_bytes` (how labquant writes checkpoints
    and model files: reports.artifacts.write_torch) writes half of its bytes and fails as a
    full disk does, with ENOSPC."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != self.epoch:
            return

        def write_half(path: Path, data: Any) -> int:
            with open(path, "wb") as handle:
                handle.write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        Path.write_bytes = write_half  # type: ignore[method-assign]


def fault_overrides(name: str, target: type[pl.Callback], **kwargs: Any) -> list[str]:
    """Hydra overrides that add `target(**kwargs)` to the run's callbacks."""
    prefix = f"+callbacks.{name}"
    path = f"{target.__module__}.{target.__qualname__}"
    return [f"{prefix}._target_={path}", *(f"{prefix}.{k}={v}" for k, v in kwargs.items())]
