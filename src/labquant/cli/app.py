"""What every entry point shares: checks before Hydra starts and one-line user errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from labquant.cli.checks import check_group_overrides
from labquant.errors import UserError

log = logging.getLogger(__name__)
USER_ERROR_EXIT = 2


def fail(prog: str, error: BaseException) -> NoReturn:
    print(f"{prog}: error: {error}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT)


def run_entry_point(hydra_main: Callable[[], Any], prog: str) -> None:
    """Check config-group choices on the command line, then hand over to Hydra."""
    try:
        check_group_overrides(sys.argv[1:])
    except UserError as error:
        fail(prog, error)
    hydra_main()


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig, prog: str) -> Any:
    """Run one Hydra job; a UserError becomes one line and exit code 2.

    In a multirun the error is re-raised instead, so the launcher records this job as failed
    and the other jobs of the sweep still run.
    """
    try:
        return task(cfg)
    except UserError as error:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("%s", error)
            raise
        fail(prog, error)
