"""What the tiny lab shows: its PNGs, the uncertainty they state (the test set's size, one
image's worth), each stage's TensorBoard run (figures, histograms, one HPARAMS row) and the lab
as TensorBoard's data provider reads it, the QAT
scale heat map in network order, the per-class table, and `labquant-report` rebuilding
report.md byte for byte."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.context import RequestContext
from tensorboard.data.provider import RunTagFilter
from tensorboard.plugins.hparams import plugin_data_pb2

from labquant.cli.report import main as report_main
from labquant.reports.curves import read_epoch_metrics
from labquant.reports.figures import qat_scales_figure
from labquant.reports.lab_figures import per_class_table
from labquant.tasks.board import STAGE_HPARAMS

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it

NUM_TEST = 400  # TINY's data.num_test
DPI = 110


def pixels(png: Path) -> np.ndarray:
    return np.asarray(Image.open(png).convert("L"), dtype=np.float64)


@pytest.mark.parametrize(
    ("name", "width", "height"),
    [
        ("accuracy_size.png", 1650, 550),  # against file size and against packed size
        ("per_class.png", 1210, 825),  # 10 classes: (0.8 * 10 + 3) x 7.5 in
        ("sqnr_layers.png", None, 528),  # width grows with the layer count
        ("fp32/loss_accuracy.png", 1210, 440),
        ("qat_pot/loss_accuracy.png", 1210, 440),
    ],
)
def test_lab_png_has_its_size_and_is_not_blank(
    tiny_lab: Path, name: str, width: int | None, height: int
) -> None:
    image = pixels(tiny_lab / name)
    assert image.shape[0] == height
    assert image.shape[1] == width if width else 7 * DPI <= image.shape[1] <= 16 * DPI
    assert image.std() > 20  # a white canvas has 0; text, axes and bars lift it well above
    assert f"]({name})" in (tiny_lab / "report.md").read_text()  # embedded, relative


def test_lab_figures_say_how_large_one_image_is(tiny_lab: Path) -> None:
    report = (tiny_lab / "report.md").read_text()
    stages = [json.loads((tiny_lab / d / "results.json").read_text()) for d in ("ptq_pot", "fp32")]
    assert {r["test_images"] for r in stages} == {NUM_TEST}
    # accuracy_size.png's caption, repeated under it in report.md
    assert "95 % paired interval of each int8 model's accuracy drop against FP32" in report
    assert f"on {NUM_TEST} test images; one image = 0.25 pp" in report
    # per_class.png's: 10 classes of the 400 images, not all equal in a random split
    assert "test images per class: one image is" in report and "Wilson 95 %" in report


def test_qat_scales_rows_follow_the_lab_layers(tiny_lab: Path) -> None:
    series = read_epoch_metrics(tiny_lab / "qat_pot/metrics.csv")
    layers = [layer["name"] for layer in json.loads(
        (tiny_lab / "qat_pot/results.json").read_text())["layers"]]  # fmt: skip
    fig = qat_scales_figure(series, "QAT", order=layers)
    assert fig is not None
    rows = [label.get_text() for label in fig.axes[0].get_yticklabels()]
    owners = [max((i for i, n in enumerate(layers) if r == n or r.startswith(n + ".")),
                  key=lambda i: len(layers[i]), default=None) for r in rows]  # fmt: skip
    placed = [i for i in owners if i is not None]
    assert placed == sorted(placed) and set(placed) == set(range(len(layers)))
    assert rows[0].startswith("quant.")  # the input's quantizer before the first conv


def read_run(stage_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(stage_dir), size_guidance={"images": 1})
    events.Reload()
    return events


def stage_hparams(events: EventAccumulator) -> dict[str, object]:
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    values = data.session_start_info.hparams
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in values.items()}


@pytest.mark.parametrize(
    ("stage", "figures"),
    [
        ("fp32", {"loss_accuracy"}),
        ("ptq_pot", {"sqnr_layers"}),
        ("qat_pot", {"loss_accuracy", "sqnr_layers", "qat_scales"}),
    ],
)
def test_each_stage_is_a_tensorboard_run_with_figures_and_an_hparams_row(
    tiny_lab: Path, stage: str, figures: set[str]
) -> None:
    events = read_run(tiny_lab / stage)
    tags = events.Tags()
    assert {f"figures/{name}" for name in figures} == {
        t for t in tags["images"] if t.startswith("figures/")
    }
    assert {"results/test_acc", "results/acc_drop", "results/size_mib"} <= set(tags["scalars"])
    assert "config/text_summary" in tags["tensors"]  # the full config, as text
    hparams = stage_hparams(events)
    results = json.loads((tiny_lab / stage / "results.json").read_text())
    histograms = {t for t in tags["histograms"] if t.startswith("weights/")}
    if stage == "fp32":
        assert histograms
    else:  # every quantized layer, fused conv-relu ones included
        assert histograms == {f"weights/{layer['name']}" for layer in results["layers"]}
    assert hparams["stage"] == results["stage"]
    if stage != "fp32":
        assert hparams["backend"] == "eager" and hparams["qconfig"] == "pot"
        assert hparams["max_shift_amount"] == str(results["max_shift_amount"])
        assert (hparams["weight_bits"], hparams["granularity"]) == (8, "per_tensor")
    assert yaml.safe_load((tiny_lab / stage / "hparams.yaml").read_text()) == hparams


def open_board(logdir: Path) -> tuple[MultiplexerDataProvider, RequestContext]:
    """The lab folder as `tensorboard --logdir` reads it: TensorBoard's own data provider."""
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    return MultiplexerDataProvider(multiplexer, str(logdir)), RequestContext()


