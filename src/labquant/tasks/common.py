"""What the pipelines share: building the LightningModule and Trainer from the config (each
through `instantiate`, so a bad setting is one line), the CSV file they log to."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from labquant.config.instantiate import instantiate
from labquant.lit.checkpoint_io import AtomicCheckpointIO
from labquant.lit.module import ClassifierModule


def build_module(
    cfg: DictConfig, net: torch.nn.Module | None = None, teacher: torch.nn.Module | None = None
) -> ClassifierModule:
    """The scheduler group holds a partial plus `interval` (step | epoch), which Lightning needs.
    A `teacher` (QAT's FP32 network) is distilled from as `cfg.quant.distill_*` say."""
    quant = cfg.get("quant") or {}
    scheduler = OmegaConf.to_container(cfg.get("scheduler") or {}, resolve=True)
    interval = scheduler.pop("interval", "epoch")
    return ClassifierModule(
        net=net if net is not None else instantiate(cfg.model, "model"),
        optimizer=instantiate(cfg.optimizer, "optimizer"),
        scheduler=instantiate(scheduler, "scheduler") if "_target_" in scheduler else None,
        scheduler_interval=interval,
        num_classes=cfg.model.num_classes,
        channels_last=cfg.get("channels_last", False),
        teacher=teacher,
        distill_weight=quant.get("distill_weight", 0.0),  # unused without a teacher
        distill_temperature=quant.get("distill_temperature", 1.0),
        scale_lr=quant.get("scale_lr"),  # qconfig.learn_scales' thresholds (None: the QAT lr)
        scale_optimizer=quant.get("scale_optimizer", "adam"),
    )


def build_trainer(cfg: DictConfig, extra_callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    callbacks = [
        instantiate(c, f"callbacks.{name}") for name, c in (cfg.get("callbacks") or {}).items() if c
    ]
    loggers = [
        instantiate(c, f"logger.{name}") for name, c in (cfg.get("logger") or {}).items() if c
    ]
    return instantiate(
        cfg.trainer,
        "trainer",
        callbacks=callbacks + list(extra_callbacks or []),
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],  # a full disk never truncates the last good checkpoint
    )


def metrics_csv_path(trainer: pl.Trainer) -> Path | None:
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            return Path(logger.log_dir) / "metrics.csv"
    return None


def rounded(value: float) -> float:
    """A logged accuracy (already in percent: lit.module.PercentAccuracy) as results.json
    records it."""
    return round(float(value), 4)


def model_name(cfg: DictConfig) -> str:
    """`resnet18`, `small_resnet`, ...: the factory's name is what users chose with model=."""
    return str(cfg.model._target_).rsplit(".", 1)[-1]
