"""Running the real entry points in a subprocess, and comparing what two runs left behind."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, TINY

TRAIN, QUANTIZE, LAB = "labquant.cli.train", "labquant.cli.quantize", "labquant.cli.lab"
PROGS = {TRAIN: "labquant-train", QUANTIZE: "labquant-quantize", LAB: "labquant-lab"}

FP32_RUN = [*TINY, "trainer.max_epochs=3", "scheduler.warmup_epochs=1"]
# QAT with the BN freeze (epoch 1) and observer freeze (epoch 2) inside the resumed part.
QAT_RUN = [
    *TINY,
    "quant=qat",
    "quant.epochs=3",
    "quant.freeze_bn_epoch=1",
    "quant.freeze_observer_epoch=2",
    "quant.measure_latency=false",
]
# The same QAT on backend=pt2e (exported graph; compile off: the Q/DQ graph runs as it is).
PT2E_QAT_RUN = [*QAT_RUN, "backend=pt2e", "backend.compile=false", "backend.onnx=false"]
FP32_METRICS = ("test_acc", "test_loss", "val_acc", "best_val_acc", "epochs")
QAT_METRICS = ("test_acc", "test_loss", "fp32_test_acc", "acc_drop", "size_mib")


def run_cli(
    module: str, *overrides: str, run_dir: Path | None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m <module> overrides... hydra.run.dir=<run_dir>` from the repo root, with the
    repo on PYTHONPATH so that `tests.reliability.faults` callbacks can be instantiated."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    run_dir_arg = [f"hydra.run.dir={run_dir}"] if run_dir is not None else []
    return subprocess.run(
        [sys.executable, "-m", module, *overrides, *run_dir_arg],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, output(result)[-3000:]


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], *needles: str, prog: str = "labquant-train"
) -> str:
    """Exit code 2 and exactly one `<prog>: error: ...` line holding every needle; no traceback."""
    assert result.returncode == 2, output(result)[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-2000:]
    line = errors[0]
    assert line.startswith(f"{prog}: error: ")
    for needle in needles:
        assert needle in line, line
    return line


def results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


def csv_rows(run_dir: Path, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """metrics.csv without the wall-clock columns (perf/*), which differ between any two runs,
    and without the columns in `drop`."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [
            {k: v for k, v in row.items() if not k.startswith("perf/") and k not in drop}
            for row in csv.DictReader(handle)
        ]


def assert_same_csv(expected: list[dict[str, str]], got: list[dict[str, str]]) -> None:
    assert len(got) == len(expected), (len(got), len(expected))
    for want, row in zip(expected, got, strict=True):
        assert row.keys() == want.keys()
        for key, value in want.items():
            if value == "":
                assert row[key] == "", (key, row)
            else:
                assert float(row[key]) == pytest.approx(float(value), abs=1e-6), (key, want, row)


def epochs_logged(rows: list[dict[str, str]], column: str = "val/acc") -> list[int]:
    return [int(row["epoch"]) for row in rows if row.get(column)]


def prog(module: str) -> str:
    return PROGS[module]
