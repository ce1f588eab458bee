"""The quantization sweep's Pareto report without training: the Pareto marks, the rows of a
hand-made sweep folder (one failed and one killed job among them), and `labquant-report`'s
rebuild of pareto.md / .csv / .png, byte for byte."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
from hydra.types import RunMode
from omegaconf import OmegaConf
from PIL import Image

from labquant.reports.pareto import (
    ParetoCallback,
    pareto_figure,
    pareto_optimal,
    sweep_rows,
    write_pareto,
)
from labquant.reports.rebuild import rebuild_report

OUTPUTS = ("pareto.md", "pareto.csv", "pareto.png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_pareto_marks_ties_dominated_and_unknown_points() -> None:
    points = [
        (1.0, 60.0),  # cheapest: optimal
        (2.0, 70.0),  # optimal
        (2.0, 70.0),  # the same point again: both optimal
        (2.0, 65.0),  # same cost, lower accuracy: dominated
        (3.0, 70.0),  # same accuracy, higher cost: dominated
        (4.0, 75.0),  # most accurate: optimal
        (None, 99.0),  # unknown cost: never optimal, dominates nothing
        (0.5, None),  # unknown accuracy
        (float("nan"), 80.0),
    ]
    assert pareto_optimal(points) == [True, True, True, False, False, True, False, False, False]
    # The None point would dominate everything if it counted; it does not.
    assert pareto_optimal([(None, 100.0), (5.0, 1.0)]) == [False, True]
    assert pareto_optimal([]) == []


def _results(qconfig: str, weight: int, acc: float, packed: float, bitops: int | None) -> dict:
    return {
        "status": "complete",
        "stage": "ptq",
        "backend": "eager",
        "qconfig": qconfig,
        "weight_bits": weight,
        "activation_bits": 8,
        "granularity": "per_tensor",
        "range": "minmax",
        "test_acc": acc,
        "fp32_test_acc": 70.0,
        "acc_drop": round(70.0 - acc, 4),
        "acc_drop_ci95": 0.5,
        "packed_size_mib": packed,
        "bitops": bitops,
        "fp32_checkpoint": "/somewhere/outputs/fp32/checkpoints/best.ckpt",
        "wall_time_s": 12.5,
    }


def fake_quantize_sweep(sweep: Path, checkpoints: tuple[str, ...] = ()) -> None:
    """Eight jobs: five complete PTQ jobs, a mixed-precision one without BitOps, a failed and a
    killed (no results.json) job."""
    mixed = _results("pot_mixed", 4, 67.5, 0.15, None)
    mixed["layer_bits"] = {"layer1.*": {"weight": 8}, "fc": {"weight": 8, "activation": 8}}
    mixed["layers"] = [{"name": n} for n in ("conv1", "layer1.0.conv1", "layer1.0.conv2", "fc")]
    per_channel = _results("pot_w4a8_pc", 4, 66.0, 0.12, 20 * 10**9)
    per_channel["granularity"] = "per_channel"
    per_channel.pop("acc_drop_ci95")  # older results: no interval
    jobs: list[tuple[str, dict[str, Any] | None]] = [
        ("pot", _results("pot", 8, 68.5, 0.20, 40 * 10**9)),  # beaten by pot_mse on both
        ("pot_mse", _results("pot_mse", 8, 69.0, 0.20, 40 * 10**9)),
        ("pot_w4a8", _results("pot_w4a8", 4, 66.0, 0.11, 20 * 10**9)),
        ("pot_w4a8_pc", per_channel),  # larger than pot_w4a8, as accurate; same BitOps: a tie
        ("pot_mixed", mixed),
        ("pot_w4a4", {"status": "failed", "error": "RuntimeError: boom\nsecond | line"}),
        ("pot_w2a8", None),  # killed: no results.json
    ]
    for job, (qconfig, results) in enumerate(jobs):
        folder = sweep / str(job)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra/config.yaml").write_text(
            f"qconfig: {{name: {qconfig}, weight_bits: 4}}\nquant: {{mode: ptq}}\n"
        )
        (folder / ".hydra/hydra.yaml").write_text(
            f"hydra:\n  runtime:\n    choices: {{backend: eager, qconfig: {qconfig}}}\n"
        )
        if results is not None:
            if job < len(checkpoints):
                results["fp32_checkpoint"] = checkpoints[job]
            (folder / "results.json").write_text(json.dumps(results))


def test_sweep_rows_marks_and_statuses(tmp_path: Path) -> None:
    fake_quantize_sweep(tmp_path)
    rows = sweep_rows(tmp_path)
    assert [row["job"] for row in rows] == [str(job) for job in range(7)]
    assert [row["qconfig"] for row in rows] == [
        "pot", "pot_mse", "pot_w4a8", "pot_w4a8_pc", "pot_mixed", "pot_w4a4", "pot_w2a8",
    ]  # fmt: skip
    assert [row["pareto_size"] for row in rows] == [False, True, True, False, True, None, None]
    assert [row["pareto_bitops"] for row in rows] == [False, True, True, True, None, None, None]
    assert [row["bits"] for row in rows[:5]] == [
        "W8/A8", "W8/A8", "W4/A8", "W4pc/A8", "mixed (W4/A8 + 3 layers)",
    ]  # fmt: skip
    assert rows[0]["gbitops"] == 40.0 and rows[4]["gbitops"] is None
    assert rows[0]["acc_drop"] == 1.5 and rows[0]["acc_drop_ci95"] == 0.5
    assert rows[3]["acc_drop_ci95"] is None
    assert [row["status"] for row in rows[:5]] == ["ok"] * 5
    assert rows[5]["status"].startswith("FAILED: RuntimeError: boom")
    assert rows[6]["status"] == "FAILED: no results.json (killed or still running)"
    assert rows[6]["stage"] == "ptq" and rows[6]["backend"] == "eager"
    assert rows[6]["test_acc"] is None and rows[6]["bits"] is None


def test_write_pareto_table_csv_and_notes(tmp_path: Path) -> None:
    fake_quantize_sweep(tmp_path)
    write_pareto(tmp_path)
    text = (tmp_path / "pareto.md").read_text()
    header = (
        "| # | qconfig | stage | backend | bits W/A | test acc (%) | drop (pp) | "
        "95% interval (pp) | packed (MiB) | GBitOps | Pareto size | Pareto BitOps | status |"
    )
    assert header in text
    best = "| 1 | pot_mse | ptq | eager | W8/A8 | 69.00 | 1.00 | ±0.50 | 0.2000 | 40.0000 | yes |"
    assert f"{best} yes | ok |" in text
    mixed = "| 4 | pot_mixed | ptq | eager | mixed (W4/A8 + 3 layers) | 67.50 | 2.50 | ±0.50 |"
    assert f"{mixed} 0.1500 | - | yes | - | ok |" in text
    assert (
        "| 0 | pot | ptq | eager | W8/A8 | 68.50 | 1.50 | ±0.50 | 0.2000 | 40.0000 | no | no |"
        in text
    )
    assert "| FAILED: RuntimeError: boom second / line |" in text  # one line in its cell
    assert text.count("FAILED: no results.json") == 1
    assert "paired 95 % interval of the drop against the FP32 model on the same test" in text
    assert "FP32 test accuracy: 70.00 %." in text
    assert "WARNING" not in text
    assert "/somewhere" not in text and str(tmp_path) not in text  # no absolute path
    with (tmp_path / "pareto.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0])[:3] == ["job", "qconfig", "stage"]
    assert len(table) == 7
    assert table[0]["packed_size_mib"] == "0.2" and table[0]["gbitops"] == "40.0"
    assert table[0]["pareto_size"] == "False" and table[1]["pareto_size"] == "True"
    assert table[4]["pareto_bitops"] == "" and table[6]["test_acc"] == ""
    assert "/somewhere" not in (tmp_path / "pareto.csv").read_text()


def test_write_pareto_warns_about_different_checkpoints(tmp_path: Path) -> None:
    fake_quantize_sweep(tmp_path, checkpoints=("/a/best.ckpt", "/a/best.ckpt", "/b/best.ckpt"))
    write_pareto(tmp_path)
    text = (tmp_path / "pareto.md").read_text()
    warning = next(line for line in text.splitlines() if line.startswith("- WARNING"))
    assert "3 different FP32 checkpoints (jobs 0, 1; job 2; jobs 3, 4:" in warning
    assert "/a/" not in text and "/b/" not in text


def test_rebuild_report_recreates_the_same_bytes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    fake_quantize_sweep(sweep)
    write_pareto(sweep)
    first = {name: (sweep / name).read_bytes() for name in OUTPUTS}
    for name in OUTPUTS:
        (sweep / name).unlink()
    assert rebuild_report(sweep) == sweep / "pareto.md"
    assert {name: (sweep / name).read_bytes() for name in OUTPUTS} == first
    # Elsewhere on disk too: nothing of the folder's path or of the clock is in the files.
    moved = shutil.copytree(sweep, tmp_path / "elsewhere" / "copy")
    assert rebuild_report(moved) == moved / "pareto.md"
    assert {name: (moved / name).read_bytes() for name in OUTPUTS} == first


def test_pareto_png_has_two_panels(tmp_path: Path) -> None:
    fake_quantize_sweep(tmp_path)
    rows = write_pareto(tmp_path)
    png = (tmp_path / "pareto.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 20_000
    image = Image.open(tmp_path / "pareto.png")
    assert "Software" not in image.info  # matplotlib's version tag left out
    assert image.size == (1430, 605)  # 13 x 5.5 in at 110 dpi
    assert np.asarray(image.convert("L"), dtype=float).std() > 20
    fig = pareto_figure(rows)
    try:
        size_ax, ops_ax = fig.axes
        assert size_ax.get_xlabel() == "packed size (MiB)"
        assert ops_ax.get_xlabel() == "GBitOps per image"
        assert {ax.get_ylabel() for ax in fig.axes} == {"test accuracy (%)"}
        # Every complete job labelled on the size panel; the one without BitOps left out of the
        # BitOps panel, where two equal points share one label.
        assert len(size_ax.texts) == 5
        assert [text.get_text() for text in ops_ax.texts] == [
            "pot", "pot_mse", "pot_w4a8, pot_w4a8_pc",  # the tie: one label; no pot_mixed
        ]  # fmt: skip
        dashed = [line for line in size_ax.lines if line.get_linestyle() == "--"]
        assert [line.get_ydata()[0] for line in dashed] == [70.0]  # the FP32 accuracy
    finally:
        plt.close(fig)


def test_a_sweep_with_no_complete_job_still_writes_its_report(tmp_path: Path) -> None:
    fake_quantize_sweep(tmp_path)
    for results in tmp_path.glob("[0-4]/results.json"):
        results.unlink()
    rows = write_pareto(tmp_path)
    assert all(row["pareto_size"] is None for row in rows)
    assert (tmp_path / "pareto.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("mode", [RunMode.RUN, RunMode.MULTIRUN])
def test_callback_writes_only_in_a_multirun(tmp_path: Path, mode: RunMode) -> None:
    fake_quantize_sweep(tmp_path)
    config = OmegaConf.create({"hydra": {"mode": mode, "sweep": {"dir": str(tmp_path)}}})
    ParetoCallback().on_job_end(config, job_return=None)
    assert (tmp_path / "pareto.md").is_file() == (mode == RunMode.MULTIRUN)
