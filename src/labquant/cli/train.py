"""`labquant-train`: FP32 training of a quantizable ResNet, configured by Hydra."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from labquant.cli.app import run_entry_point, run_task
from labquant.cli.checks import CONF_DIR, check_train_config
from labquant.lit.fit import fit_fp32

PROG = "labquant-train"


def train(cfg: DictConfig) -> dict[str, Any]:
    check_train_config(cfg)
    return fit_fp32(cfg)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    results = run_task(train, cfg, PROG)
    return results["test_acc"]  # the value a Hydra sweeper would optimise


def main() -> None:
    run_entry_point(_hydra_main, PROG)


if __name__ == "__main__":
    main()
