"""Checks that need more than the settings schema: the data's size, checkpoints that must be
readable and of the configured network, and the model files of a stage that is reused or read.
All run before any work."""

from __future__ import annotations

import zipfile
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


ARCHIVE_SUFFIXES = (".pt", ".pt2", ".ckpt")  # torch.save / torch.export files: zip archives


def damaged_file(path: Path) -> str | None:
    """Why `path` cannot be read back (missing, empty, not a whole zip archive), else None.
    Every entry's CRC is checked: a truncated or overwritten file fails here, not in the
    middle of a later load."""
    if not path.is_file():
        return "is missing"
    if path.stat().st_size == 0:
        return "is empty"
    if path.suffix in ARCHIVE_SUFFIXES:
        try:
            with zipfile.ZipFile(path) as archive:
                if archive.testzip() is not None:
                    return "is damaged (a checksum fails)"
        except (zipfile.BadZipFile, OSError, EOFError):
            return "is damaged (not a readable archive)"
    return None


def stage_files(stage_dir: Path, results: dict[str, Any]) -> list[Path]:
    """The model files a complete stage's results.json names: the FP32 checkpoint and state
    dict, or the int8 files (`int8_<format>` keys whose value is a file name)."""
    names = [results.get("checkpoint"), results.get("state_dict")]
    names += [
        value
        for key, value in results.items()
        if key.startswith("int8_") and isinstance(value, str) and Path(value).suffix
    ]
    return [stage_dir / name for name in names if name]


def check_stage_files(stage_dir: Path, results: dict[str, Any], what: str, fix: str) -> None:
    """A stage that is reused (skipped) or read (exported) must still hold whole model files."""
    for path in stage_files(stage_dir, results):
        problem = damaged_file(path)
        if problem is not None:
            raise ConfigError(f"{what}: {path} {problem}; {fix}")
