"""`labquant-sensitivity`: per-layer sensitivity of a power-of-two qconfig's low width, and a
mixed-precision qconfig under a budget."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from labquant.cli.app import run_entry_point, run_job
from labquant.config.paths import CONF_DIR
from labquant.tasks.sensitivity import sensitivity

PROG = "labquant-sensitivity"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sensitivity")
def _hydra_main(cfg: DictConfig) -> float | None:
    proposal = run_job(sensitivity, cfg, PROG).get("proposal") or {}
    return proposal.get("val_acc")


def main() -> None:
    run_entry_point(_hydra_main, PROG, "sensitivity")


if __name__ == "__main__":
    main()
