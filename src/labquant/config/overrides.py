"""Checks that turn impossible settings into one-line errors before anything runs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from labquant.errors import ConfigError
from labquant.lit.checkpoints import check_same_network, load_checkpoint

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


def _override(overrides: Sequence[str], key: str) -> str | None:
    values = [o.partition("=")[2] for o in overrides if o.lstrip("+").startswith(f"{key}=")]
    return values[-1].strip("'\"") if values else None


def _writable(folder: Path) -> str | None:
    """None if a file can be created in `folder`, else why not.

    A real probe, not os.access: root passes os.access on a chmod 555 folder (and can write
    there), while a read-only mount refuses even root.
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=".labquant-write-probe-", dir=folder)
    except OSError as error:
        return error.strerror or type(error).__name__
    os.close(fd)
    os.unlink(probe)
    return None


def check_output_dir(overrides: Sequence[str], cwd: Path | None = None) -> None:
    """Refuse a run folder that cannot be written before Hydra fails in it with a traceback.

    Probes the folder itself, or the nearest existing folder above it, which Hydra would create
    it in; interpolations (`${now:...}`) are cut off first.
    """
    multirun = any(o in ("-m", "--multirun") for o in overrides)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    value = _override(overrides, key)
    target = (value if value is not None else "multirun" if multirun else "outputs").split("${")[0]
    folder = (cwd or Path.cwd()) / (target or ".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    shown = f"{key}={value}" if value is not None else f"the default run folder ({target}/)"
    if not folder.is_dir():
        raise ConfigError(f"{shown}: {folder} is a file, not a folder; pass {key}=<folder>")
    reason = _writable(folder)
    if reason is not None:
        raise ConfigError(
            f"{shown}: cannot write to {folder} ({reason}); pass {key}=<a writable folder> "
            f"or make it writable (chmod u+w {folder})"
        )


def check_batch_size(datamodule: Any) -> None:
    """A batch larger than the training set would silently train on one short batch per epoch."""
    n_train = len(datamodule.arrays("train")[1])
    n_val = len(datamodule.arrays("val")[1])
    if datamodule.batch_size > n_train:
        raise ConfigError(
            f"data.batch_size={datamodule.batch_size} is larger than the training set "
            f"({n_train} images after data.val_size holds out {n_val}); set data.batch_size "
            f"to at most {n_train}"
        )


def check_train_checkpoint(cfg: DictConfig) -> None:
    """The checkpoint Lightning will restore (resume=true: <run dir>/checkpoints/last.ckpt,
    else ckpt_path) must be readable and of the configured network; Lightning's own errors for
    both are tracebacks from the middle of its restore."""
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if cfg.get("resume"):
        if not last.exists():
            return  # killed before its first epoch ended: Lightning starts over, with a warning
        path, setting = last, "resume=true: checkpoint"
        fix = f"delete {last} to start over, or run without resume=true"
    elif cfg.get("ckpt_path"):
        path, setting = Path(cfg.ckpt_path), "ckpt_path"
        fix = "pass ckpt_path=<run>/checkpoints/last.ckpt of a labquant-train run, or leave it out"
    else:
        return
    checkpoint = load_checkpoint(path, fix, setting=setting, mmap=True)
    check_same_network(hydra.utils.instantiate(cfg.model), checkpoint, f"{setting}={path}")


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
    check_train_checkpoint(cfg)
