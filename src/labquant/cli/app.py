"""What every entry point shares: checks of the command line before Hydra starts, and user
errors as one line with exit code 2 instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from labquant.config.overrides import check_group_overrides, check_output_dir
from labquant.config.resolvers import register_resolvers
from labquant.errors import UserError
from labquant.tasks.runner import is_multirun, run_task

USER_ERROR_EXIT = 2


def fail(prog: str, error: BaseException) -> NoReturn:
    """One line on stderr and exit 2. Under DDP every failing rank says it; ranks other than 0
    name themselves (a rank that fails alone is the only one that can tell)."""
    rank = getattr(rank_zero_only, "rank", 0) or 0
    where = f"[rank {rank}] " if rank else ""
    print(f"{prog}: error: {where}{error}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT)


def run_entry_point(hydra_main: Callable[[], Any], prog: str) -> None:
    """Check config-group choices and the output folder on the command line, then hand over to
    Hydra (whose own errors for both are tracebacks or multi-line reports)."""
    try:
        check_group_overrides(sys.argv[1:])
        check_output_dir(sys.argv[1:])
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
