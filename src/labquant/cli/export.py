"""`labquant-export`: the integer model of a power-of-two int8 stage, its bit-exactness against
torch's int8 model, and golden vectors."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from labquant.cli.app import fail, run_entry_point, run_job
from labquant.config.paths import CONF_DIR
from labquant.errors import ConfigError
from labquant.tasks.export import export

PROG = "labquant-export"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    run_job(export, cfg, PROG)


def main() -> None:
    # The run folder is <stage_dir>/export: without stage_dir Hydra would fail with a traceback.
    if not any(arg.startswith("stage_dir=") for arg in sys.argv[1:]):
        fail(PROG, ConfigError("stage_dir is missing; e.g. stage_dir=outputs/<lab>/ptq_pot"))
    run_entry_point(_hydra_main, PROG, "export")


if __name__ == "__main__":
    main()
