"""`labquant-quantize`: PTQ or QAT of a labquant-train checkpoint into an int8 model."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from labquant.cli.app import run_entry_point, run_job
from labquant.config.paths import CONF_DIR
from labquant.tasks.quantize import quantize

PROG = "labquant-quantize"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="quantize")
def _hydra_main(cfg: DictConfig) -> float | None:
    # None on the non-zero ranks of a DDP run: rank 0 alone tests and writes results
    return run_job(quantize, cfg, PROG).get("test_acc")


def main() -> None:
    run_entry_point(_hydra_main, PROG, "quantize")


if __name__ == "__main__":
    main()
