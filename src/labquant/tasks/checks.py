"""Checks that need more than the settings schema: the data's size, and checkpoints that must
be readable and of the configured network. All run before any training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from labquant.checkpoints import check_same_network, load_checkpoint
from labquant.config.instantiate import instantiate
from labquant.errors import ConfigError


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


def _resume_checkpoint(cfg: DictConfig, what: str) -> tuple[Path, str, str] | None:
    """resume=true: <run dir>/checkpoints/last.ckpt when it exists (killed before its first
    epoch ended: Lightning starts over, with a warning)."""
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if not (cfg.get("resume") and last.exists()):
        return None
    fix = f"delete {last} to start {what} over, or run without resume=true"
    return last, "resume=true: checkpoint", fix


def check_train_checkpoint(cfg: DictConfig) -> None:
    """The checkpoint Lightning will restore (resume=true's last.ckpt, else ckpt_path) must be
    safe, readable and of the configured network; Lightning's own errors for all three are
    tracebacks from the middle of its restore."""
    resume = _resume_checkpoint(cfg, "this run")
    if resume is not None:
        path, setting, fix = resume
    elif cfg.get("ckpt_path") and not cfg.get("resume"):
        path, setting = Path(cfg.ckpt_path), "ckpt_path"
        fix = "pass ckpt_path=<run>/checkpoints/last.ckpt of a labquant-train run, or leave it out"
    else:
        return
    checkpoint = load_checkpoint(path, fix, setting=setting, mmap=True)
    check_same_network(instantiate(cfg.model, "model"), checkpoint, f"{setting}={path}")


def check_qat_resume(cfg: DictConfig) -> None:
    """resume=true makes Lightning load <run dir>/checkpoints/last.ckpt: fail in one line, not
    in its restore, when that file is damaged or unsafe."""
    resume = _resume_checkpoint(cfg, "this stage")
    if resume is not None:
        path, setting, fix = resume
        load_checkpoint(path, fix, setting=setting, mmap=True)