def test_tensorboard_compares_the_stages_as_a_user_reads_them(tiny_lab: Path) -> None:
    board, ctx = open_board(tiny_lab)
    # Runs named by stage, not <stage>/tensorboard.
    assert {run.run_name for run in board.list_runs(ctx, experiment_id="")} == {
        "fp32", "ptq_pot", "qat_pot"}  # fmt: skip
    # One HPARAMS row per stage, FP32 included, all with the same short set of keys.
    rows = {}
    for run, tags in board.list_tensors(ctx, experiment_id="", plugin_name="hparams").items():
        content = tags["_hparams_/session_start_info"].plugin_content
        values = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        rows[run] = {key: getattr(value, value.WhichOneof("kind")) for key, value in values.items()}
    assert set(rows) == {"fp32", "ptq_pot", "qat_pot"}
    assert {frozenset(row) for row in rows.values()} == {frozenset(STAGE_HPARAMS)}
    assert (rows["fp32"]["backend"], rows["fp32"]["qconfig"], rows["fp32"]["weight_bits"]) == (
        "fp32", "none", 32)  # fmt: skip
    assert rows["ptq_pot"]["epochs"] == 0 and rows["qat_pot"]["epochs"] == 1
    # The columns: one experiment, the same in every run, whose metrics every stage has (the
    # parallel-coordinates view leaves out a run that lacks one).
    experiments = {
        tags["_hparams_/experiment"].plugin_content
        for tags in board.list_tensors(ctx, experiment_id="", plugin_name="hparams").values()
    }
    assert len(experiments) == 1
    experiment = plugin_data_pb2.HParamsPluginData.FromString(experiments.pop()).experiment
    assert [info.name for info in experiment.hparam_infos] == list(STAGE_HPARAMS)
    metric_tags = {info.name.tag for info in experiment.metric_infos}
    scalars = board.list_scalars(ctx, experiment_id="", plugin_name="scalars")
    assert metric_tags and all(metric_tags <= set(scalars[run]) for run in rows)
    # QAT's curves follow FP32's on the step axis; accuracies in percent; no `epoch` chart.
    assert not any("epoch" in tags or "test/images" in tags for tags in scalars.values())
    wanted = RunTagFilter(runs=["fp32", "qat_pot"], tags=["train/loss", "val/acc", "train/lr"])
    series = board.read_scalars(
        ctx, experiment_id="", plugin_name="scalars", downsample=1000, run_tag_filter=wanted
    )
    fp32_steps = [d.step for tag in series["fp32"].values() for d in tag]
    qat_steps = [d.step for tag in series["qat_pot"].values() for d in tag]
    assert min(qat_steps) >= max(fp32_steps)
    last = json.loads((tiny_lab / "fp32/results.json").read_text())
    assert max(d.value for d in series["fp32"]["val/acc"]) == pytest.approx(
        last["best_val_acc"], abs=1e-3)  # fmt: skip


def test_per_class_counts_sum_to_the_test_set(tiny_lab: Path) -> None:
    report = json.loads((tiny_lab / "report.json").read_text())
    stages = {
        row["dir"]: json.loads((tiny_lab / row["dir"] / "results.json").read_text())
        for row in report["rows"]
    }
    table = per_class_table(report["rows"], stages)
    assert sum(table["counts"]) == NUM_TEST
    assert [m["label"] for m in table["models"]] == ["PTQ pot/eager", "QAT pot/eager"]
    for model, key in zip(table["models"], ["ptq_pot", "qat_pot"], strict=True):
        confusion = np.asarray(stages[key]["confusion"]["int8"])
        assert confusion.sum() == NUM_TEST
        assert 100 * np.trace(confusion) / NUM_TEST == pytest.approx(stages[key]["test_acc"])
        weighted = np.dot(table["counts"], model["drop"]) / NUM_TEST
        assert weighted == pytest.approx(stages[key]["acc_drop"], abs=1e-3)
    assert "| class | test images | FP32 (%) |" in (tiny_lab / "report.md").read_text()


def test_labquant_report_rebuilds_the_lab_byte_for_byte(tiny_lab: Path, tmp_path: Path) -> None:
    copy = tmp_path / "lab"
    shutil.copytree(tiny_lab, copy)
    expected = (copy / "report.md").read_bytes()
    for name in ("report.md", "report.json", "accuracy_size.png", "per_class.png"):
        (copy / name).unlink()
    (copy / "qat_pot/loss_accuracy.png").unlink()
    report_main([str(copy)])
    assert (copy / "report.md").read_bytes() == expected
    assert (copy / "report.json").read_bytes() == (tiny_lab / "report.json").read_bytes()
    for name in ("accuracy_size.png", "per_class.png", "qat_pot/loss_accuracy.png"):
        assert (copy / name).is_file()
