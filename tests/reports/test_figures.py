"""Figures and the report rebuild without training: per-class damage, the uncertainty every
lab figure shows (error bars, y range, captions), the QAT scale heat map's order and labels, the
ablation figure and `labquant-report`'s one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from PIL import Image

from labquant.cli.report import main as report_main
from labquant.reports.figures import (
    accuracy_size_figure,
    per_class_accuracy,
    per_class_figure,
    qat_scales_figure,
    wilson_interval,
)
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


# label, file MiB, accuracy %, packed MiB, acc_drop_ci95 (pp): the quick lab's spread.
POINTS = [
    ("FP32", 0.43, 69.05, None, None),
    ("PTQ pot/eager", 0.12, 68.60, 0.031, 1.09),
    ("QAT pot/eager", 0.12, 69.19, 0.031, 0.85),
]


def bars(ax: object) -> list[tuple[float, float, float]]:
    """(x, low, high) of every vertical error bar drawn on `ax`."""
    found = []
    for container in ax.containers:  # type: ignore[attr-defined]
        if isinstance(container, ErrorbarContainer):
            for collection in container.lines[2]:
                for (x, low), (_, high) in collection.get_segments():
                    found.append((float(x), float(low), float(high)))
    return found


def caption(fig: Figure) -> str:
    return " ".join(text.get_text() for text in fig.texts)


def test_accuracy_size_bars_are_each_int8_interval_in_both_panels() -> None:
    fig = accuracy_size_figure(POINTS, [10_000])
    assert len(fig.axes) == 2
    for ax, column in zip(fig.axes, (1, 3), strict=True):
        drawn = sorted(bars(ax))
        expected = sorted((p[column], p[2] - p[4], p[2] + p[4]) for p in POINTS[1:])
        assert np.allclose(drawn, expected)  # ± acc_drop_ci95, none on FP32
        low, high = ax.get_ylim()
        for _, _, acc, _, ci in POINTS:
            assert low < acc - (ci or 0) and acc + (ci or 0) < high
    text = caption(fig)
    assert "95 % paired interval" in text and "against FP32" in text
    assert "10,000 test images" in text and "one image = 0.01 pp" in text


def test_accuracy_axis_never_magnifies_noise() -> None:
    close = [("FP32", 0.4, 90.00, None, None), ("PTQ pot/eager", 0.1, 90.05, 0.02, 0.04)]
    fig = accuracy_size_figure(close, 400)
    low, high = fig.axes[0].get_ylim()
    assert high - low >= 2.0  # at least ~2 pp, however close the points
    assert "one image = 0.25 pp" in caption(fig)
    wide = [("FP32", 0.4, 70.0, None, None), ("PTQ pot/eager", 0.1, 69.0, 0.02, 3.0)]
    low, high = accuracy_size_figure(wide).axes[0].get_ylim()
    assert low < 66.0 and high > 72.0  # the whole interval, plus a margin


def test_accuracy_size_rows_without_an_interval_draw_no_bar() -> None:
    fig = accuracy_size_figure([(p[0], p[1], p[2], p[3]) for p in POINTS])  # older rows
    assert not any(bars(ax) for ax in fig.axes)
    assert "one image" not in caption(fig)  # no test-set size known


def test_wilson_interval_stays_open_at_0_and_100_percent() -> None:
    assert wilson_interval(0, 100) == pytest.approx((0.0, 3.699), abs=1e-3)
    assert wilson_interval(100, 100) == pytest.approx((96.301, 100.0), abs=1e-3)
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(40.383, abs=1e-3) and high == pytest.approx(59.617, abs=1e-3)


def test_per_class_figure_has_intervals_and_says_what_one_image_is() -> None:
    rng = np.random.default_rng(1)
    fp32_conf = np.diag(rng.integers(60, 100, size=10))
    fp32_conf[:, 0] += 100 - fp32_conf.sum(axis=1)  # 100 images per class, errors as class 0
    int8_conf = fp32_conf.copy()
    int8_conf[3, 3] -= 2
    int8_conf[3, 0] += 2
    counts, fp32 = per_class_accuracy(fp32_conf.tolist())
    _, int8 = per_class_accuracy(int8_conf.tolist())
    assert counts == [100] * 10
    names = [f"class{i}" for i in range(10)]
    fig = per_class_figure(names, fp32, [("PTQ pot/eager", int8)], counts=counts)
    ax_acc, ax_drop = fig.axes
    drawn = bars(ax_acc)
    assert len(drawn) == 10 and not bars(ax_drop)
    for (_, low, high), acc, n in zip(drawn, int8, counts, strict=True):
        assert (low, high) == pytest.approx(wilson_interval(round(acc * n / 100), n))
        assert low <= acc <= high
    text = caption(fig)
    assert "100 test images per class" in text and "one image is 1 pp" in text
    assert "Wilson 95 % interval" in text
    assert not caption(per_class_figure(names, fp32, [("PTQ", int8)]))  # counts unknown


def test_qat_scales_follow_the_network_order_with_readable_labels() -> None:
    order = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "fc"]
    names = ["fc.weight_fake_quant", "conv1.weight_fake_quant", "quant.activation_post_process",
             "layer2.0.conv1.weight_fake_quant.max", "layer1.0.skip_add.activation_post_process",
             "layer1.0.conv2.weight_fake_quant", "layer1.0.conv1.weight_fake_quant"]  # fmt: skip
    # scales 2**0 (yellow in viridis) down to 2**-12 (dark purple)
    shifts = {name: -2 * i for i, name in enumerate(sorted(names))}
    series = {f"qat_scale/{n}": [(0, 2.0 ** shifts[n]), (1, 2.0 ** shifts[n])] for n in names}
    series["train/loss"] = [(0, 1.0), (1, 0.5)]
    fig = qat_scales_figure(series, "QAT", order=order)
    assert fig is not None
    ax = fig.axes[0]
    assert [label.get_text() for label in ax.get_yticklabels()] == [
        "quant.activation_post_process",  # the input quant stub: no layer, first
        "conv1.weight_fake_quant",
        "layer1.0.conv1.weight_fake_quant",
        "layer1.0.conv2.weight_fake_quant",
        "layer1.0.skip_add.activation_post_process",  # after its block's last conv
        "layer2.0.conv1.weight_fake_quant.max",
        "fc.weight_fake_quant",
    ]
    colors = {text.get_text(): text.get_color() for text in ax.texts}
    assert colors["0"] == "black"  # on the yellow top of viridis
    assert colors[str(-2 * (len(names) - 1))] == "white"  # on its dark purple bottom
    unordered = qat_scales_figure(series, "QAT")
    assert unordered is not None
    assert [t.get_text() for t in unordered.axes[0].get_yticklabels()] == sorted(names)


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
