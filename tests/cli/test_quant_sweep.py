"""The quantization sweep as ONE multirun over a shared FP32 checkpoint: PTQ per qconfig (a
mixed-precision qconfig file among them) ends in one Pareto report, `labquant-report` rebuilds
it byte for byte, and an interrupted sweep is finished by running it again."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from labquant.reports.pareto import pareto_optimal
from tests.conftest import TINY

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it

BIN = Path(sys.executable).parent
MIXED = """_target_: labquant.quant.qconfigs.power_of_two
name: tiny_mixed
weight_bits: 8
layer_bits:
  layer2.*: {weight: 4}
  layer3.*: {weight: 4}
"""
REPORT = ("pareto.md", "pareto.csv", "pareto.png")


def run_sweep(sweep_dir: Path, checkpoint: Path, qconfigs: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "labquant-quantize"), "-m", *TINY, f"ckpt_path={checkpoint}",
         "quant.calibration_batches=2", "quant.measure_latency=false", f"qconfig={qconfigs}",
         f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "pareto.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_one_multirun_ends_in_a_pareto_report_that_reruns_finish(tiny_fp32_run, tmp_path):
    results, run = tiny_fp32_run
    checkpoint = run / results["checkpoint"]
    mixed = tmp_path / "sens" / "qconfig" / "tiny_mixed.yaml"
    mixed.parent.mkdir(parents=True)
    mixed.write_text(MIXED)
    sweep_dir = tmp_path / "sweep"
    qconfigs = f"pot,pot_w4a8,{mixed}"
    first = run_sweep(sweep_dir, checkpoint, qconfigs)
    assert first.returncode == 0, first.stderr[-3000:]
    table = rows(sweep_dir)
    assert [row["qconfig"] for row in table] == ["pot", "pot_w4a8", "tiny_mixed"]
    assert all(row["status"] == "ok" for row in table)
    assert table[2]["bits"].startswith("mixed")
    sizes = [float(row["packed_size_mib"]) for row in table]
    assert sizes[1] < sizes[2] < sizes[0]  # W4 everywhere < W4 in two stages < W8
    for cost, mark in (("packed_size_mib", "pareto_size"), ("gbitops", "pareto_bitops")):
        points = [(float(row[cost]), float(row["test_acc"])) for row in table]
        assert [row[mark] == "True" for row in table] == pareto_optimal(points)
    written = {name: (sweep_dir / name).read_bytes() for name in REPORT}
    rebuilt = subprocess.run(
        [str(BIN / "labquant-report"), str(sweep_dir)], capture_output=True, text=True
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert {name: (sweep_dir / name).read_bytes() for name in REPORT} == written
    # Interrupted: job 1 never finished. The rerun redoes it alone and completes the report.
    (sweep_dir / "1" / "results.json").unlink()
    kept = {job: (sweep_dir / job / "results.json").stat().st_mtime_ns for job in ("0", "2")}
    second = run_sweep(sweep_dir, checkpoint, qconfigs)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {job: (sweep_dir / job / "results.json").stat().st_mtime_ns for job in kept} == kept
    assert [row["status"] for row in rows(sweep_dir)] == ["ok", "ok", "ok"]
