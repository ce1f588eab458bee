"""What every entry point shares: checks of the command line before Hydra starts, and user
errors as one line with exit code 2 instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from labquant import run_lock
from labquant.config.declared import check_declared_keys
from labquant.config.overrides import (
    check_group_overrides,
    check_output_dir,
    single_run_dir,
    with_option_files,
)
from labquant.config.resolvers import register_resolvers
from labquant.errors import UserError
from labquant.tasks.runner import is_global_zero, is_multirun, run_task

USER_ERROR_EXIT = 2


def fail(prog: str, error: BaseException) -> NoReturn:
    """One line on stderr and exit 2 (1 for a failure to write once work began). Under DDP
    every failing rank says it; ranks other than 0 name themselves (a rank that fails alone is
    the only one that can tell)."""
    rank = getattr(rank_zero_only, "rank", 0) or 0
    where = f"[rank {rank}] " if rank else ""
    print(f"{prog}: error: {where}{error}", file=sys.stderr)
    sys.exit(getattr(error, "exit_code", USER_ERROR_EXIT))


def run_entry_point(hydra_main: Callable[[], Any], prog: str, config_name: str) -> None:
    """Check the command line before Hydra starts: config-group choices, the output folder and
    that every `key=value` names a declared setting (Hydra's own errors for these are
    tracebacks or multi-line reports); then lock a single run's folder, so that Hydra does not
    rewrite the `.hydra/` files of a run still going there, and hand over to Hydra."""
    try:
        args = with_option_files(sys.argv[1:])
        check_group_overrides(args)
        check_output_dir(args)
        sys.argv[1:] = check_declared_keys(args, config_name)
        folder = single_run_dir(sys.argv[1:])
        if folder is not None and is_global_zero():  # DDP ranks > 0 share rank 0's lock
            run_lock.acquire(folder)  # held until this process ends
    except UserError as error:
        fail(prog, error)
    register_resolvers()
    hydra_main()


def run_job(task: Callable[[DictConfig], Any], cfg: DictConfig, prog: str) -> Any:
    """One Hydra job: a user error ends a single run with one line and exit 2; in a sweep it
    fails this job only (the launcher runs the others and the sweep ends non-zero)."""
    try:
        return run_task(task, cfg)
    except UserError as error:
        if is_multirun():
            raise
        fail(prog, error)
