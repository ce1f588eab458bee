"""The figures that show what quantization did: per-layer SQNR, QAT scales, accuracy against
file size and per-class damage. Each builder returns a matplotlib Figure (TensorBoard logs it as
is); `save_figure` writes one as a PNG. Agg only: no display needed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from labquant.reports.artifacts import write_atomic

DPI = 110
CLAMP_COLOR = "tab:red"


def save_figure(fig: Figure, out_png: Path) -> Path:
    write_atomic(out_png, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    plt.close(fig)
    return out_png


def integer_ticks(ax: Any) -> None:
    """Epochs are whole numbers: no 1.2, 1.4, ... ticks."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def clamp_hit(layer: dict[str, Any]) -> bool:
    """The layer's power-of-two shift hit its bound (over- or underflow of the shift range)."""
    return "flow" in str((layer.get("clamp") or {}).values())


def stage_label(results: dict[str, Any]) -> str:
    """`FP32`, `PTQ pot/eager`, ...: stage, qconfig and backend of one results.json."""
    if results.get("stage") == "fp32":
        return "FP32"
    extra = "/".join(str(v) for v in (results.get("qconfig"), results.get("backend")) if v)
    return f"{str(results.get('stage', '?')).upper()} {extra}".strip()


def layer_axis(ax: Any, names: Sequence[str]) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("quantized layer (network order)")
    ax.grid(axis="y", alpha=0.3)


def layer_width(count: int) -> float:
    return min(16.0, max(7.0, 0.32 * count + 3))


