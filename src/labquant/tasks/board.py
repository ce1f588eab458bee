"""Each stage's TensorBoard run, written once the stage's results are known.

A stage folder's `tensorboard/` is one run (conf/logger: `<run>/tensorboard`), so
`tensorboard --logdir <lab folder>` shows FP32, PTQ and QAT side by side; the HPARAMS tab has one
row per stage (stage, backend, qconfig and its widths and rules | test_acc, acc_drop, size_mib,
packed_size_mib), beside
the stage's figures and the weight histograms of its quantized layers. PTQ trains nothing, so
this is its only TensorBoard run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import nn

from labquant.config.instantiate import instantiate
from labquant.reports.curves import loss_accuracy_figure, read_epoch_metrics
from labquant.reports.figures import qat_scales_figure, sqnr_bar_figure, stage_label
from labquant.reports.sensitivity import sensitivity_figure, sensitivity_markdown
from labquant.tasks.common import flat_hparams

STAGE_HPARAMS = ("stage", "backend", "qconfig", "max_shift_amount", "weight_bits",
                 "activation_bits", "granularity", "exponent", "range")  # fmt: skip
STAGE_METRICS = ("test_acc", "acc_drop", "size_mib", "packed_size_mib", "val_acc", "best_val_acc")


def stage_logger(cfg: DictConfig) -> TensorBoardLogger | None:
    """The run's TensorBoard logger as conf/logger configures it; None when switched off."""
    config = (cfg.get("logger") or {}).get("tensorboard")
    return instantiate(config, "logger.tensorboard") if config else None


def stage_figures(results: dict[str, Any], metrics_csv: Path | None) -> dict[str, Figure]:
    """figures/<name> of one stage: curves (trained stages), SQNR bars, QAT scale heat map."""
    label = f"{results.get('model', '')} {stage_label(results)}".strip()
    series = read_epoch_metrics(metrics_csv) if metrics_csv and metrics_csv.is_file() else {}
    figures: dict[str, Figure] = {}
    if series.get("train/loss"):
        figures["loss_accuracy"] = loss_accuracy_figure(series, f"{label}: loss and accuracy")
    if results.get("layers"):
        figures["sqnr_layers"] = sqnr_bar_figure(results["layers"], f"{label}: per-layer SQNR")
    order = [layer["name"] for layer in results.get("layers") or []]  # network order
    scales = qat_scales_figure(series, f"{label}: fake-quant scales over QAT epochs", order)
    if scales is not None:
        figures["qat_scales"] = scales
    return figures


def float_layer_weights(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every conv / linear weight of a float network (FP32 training's histograms); an int8
    stage's come from its backend (`layer_weights`)."""
    return {
        name: module.weight.detach().float().cpu()
        for name, module in net.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    }


def log_stage(
    cfg: DictConfig,
    results: dict[str, Any],
    metrics_csv: Path | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Figures, weight histograms and the HPARAMS row of one finished stage."""
    logger = stage_logger(cfg)
    if logger is None:
        return
    writer = logger.experiment
    for tag, figure in stage_figures(results, metrics_csv).items():
        writer.add_figure(f"figures/{tag}", figure, global_step=0, close=True)
    for name, weight in (weights or {}).items():
        writer.add_histogram(f"weights/{name}", weight, global_step=0)
    stage = {k: results[k] for k in STAGE_HPARAMS if results.get(k) is not None}
    metrics = {
        f"hparams/{k}": float(results[k]) for k in STAGE_METRICS if results.get(k) is not None
    }
    logger.log_hyperparams({**stage, **flat_hparams(cfg)}, metrics)
    logger.save()
    logger.finalize("success")


def log_sensitivity(cfg: DictConfig, results: dict[str, Any]) -> None:
    """labquant-sensitivity's TensorBoard run: the bar figure, the table as text, and per layer
    the validation accuracy and logits SQNR with only it at the low width and only it at 8."""
    logger = stage_logger(cfg)
    if logger is None:
        return
    writer = logger.experiment
    writer.add_figure("figures/sensitivity", sensitivity_figure(results), global_step=0, close=True)
    writer.add_text("sensitivity", sensitivity_markdown(results), global_step=0)
    for row in results["layers"]:
        for side in ("only_low", "only_high"):
            writer.add_scalar(f"{side}_val_acc/{row['name']}", row[side]["val_acc"], 0)
            writer.add_scalar(f"{side}_sqnr_db/{row['name']}", row[side]["sqnr_db"], 0)
    proposal = results.get("proposal") or {}
    hparams = {"qconfig": results["qconfig"], "backend": results["backend"]}
    metrics = {
        f"hparams/proposal_{key}": float(proposal[key])
        for key in ("val_acc", "val_drop_pp", "packed_size_mib")
        if proposal.get(key) is not None
    }
    logger.log_hyperparams(hparams, metrics)
    logger.save()
    logger.finalize("success")
