"""`labquant-bench`: every hot path side by side; bench.json, bench.md and a table."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from labquant.cli.app import run_entry_point, run_job
from labquant.config.paths import CONF_DIR
from labquant.tasks.bench.report import target_rows
from labquant.tasks.bench.run import run_bench

PROG = "labquant-bench"


def print_table(results: dict[str, Any], out_dir: str) -> None:
    table = Table(title=f"labquant-bench ({out_dir}/bench.md)")
    for column in ("figure", "value", "target", "verdict"):
        table.add_column(column)
    for row in target_rows(results):
        style = {"met": "green", "MISSED": "bold red"}.get(row[3], "dim")
        table.add_row(*row, style=style)
    Console().print(table)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="bench")
def _hydra_main(cfg: DictConfig) -> None:
    results = run_job(run_bench, cfg, PROG)
    print_table(results, cfg.paths.output_dir)


def main() -> None:
    run_entry_point(_hydra_main, PROG, "bench")


if __name__ == "__main__":
    main()
