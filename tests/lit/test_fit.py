"""A real (tiny) FP32 run through the composed Hydra config: it learns and leaves its artifacts."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@pytest.fixture
def finished_run(tiny_fp32_run: tuple[dict, Path]) -> tuple[dict, Path]:
    return tiny_fp32_run


def test_model_learns_above_chance(finished_run: tuple[dict, Path]) -> None:
    results, _ = finished_run
    assert results["test_acc"] > 40.0  # 10 classes: chance is 10 %
    assert results["best_val_acc"] >= results["val_acc"] - 1e-6


def test_results_json_has_the_promised_fields(finished_run: tuple[dict, Path]) -> None:
    results, out = finished_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    for key in (
        "stage",
        "model",
        "params",
        "epochs",
        "val_acc",
        "best_val_acc",
        "test_acc",
        "test_loss",
        "size_mib",
        "wall_time_s",
        "checkpoint",
    ):
        assert on_disk[key] is not None, key
    assert on_disk["stage"] == "fp32"
    assert on_disk["epochs"] == 4
    assert 0 <= on_disk["test_acc"] <= 100 and on_disk["test_acc"] > 1  # percent, not a fraction
    state_dict = out / on_disk["state_dict"]
    assert on_disk["size_mib"] == pytest.approx(state_dict.stat().st_size / 2**20)
    assert (out / on_disk["checkpoint"]).is_file()
    assert sum(p.numel() for p in torch.load(state_dict).values() if p.is_floating_point()) > 0


def test_run_folder_holds_logs_checkpoints_and_plot(finished_run: tuple[dict, Path]) -> None:
    _, out = finished_run
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "metrics.csv").is_file()
    png = out / "loss_accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("train/loss", "train/acc", "val/loss", "val/acc", "train/lr"):
        assert column in header
    with open(out / "metrics.csv", newline="") as handle:
        accuracies = [float(v) for row in csv.DictReader(handle) if (v := row["val/acc"])]
    assert accuracies and max(accuracies) > 1  # percent, as in results.json, not a fraction


def test_tensorboard_has_scalars_and_hparams(finished_run: tuple[dict, Path]) -> None:
    _, out = finished_run
    events = list(out.glob("events.out.tfevents.*"))  # in the run folder: the run is named by it
    assert events
    tags: set[str] = set()
    plugins: set[str] = set()
    for event_file in events:
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
        with contextlib.suppress(KeyError):  # this event file holds no hparams
            plugins |= set(acc.PluginTagToContent("hparams"))
    assert {"train/loss", "val/acc", "train/lr", "results/test_acc"} <= tags
    assert not tags & {"epoch", "test/images"}  # in metrics.csv only
    assert plugins  # the hparams tab's session data
