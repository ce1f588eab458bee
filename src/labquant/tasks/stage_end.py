"""How every stage ends, FP32 training and PTQ / QAT alike: its curves as a PNG, its
TensorBoard run, its wall time and settings, and results.json written last (atomically: a
folder holds a complete record or none)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from labquant.reports.artifacts import write_json
from labquant.reports.curves import plot_loss_accuracy
from labquant.tasks.board import log_stage
from labquant.tasks.fingerprint import settings_record


def finish_stage(
    cfg: DictConfig,
    results: dict[str, Any],
    *,
    started: float,
    stage: str,
    metrics_csv: Path | None = None,
    curves_title: str | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    board_extra: dict[str, Any] | None = None,
    board_step: int = 0,
) -> dict[str, Any]:
    """Write the stage's figures, TensorBoard run and results.json; return the results.

    `stage` names the settings record (tasks/fingerprint.py); `board_extra` adds values to the
    TensorBoard row only (FP32's acc_drop 0: it is its own reference); `board_step` is the
    stage's last step on TensorBoard's axis (QAT's continue FP32's)."""
    out_dir = Path(cfg.paths.output_dir)
    if metrics_csv is not None and metrics_csv.exists() and curves_title:
        plot_loss_accuracy(metrics_csv, out_dir / "loss_accuracy.png", title=curves_title)
    log_stage(cfg, {**results, **(board_extra or {})}, metrics_csv, weights, board_step)
    results["wall_time_s"] = round(time.perf_counter() - started, 2)
    results.update(settings_record(cfg, stage))  # what a rerun must match to reuse it
    write_json(out_dir / "results.json", results)
    return results
