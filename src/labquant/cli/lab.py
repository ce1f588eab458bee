"""`labquant-lab`: the main job: FP32 training, PTQ and QAT, and the comparison report."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from labquant.cli.app import run_entry_point, run_job
from labquant.config.paths import CONF_DIR
from labquant.tasks.lab import run_lab

PROG = "labquant-lab"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="lab")
def _hydra_main(cfg: DictConfig) -> None:
    run_job(run_lab, cfg, PROG)


def main() -> None:
    run_entry_point(_hydra_main, PROG, "lab")


if __name__ == "__main__":
    main()
