"""labquant-lab end to end (tiny budget): one folder, FP32 -> PTQ -> QAT, report from results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from labquant.tasks.lab import run_lab
from tests.conftest import SHORTEST_LAB, TINY, TINY_LAB, compose_config

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it

LAB = TINY_LAB


@pytest.fixture(scope="module")
def lab_dir(tiny_lab: Path) -> Path:
    return tiny_lab


def test_report_rows_follow_the_stages(lab_dir: Path) -> None:
    report = json.loads((lab_dir / "report.json").read_text())
    rows = report["rows"]
    assert [(r["stage"], r["qconfig"]) for r in rows] == [
        ("fp32", None),
        ("ptq", "pot"),
        ("qat", "pot"),
    ]
    for row in rows:
        stage = json.loads((lab_dir / row["dir"] / "results.json").read_text())
        assert row["test_acc"] == stage["test_acc"]
        assert row["size_mib"] == stage["size_mib"]
        assert row["latency_b1_ms"] > 0 and row["img_s_b256"] > 0
    fp32 = rows[0]
    for row in rows[1:]:
        assert row["acc_drop"] == pytest.approx(fp32["test_acc"] - row["test_acc"], abs=1e-3)
        # The drop is exactly the images only FP32 gets right minus those only int8 gets right.
        stage = json.loads((lab_dir / row["dir"] / "results.json").read_text())
        net_images = stage["only_fp32_correct"] - stage["only_int8_correct"]
        assert row["acc_drop"] == pytest.approx(100 * net_images / stage["test_images"], abs=1e-3)
        assert row["acc_drop_ci95"] == stage["acc_drop_ci95"] >= 0
        assert (lab_dir / row["dir"] / "model_int8.pt").is_file()


def test_report_md_has_the_table_and_worst_layers(lab_dir: Path) -> None:
    text = (lab_dir / "report.md").read_text()
    header = (
        "| Model | Backend | Size (MiB) | Packed (MiB) | GBitOps | Bits W/A | Accuracy (%) | "
        "Accuracy Drop (pp) | Drop 95% interval "
        "(pp) | CPU latency batch 1 "
        "(ms) | vs best FP32, batch 1 | CPU img/s batch 256 | vs best FP32, batch 256 | qconfig |"
    )
    assert header in text
    assert "| FP32 (eager) |" in text and "| PTQ |" in text and "| QAT |" in text
    assert "| W8/A8 |" in text  # the pot stages' widths, beside their packed size and BitOps
    assert text.count("Five worst layers") == 2
    assert "fp32/loss_accuracy.png" in text and "qat_pot/loss_accuracy.png" in text


def test_rerun_in_the_same_folder_skips_finished_stages(lab_dir: Path) -> None:
    stamps = {p: p.stat().st_mtime_ns for p in lab_dir.glob("*/results.json")}
    assert len(stamps) == 3
    run_lab(compose_config("lab", LAB, lab_dir))
    assert {p: p.stat().st_mtime_ns for p in lab_dir.glob("*/results.json")} == stamps
    assert (lab_dir / "report.md").is_file()


def test_report_names_the_cpu_and_its_isa_beside_the_speed_figures(lab_dir: Path) -> None:
    """int8 / FP32 ratios differ threefold between AVX2 and AVX-512 VNNI CPUs."""
    stage = json.loads((lab_dir / "ptq_pot" / "results.json").read_text())
    isa = stage["cpu"]["isa"]
    assert isa.startswith(torch.backends.cpu.get_cpu_capability())
    assert f"({isa})" in (lab_dir / "report.md").read_text()


def test_lab_backends_name_the_pt2e_stages_and_rows(tmp_path: Path) -> None:
    """lab.backends=[pt2e] with a low-width preset: the PT2E stages (<mode>_<qconfig>_pt2e) from
    the FP32 run, report rows that say which backend made them (eager's stages keep their
    names: test above), and an integer export exact at W4A4 with per-channel shifts."""
    overrides = [*TINY, *SHORTEST_LAB, "backend=pt2e", "backend.compile=false"]
    overrides += ["backend.onnx=false", "lab.backends=[pt2e]", "lab.export=true", "lab.golden=2"]
    overrides += ["lab.qconfigs=[pot_w4a4]"]
    lab_dir = tmp_path / "lab"
    run_lab(compose_config("lab", overrides, lab_dir))
    rows = json.loads((lab_dir / "report.json").read_text())["rows"]
    assert [(r["dir"], r["backend"]) for r in rows] == [
        ("fp32", None),
        ("ptq_pot_w4a4_pt2e", "pt2e"),
        ("qat_pot_w4a4_pt2e", "pt2e"),
    ]
    assert (lab_dir / "ptq_pot_w4a4_pt2e" / "model_int8.pt2").is_file()
    report = (lab_dir / "report.md").read_text()
    assert "| PTQ | pt2e |" in report and "| W4pc/A4 |" in report
    # lab.export=true exports the pt2e stages too: the integer program of the .pt2, checked
    # code for code against the Q/DQ graph it was read from
    for stage in ("ptq_pot_w4a4_pt2e", "qat_pot_w4a4_pt2e"):
        results = json.loads((lab_dir / stage / "results.json").read_text())
        assert (results["weight_bits"], results["activation_bits"]) == (4, 4)
        assert (results["granularity"], results["range"]) == ("per_channel", "mse")
        assert 0 < results["packed_size_mib"] < results["size_mib"]
        for layer in results["layers"]:
            assert layer["bits"] == {"weight": 4, "activation": 4}, layer["name"]
            assert 0 <= layer["clip_fraction"] <= 1 and "weight_sqnr_db" in layer
        # the preset's post-ReLU outputs are unsigned: codes 0..15 with zero point 0 (others 8)
        assert {layer["zero_point"] for layer in results["layers"]} == {0, 8}, stage
        bitexact = json.loads((lab_dir / stage / "export" / "bitexact.json").read_text())
        assert bitexact["identical_images"] == bitexact["images"] == 400, stage
        summary = json.loads((lab_dir / stage / "export" / "integer_model.json").read_text())
        assert summary["shifts"]["per_channel_shift_ops"], stage
        assert (lab_dir / stage / "export" / "golden" / "golden.npz").is_file()
