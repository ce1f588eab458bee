"""Checks that turn impossible settings into one-line errors before anything runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from labquant.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def _group_choices(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def check_group_overrides(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """Refuse `model=nope` with the list of choices instead of Hydra's multi-line report.

    Sweep values (`model=a,b`) are checked one by one; sweep functions (`range(...)`) are left
    to Hydra.
    """
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if not sep or key.startswith("hydra") or "(" in value or "[" in value:
            continue
        if not (conf_dir / key).is_dir() or value in ("null", ""):
            continue
        choices = _group_choices(conf_dir, key)
        for choice in value.split(","):
            if choice not in choices:
                raise ConfigError(
                    f"unknown {key}={choice}; choose one of: {', '.join(choices)} "
                    f"(configs in {conf_dir / key})"
                )


def _positive(cfg: DictConfig, key: str, value: float | None, fix: str) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"{key}={value} must be > 0; {fix}")


def check_train_config(cfg: DictConfig) -> None:
    """Settings that the libraries would reject with a traceback, or worse, accept silently."""
    opt = cfg.optimizer
    _positive(cfg, "optimizer.lr", opt.get("lr"), "pass e.g. optimizer.lr=0.1")
    if opt.get("weight_decay", 0) < 0:
        raise ConfigError(f"optimizer.weight_decay={opt.weight_decay} must be >= 0")
    if not 0 <= opt.get("momentum", 0) < 1:
        raise ConfigError(f"optimizer.momentum={opt.momentum} must be in [0, 1); e.g. 0.9")
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs={max_epochs} must be >= 1")
    _positive(cfg, "data.batch_size", cfg.data.get("batch_size"), "e.g. data.batch_size=128")
    scheduler = cfg.get("scheduler") or {}
    warmup = scheduler.get("warmup_epochs")
    sched_epochs = scheduler.get("max_epochs")
    if warmup is not None and sched_epochs is not None and not 0 <= warmup < sched_epochs:
        raise ConfigError(
            f"scheduler.warmup_epochs={warmup} must be >= 0 and below "
            f"trainer.max_epochs={sched_epochs}; lower the warmup or raise trainer.max_epochs"
        )
