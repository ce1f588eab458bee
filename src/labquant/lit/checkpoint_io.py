"""Checkpoints written so that a full disk never damages the last good one.

Lightning's TorchCheckpointIO writes through an fsspec transaction whose temporary file lives in
the system temp folder; committing it to a run folder on another file system is a copy into the
checkpoint's own path, so a disk that fills up mid-copy leaves `last.ckpt` truncated. Here the
temporary file sits beside the checkpoint and is renamed over it (reports.artifacts.write_atomic):
the previous checkpoint stays whole until the new one is complete, and a full disk is one line
naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from labquant.reports.artifacts import write_torch


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose save is write-beside-then-rename (loading is Lightning's own)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:  # as Lightning's own: nothing to pass them to
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        write_torch(Path(path), checkpoint)
