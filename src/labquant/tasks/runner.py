"""What every pipeline run shares: results that say when a run failed, completed runs that are
skipped (sweeps) or protected (single runs), and each parallel job's share of the cores.

User errors are raised, not printed: turning them into one line and exit code 2 is the entry
points' job (cli/)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from labquant.config.resolvers import register_resolvers
from labquant.errors import ConfigError, DataError, UserError
from labquant.reports.artifacts import completed_results, write_json

log = logging.getLogger(__name__)
# Raised by the checks before any work (loading settings, data and checkpoints): a single run
# that stops on one of these has produced nothing, so it writes nothing.
BEFORE_WORK_ERRORS = (ConfigError, DataError)


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
    the record of a good run. Returns whether the failure was written.
    """
    if completed_results(out_dir) is not None and not overwrite:
        log.error("%s holds a complete results.json: the failure is not recorded there", out_dir)
        return False
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    write_json(
        out_dir / "results.json",
        {"status": "failed", "error_type": type(error).__name__, "error": first_line[:300]},
    )
    return True


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run one Hydra job.

    A UserError is re-raised for the entry point to print as one line. A failure once work has
    started (training diverged, a crash) is recorded in results.json with status "failed";
    the run's checkpoints stay, so `resume=true` can continue from the last good one. A config
    or data error found by the checks before any work writes nothing in a single run. In a
    multirun every failure is recorded and re-raised, so the launcher marks this job failed, the
    other jobs still run, and the sweep ends non-zero. A folder with a complete result is skipped
    in a sweep and refused in a single run unless `overwrite=true`.
    """
    multirun = is_multirun()
    out_dir = Path(cfg.paths.output_dir)
    overwrite = bool(cfg.get("overwrite", False))
    done = completed_results(out_dir)
    if done is not None:
        if multirun:
            log.info("%s holds a complete results.json: not rerun", out_dir)
            return done
        if not overwrite:
            raise ConfigError(
                f"{out_dir} already holds a complete results.json; pass overwrite=true to "
                "replace it, or choose another hydra.run.dir"
            )
    register_resolvers()  # a launcher's worker process imports this module, never the CLI
    share_cores()
    try:
        return task(cfg)
    except UserError as error:
        if multirun or not isinstance(error, BEFORE_WORK_ERRORS):
            write_failure(out_dir, error, overwrite)
        if multirun:
            log.error("%s", error)
        raise
    except Exception as error:
        write_failure(out_dir, error, overwrite)
        raise
