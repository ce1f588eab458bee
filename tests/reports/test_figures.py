"""Figures and the report rebuild without training: per-class damage, the ablation figure and
`labquant-report`'s one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labquant.cli.report import main as report_main
from labquant.reports.lab_figures import per_class_table
from labquant.reports.rebuild import rebuild_report


def test_int8_identical_to_fp32_drops_nothing_in_any_class() -> None:
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 50, size=(10, 10)).tolist()
    rows = [{"stage": "fp32", "dir": "fp32"}, {"stage": "ptq", "dir": "ptq_pot"}]
    results = {
        "fp32": {"stage": "fp32"},
        "ptq_pot": {
            "stage": "ptq",
            "qconfig": "pot",
            "backend": "eager",
            "confusion": {"fp32": confusion, "int8": confusion},
        },
    }
    table = per_class_table(rows, results)
    assert sum(table["counts"]) == int(np.sum(confusion))
    assert table["models"][0]["drop"] == [0.0] * 10
    assert table["models"][0]["acc"] == table["fp32"]


def fake_sweep(sweep: Path, jobs: int = 3, epochs: int = 4) -> None:
    for job in range(jobs):
        folder = sweep / str(job)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra/config.yaml").write_text(
            f"ablation_row: {job + 1}\noptimizer: {{lr: 0.{job + 1}, weight_decay: 0.0005, "
            "momentum: 0.9}\nscheduler: null\ntrainer: {max_epochs: 4}\n"
        )
        accs = [0.3 + 0.1 * epoch + 0.02 * job for epoch in range(epochs)]
        lines = ["epoch,step,val/acc"] + [f"{e},{e * 10},{a}" for e, a in enumerate(accs)]
        (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
        if job < jobs - 1:  # the last job was interrupted: no results.json
            results = {"status": "complete", "val_acc": 100 * accs[-1], "epochs": epochs}
            results |= {"best_val_acc": 100 * max(accs), "test_acc": 50.0}
            (folder / "results.json").write_text(json.dumps(results))


def test_labquant_report_rebuilds_an_interrupted_sweep(tmp_path: Path) -> None:
    fake_sweep(tmp_path)
    assert rebuild_report(tmp_path) == tmp_path / "ablation.md"
    text = (tmp_path / "ablation.md").read_text()
    assert text.count("| ok |") == 2 and "FAILED: no results.json" in text
    image = np.asarray(Image.open(tmp_path / "ablation_curves.png").convert("L"), dtype=float)
    assert image.shape == (605, 1430)  # 13 x 5.5 in at 110 dpi: curves + best/final bars
    assert image.std() > 20


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_labquant_report_without_results_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: str
) -> None:
    folder = tmp_path / "lab"
    if make == "empty":
        (folder / "fp32").mkdir(parents=True)
        (folder / "fp32/results.json").write_text('{"status": "failed"}')
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(folder)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"labquant-report: error: folder={folder} ")
    assert "; pass a labquant-lab folder" in err