def sqnr_bar_figure(layers: list[dict[str, Any]], title: str) -> Figure:
    """One int8 model's per-layer SQNR against FP32; layers whose shift clamp was hit in red."""
    names = [layer["name"] for layer in layers]
    values = [float(layer["sqnr_db"]) for layer in layers]
    hits = [clamp_hit(layer) for layer in layers]
    fig, ax = plt.subplots(figsize=(layer_width(len(names)), 4.5))
    colors = [CLAMP_COLOR if hit else "tab:blue" for hit in hits]
    ax.bar(range(len(names)), values, color=colors)
    for i, hit in enumerate(hits):
        if hit:
            ax.annotate("clamp", (i, values[i]), ha="center", va="bottom", fontsize=7)
    layer_axis(ax, names)
    ax.set_ylabel("SQNR vs FP32 (dB, higher is better)")
    handles = [
        Patch(color="tab:blue", label="no clamp hit"),
        Patch(color=CLAMP_COLOR, label="shift clamp hit"),
    ]
    ax.legend(handles=handles, fontsize=8, loc="lower left")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def qat_scales_figure(series: dict[str, list[tuple[int, float]]], title: str) -> Figure | None:
    """Fake-quant scales over QAT epochs as a heat map of log2(scale): layer x epoch. A
    power-of-two scale 2**-n reads as the integer -n (the requantization shift)."""
    columns = sorted(key for key in series if key.startswith("qat_scale/"))
    if not columns:
        return None
    epochs = sorted({epoch for key in columns for epoch, _ in series[key]})
    grid = np.full((len(columns), len(epochs)), np.nan)
    for row, key in enumerate(columns):
        for epoch, value in series[key]:
            if value > 0:
                grid[row, epochs.index(epoch)] = math.log2(value)
    names = [key.removeprefix("qat_scale/") for key in columns]
    fig, ax = plt.subplots(
        figsize=(min(14.0, 4 + 0.8 * len(epochs)), min(16.0, 2 + 0.3 * len(names)))
    )
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="log2(scale) (integer = bit shift)")
    if grid.size <= 600:
        for (row, col), value in np.ndenumerate(grid):
            if not np.isnan(value):
                text = f"{value:.0f}" if abs(value - round(value)) < 1e-6 else f"{value:.1f}"
                ax.text(col, row, text, ha="center", va="center", fontsize=6, color="white")
    ax.set_xticks(range(len(epochs)))
    ax.set_xticklabels([str(e + 1) for e in epochs])
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("QAT epoch")
    ax.set_ylabel("fake-quantized layer")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def accuracy_size_figure(points: list[tuple[str, float, float, float | None]]) -> Figure:
    """Each report row (label, file MiB, accuracy %, packed MiB) as one labelled point, against
    the file size and (right) against the packed size a hardware memory holds."""
    packed = [p for p in points if p[3] is not None]
    panels = 2 if packed else 1
    fig, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 5), squeeze=False)
    markers = {"FP32": "s", "PTQ": "o", "QAT": "^"}
    sides = [(axes[0][0], 1, "model file size (MiB)", points)]
    if packed:
        sides.append((axes[0][1], 3, "packed size (MiB): weights at their width", packed))
    colors = {point[0]: f"C{i % 10}" for i, point in enumerate(points)}  # one per row, both panels
    for ax, column, xlabel, shown in sides:
        for point in shown:
            label, acc, size = point[0], point[2], point[column]
            marker = markers.get(label.split()[0], "o")
            ax.scatter(size, acc, s=60, marker=marker, color=colors[label], label=label)
            ax.annotate(label, (size, acc), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.margins(x=0.2, y=0.15)
    axes[0][0].set_title("Accuracy against file size")
    if packed:
        axes[0][1].set_title("Accuracy against packed size")
    fig.tight_layout()
    return fig


def sqnr_layers_figure(models: list[tuple[str, list[dict[str, Any]]]]) -> Figure:
    """Per-layer SQNR of every int8 model, one line each, on the first model's layer order."""
    names: list[str] = []
    for _, layers in models:
        names += [layer["name"] for layer in layers if layer["name"] not in names]
    fig, ax = plt.subplots(figsize=(layer_width(len(names)), 4.8))
    for label, layers in models:
        by_name = {layer["name"]: float(layer["sqnr_db"]) for layer in layers}
        ax.plot(range(len(names)), [by_name.get(n, np.nan) for n in names], "-o", ms=3, label=label)
        hit_x = [names.index(layer["name"]) for layer in layers if clamp_hit(layer)]
        if hit_x:
            ax.scatter(hit_x, [by_name[names[i]] for i in hit_x], marker="x", color=CLAMP_COLOR)
    layer_axis(ax, names)
    ax.set_ylabel("SQNR vs FP32 (dB, higher is better)")
    ax.set_title("Per-layer SQNR of each int8 model (x: shift clamp hit)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def per_class_accuracy(confusion: list[list[int]]) -> tuple[list[int], list[float]]:
    """Test images per class and per-class accuracy (%) from a confusion matrix (rows: truth)."""
    matrix = np.asarray(confusion, dtype=np.int64)
    counts = matrix.sum(axis=1)
    correct = np.diag(matrix)
    acc = np.where(counts > 0, 100.0 * correct / np.maximum(counts, 1), np.nan)
    return [int(c) for c in counts], [float(a) for a in acc]


def per_class_figure(
    class_names: Sequence[str], fp32: list[float], models: list[tuple[str, list[float]]]
) -> Figure:
    """Top: per-class accuracy of FP32 and each int8 model; bottom: each model's drop."""
    x = np.arange(len(class_names))
    width = 0.8 / (1 + len(models))
    fig, (ax_acc, ax_drop) = plt.subplots(2, 1, figsize=(max(8.0, 0.8 * len(x) + 3), 7.5))
    ax_acc.bar(x - 0.4 + width / 2, fp32, width, label="FP32", color="0.45")
    for i, (label, acc) in enumerate(models, start=1):
        ax_acc.bar(x - 0.4 + width * (i + 0.5), acc, width, label=label)
        drop = [f - a for f, a in zip(fp32, acc, strict=True)]
        ax_drop.bar(x - 0.4 + width * (i + 0.5), drop, width, label=label)
    for ax in (ax_acc, ax_drop):
        ax.set_xticks(x)
        ax.set_xticklabels(class_names, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    ax_drop.axhline(0, color="black", lw=0.8)
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("Per-class test accuracy")
    ax_drop.set_ylabel("FP32 - int8 (pp)")
    ax_drop.set_xlabel("class")
    ax_drop.set_title("Per-class accuracy drop (positive: int8 loses)")
    fig.tight_layout()
    return fig
