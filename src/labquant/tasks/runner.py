"""What every pipeline run shares: one process per run folder, results that say when a run
failed, completed runs that are reused (sweeps, with equal settings) or protected (single runs),
and each parallel job's share of the cores.

User errors are raised, not printed: turning them into one line and exit code 2 is the entry
points' job (cli/)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from labquant.config.resolvers import register_resolvers
from labquant.errors import ArtifactWriteError, ConfigError, DataError, RunFolderInUse, UserError
from labquant.reports.artifacts import completed_results, write_bytes, write_json
from labquant.run_lock import run_folder_lock
from labquant.tasks.checks import check_stage_files
from labquant.tasks.fingerprint import (
    STAGE_OF_TASK,
    first_difference,
    reuse_complete_run,
    run_settings,
)

log = logging.getLogger(__name__)
# Raised by the checks before any work (loading settings, data and checkpoints): a single run
# that stops on one of these has produced nothing, so it writes nothing.
BEFORE_WORK_ERRORS = (ConfigError, DataError, RunFolderInUse)
# File-system failures while writing artifacts: one line naming the file, not a traceback.
# What a run writes into its folder: removed before a complete run is replaced (overwrite=true
# over other settings), so the new run neither writes best-v1.ckpt beside the old best.ckpt nor
# adds its curves to the old TensorBoard run. Only these names: a run folder may hold the user's
# own files too.
RUN_ARTIFACTS = (
    "results.json", "checkpoints", "events.out.tfevents.*", "hparams.yaml", "tensorboard",
    "metrics.csv", "loss_accuracy.png",
    "model_fp32_state_dict.pt", "model_int8.pt", "model_int8_state_dict.pt", "model_int8.pt2",
    "model_int8.onnx", "export", "integer_model.npz", "integer_model.json", "bitexact.json",
    "golden",
)  # fmt: skip
COMPLETE_HYDRA = "complete"  # .hydra/complete/: the config files of the run results.json records
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def is_global_zero() -> bool:
    """Whether this process is DDP rank 0 (or the only one). Lightning re-runs the command for
    every other rank; those run the same DDP stages and leave one-process work to rank 0."""
    return (getattr(rank_zero_only, "rank", 0) or 0) == 0


def _job_threads() -> int | None:
    """Threads for this job when several jobs share a machine, else None (torch's default).

    joblib runs `n_jobs` jobs at once (-1: one per core); submitit gives each job
    `cpus_per_task` cores.
    """
    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", ""))
    cores = os.cpu_count() or 1
    if "Joblib" in target:
        n_jobs = launcher.get("n_jobs") or -1
        return max(1, cores // (cores if n_jobs < 0 else n_jobs))
    if "submitit" in target and launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    return None


def share_cores() -> None:
    """Give each parallel job its share of the cores: 2 jobs x 2 threads on 2 cores spin and
    thrash instead of working."""
    threads = _job_threads()
    if threads is not None:
        torch.set_num_threads(threads)


def write_failure(out_dir: Path, error: BaseException, overwrite: bool = False) -> bool:
    """results.json that says the run failed and why (sweep tables show its first line).

    A complete results.json is kept unless `overwrite` was given: a failed rerun must not erase
    the record of a good run. Returns whether the failure was written (not on a full disk).
    """
    if completed_results(out_dir) is not None and not overwrite:
        log.error("%s holds a complete results.json: the failure is not recorded there", out_dir)
        return False
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    try:
        write_json(
            out_dir / "results.json",
            {"status": "failed", "error_type": type(error).__name__, "error": first_line[:300]},
        )
    except ArtifactWriteError as failed:
        log.error("the failure could not be recorded: %s", failed)
        return False
    return True


def write_error_in(error: BaseException) -> ArtifactWriteError | None:
    """The file-system failure behind `error`, if one is in its chain (Lightning's teardown
    may raise again on the same full disk, hiding the first failure as context)."""
    seen: set[int] = set()
    node: BaseException | None = error
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, ArtifactWriteError):
            return node
        if isinstance(node, OSError) and node.errno in WRITE_ERRNOS:
            return ArtifactWriteError(node.filename, node)
        node = node.__cause__ or node.__context__
    return None


def clear_run(out_dir: Path) -> None:
    """Remove the artifacts of the complete run that is about to be replaced."""
    for name in RUN_ARTIFACTS:  # a name with `*` is a pattern (TensorBoard's event files)
        for path in sorted(out_dir.glob(name)) if "*" in name else [out_dir / name]:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    shutil.rmtree(out_dir / ".hydra" / COMPLETE_HYDRA, ignore_errors=True)


def _hydra_dir(out_dir: Path) -> Path | None:
    """Where Hydra wrote this job's config files (None outside a Hydra run, or when off)."""
    if not HydraConfig.initialized() or not HydraConfig.get().output_subdir:
        return None
    return out_dir / str(HydraConfig.get().output_subdir)


def keep_hydra_files(out_dir: Path) -> None:
    """Copy the `.hydra/` files of a run that just completed to `.hydra/complete/`: Hydra
    rewrites `.hydra/` at every later start in this folder, before labquant can refuse it (a
    lab's own folder too: it records no results.json, its stages do)."""
    hydra_dir = _hydra_dir(out_dir)
    if hydra_dir is None or not hydra_dir.is_dir():
        return
    for path in hydra_dir.glob("*.yaml"):
        write_bytes(hydra_dir / COMPLETE_HYDRA / path.name, path.read_bytes())


def restore_hydra_files(out_dir: Path) -> None:
    """Put the complete run's `.hydra/` files back after a rerun was reused or refused before
    any work, so that they again describe the run whose results are there."""
    hydra_dir = _hydra_dir(out_dir)
    if hydra_dir is None or not (hydra_dir / COMPLETE_HYDRA).is_dir():
        return
    for path in (hydra_dir / COMPLETE_HYDRA).glob("*.yaml"):
        write_bytes(hydra_dir / path.name, path.read_bytes())


def whole_or_redo(folder: Path, done: dict[str, Any], what: str, overwrite: bool) -> bool:
    """Whether a complete run that would be reused still holds whole model files; False (redo
    it) when they are damaged and `overwrite=true`, else the one-line error naming the file."""
    try:
        check_stage_files(folder, done, what, "pass overwrite=true to redo it")
    except ConfigError:
        if overwrite:
            return False
        raise
    return True


def reusable_run(cfg: DictConfig, out_dir: Path, multirun: bool) -> dict[str, Any] | None:
    """The complete run already in `out_dir` that this job may reuse, None to run it.

    A sweep job reuses a complete run computed with equal settings, redoes one with other
    settings under `overwrite=true`, and otherwise fails naming the first differing setting.
    A single run never reuses: a complete folder is refused unless `overwrite=true`.
    """
    overwrite = bool(cfg.get("overwrite", False))
    done = completed_results(out_dir)
    if done is None:
        return None
    stage = STAGE_OF_TASK.get(str(cfg.get("task_name")))
    settings = run_settings(cfg, stage) if stage else None
    if multirun:
        if settings is None:
            log.info("%s holds a complete results.json: not rerun", out_dir)
            return done
        reused = reuse_complete_run(out_dir, settings, overwrite, what=str(out_dir))
        if reused is not None and not whole_or_redo(out_dir, reused, str(out_dir), overwrite):
            return None
        if reused is not None:
            log.info("%s holds a complete run with these settings: not rerun", out_dir)
        return reused
    if overwrite:
        return None
    recorded = done.get("settings")
    difference = first_difference(recorded, settings) if settings and recorded else None
    which = f" (other settings: {difference})" if difference else ""
    raise ConfigError(
        f"{out_dir} already holds a complete results.json{which}; pass overwrite=true to "
        "replace it, or choose another hydra.run.dir"
    )


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run one Hydra job.

    The run folder is locked first (one labquant process per folder; DDP ranks share rank 0's
    lock). A UserError is re-raised for the entry point to print as one line. A failure once
    work has started (training diverged, a crash, a full disk) is recorded in results.json with
    status "failed"; the run's checkpoints stay, so `resume=true` can continue from the last
    good one. A config or data error found by the checks before any work writes nothing in a
    single run. In a multirun every failure is recorded and re-raised, so the launcher marks
    this job failed, the other jobs still run, and the sweep ends non-zero. A complete run is
    reused or refused by `reusable_run`.
    """
    multirun = is_multirun()
    out_dir = Path(cfg.paths.output_dir)
    overwrite = bool(cfg.get("overwrite", False))
    register_resolvers()  # a launcher's worker process imports this module, never the CLI
    with run_folder_lock(out_dir, enabled=is_global_zero()):
        try:
            done = reusable_run(cfg, out_dir, multirun)
        except ConfigError as error:  # complete with other settings: nothing is redone
            restore_hydra_files(out_dir)
            if multirun:
                log.error("%s", error)
            raise
        if done is not None:
            restore_hydra_files(out_dir)
            return done
        if completed_results(out_dir) is not None and is_global_zero():
            clear_run(out_dir)  # overwrite=true replaces it
        try:
            share_cores()
            results = task(cfg)
            if not (isinstance(results, dict) and results.get("status") == "failed"):
                keep_hydra_files(out_dir)
            return results
        except UserError as error:
            if isinstance(error, BEFORE_WORK_ERRORS):  # nothing done: the last run's files
                restore_hydra_files(out_dir)
            if multirun or not isinstance(error, BEFORE_WORK_ERRORS):
                write_failure(out_dir, error, overwrite)
            if multirun:
                log.error("%s", error)
            raise
        except Exception as error:
            written = write_error_in(error)
            write_failure(out_dir, written or error, overwrite)
            if written is not None:
                raise written from None
            raise
