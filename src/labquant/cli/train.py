"""`labquant-train`: FP32 training of a quantizable ResNet, configured by Hydra."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from labquant.cli.app import run_entry_point, run_job
from labquant.config.paths import CONF_DIR
from labquant.tasks.train import train

PROG = "labquant-train"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    # None on the non-zero ranks of a DDP run: rank 0 alone tests and writes results
    return run_job(train, cfg, PROG).get("test_acc")  # the value a Hydra sweeper would optimise


def main() -> None:
    run_entry_point(_hydra_main, PROG, "train")


if __name__ == "__main__":
    main()
