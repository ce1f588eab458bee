"""The lab report's loss / accuracy figure, drawn from the CSV logger's metrics.csv."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers, in CI and in sweep workers
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from labquant.reports.artifacts import write_atomic

Series = dict[str, list[tuple[int, float]]]


def read_epoch_metrics(metrics_csv: Path) -> Series:
    """Per-epoch values of every column of metrics.csv: {name: [(epoch, value), ...]}."""
    series: Series = defaultdict(list)
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            epoch = row.get("epoch", "")
            if epoch == "":
                continue
            for key, value in row.items():
                if key in ("epoch", "step") or value in ("", None):
                    continue
                series[key].append((int(float(epoch)), float(value)))
    return dict(series)


def loss_accuracy_figure(series: Series, title: str = "") -> Figure:
    """Two panels as in the lab report: train/val loss and train/val accuracy per epoch."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, ylabel in (
        (ax_loss, "loss", "cross-entropy loss"),
        (ax_acc, "acc", "accuracy (%)"),  # logged in percent (lit.module.PercentAccuracy)
    ):
        for split, style in (("train", "-o"), ("val", "-s")):
            points = series.get(f"{split}/{metric}", [])
            if points:
                epochs, values = zip(*points, strict=True)
                ax.plot([e + 1 for e in epochs], values, style, ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_loss_accuracy(metrics_csv: Path, out_png: Path, title: str = "") -> Path:
    """loss_accuracy.png of a run from its metrics.csv."""
    fig = loss_accuracy_figure(read_epoch_metrics(metrics_csv), title)
    write_atomic(out_png, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return out_png
