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


def network_order(names: Sequence[str], order: Sequence[str]) -> list[str]:
    """`names` (fake-quant names: `conv1.weight_fake_quant`, `layer1.0.skip_add.activation_post
    _process`, `quant.activation_post_process`) sorted by the layer of `order` (network order,
    as results.json `layers`) each belongs to: the longest entry it equals or starts with plus
    a dot. A name of no layer goes right after the last layer of its longest enclosing module
    in `order` (a block's residual add after the block's convs), or first when no layer shares
    a module with it (the input quant stub). Ties keep alphabetical order."""
    index = {name: i for i, name in reversed(list(enumerate(order)))}

    def rank(name: str) -> tuple[float, int]:
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest layer it belongs to
            prefix = ".".join(parts[:cut])
            if prefix in index:
                return index[prefix], 0
        for cut in range(len(parts) - 1, 0, -1):  # the longest module it shares with a layer
            prefix = ".".join(parts[:cut]) + "."
            inside = [i for layer, i in index.items() if layer.startswith(prefix)]
            if inside:
                return max(inside), 1
        return -1, 0

    return sorted(sorted(names), key=rank)


def text_color(rgba: Sequence[float]) -> str:
    """Black or white, whichever contrasts more with a cell of colour `rgba` (WCAG relative
    luminance: black on yellow viridis cells, white on dark purple ones)."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "black" if luminance > 0.179 else "white"  # equal contrast ratio at 0.179


def qat_scales_figure(
    series: dict[str, list[tuple[int, float]]],
    title: str,
    order: Sequence[str] | None = None,
) -> Figure | None:
    """Fake-quant scales over QAT epochs as a heat map of log2(scale): layer x epoch. A
    power-of-two scale 2**-n reads as the integer -n (the requantization shift).

    `order`: the layer names in network order (results.json `layers`); the rows follow it
    (`network_order`). Without it they are alphabetical: metrics.csv's columns are sorted, so
    the order names first appear in is no network order either."""
    names = sorted(key.removeprefix("qat_scale/") for key in series if key.startswith("qat_scale/"))
    if not names:
        return None
    if order:
        names = network_order(names, order)
    columns = [f"qat_scale/{name}" for name in names]
    epochs = sorted({epoch for key in columns for epoch, _ in series[key]})
    grid = np.full((len(columns), len(epochs)), np.nan)
    for row, key in enumerate(columns):
        for epoch, value in series[key]:
            if value > 0:
                grid[row, epochs.index(epoch)] = math.log2(value)
    fig, ax = plt.subplots(
        figsize=(min(14.0, 4 + 0.8 * len(epochs)), min(16.0, 2 + 0.3 * len(names)))
    )
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="log2(scale) (integer = bit shift)")
    if grid.size <= 600:
        for (row, col), value in np.ndenumerate(grid):
            if not np.isnan(value):
                text = f"{value:.0f}" if abs(value - round(value)) < 1e-6 else f"{value:.1f}"
                color = text_color(image.cmap(image.norm(value)))
                ax.text(col, row, text, ha="center", va="center", fontsize=6, color=color)
    ax.set_xticks(range(len(epochs)))
    ax.set_xticklabels([str(e + 1) for e in epochs])
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("QAT epoch")
    ax.set_ylabel("fake-quantized layer (network order)" if order else "fake-quantized layer")
    ax.set_title(title)
    fig.tight_layout()
    return fig


MIN_ACC_SPAN_PP = 2.0  # the accuracy axis never spans less: a few tenths must look small


def one_image_pp(images: Sequence[int]) -> str:
    """What one test image is worth in percentage points: `0.1 pp`, `0.93 - 1.1 pp`."""
    worth = sorted({f"{100.0 / n:.2g}" for n in images if n > 0}, key=float)
    if not worth:
        return "?"
    return f"{worth[0]} pp" if len(worth) == 1 else f"{worth[0]} - {worth[-1]} pp"


def accuracy_limits(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """y-limits holding every (accuracy, half-width) with its whole interval, a margin of 15 %
    of that range (at least 0.2 pp) on each side, and at least MIN_ACC_SPAN_PP in all."""
    lo = min(acc - ci for acc, ci in points)
    hi = max(acc + ci for acc, ci in points)
    pad = max(0.15 * (hi - lo), 0.2)
    lo, hi = lo - pad, hi + pad
    if hi - lo < MIN_ACC_SPAN_PP:
        middle = (lo + hi) / 2
        lo, hi = middle - MIN_ACC_SPAN_PP / 2, middle + MIN_ACC_SPAN_PP / 2
    return lo, hi


def accuracy_size_caption(test_images: Sequence[int]) -> str:
    images = sorted(set(test_images))
    counted = f" on {' / '.join(f'{n:,}' for n in images)} test images" if images else ""
    worth = f"; one image = {one_image_pp(images)} of accuracy" if images else ""
    return (
        "Error bars: 95 % paired interval of each int8 model's accuracy drop against FP32 "
        f"(the same images){counted}{worth}. A bar that reaches the dashed FP32 line is a drop "
        "this test set cannot tell from zero."
    )


def accuracy_size_figure(
    points: Sequence[tuple[Any, ...]], test_images: Sequence[int] | int | None = None
) -> Figure:
    """Each report row (label, file MiB, accuracy %, packed MiB, acc_drop_ci95 pp) as one
    labelled point, against the file size and (right) against the packed size a hardware
    memory holds. An int8 point carries a vertical bar of ± its `acc_drop_ci95` (the paired
    95 % interval of its drop against FP32; FP32 has none: it is the reference, dashed); both
    panels share y-limits that hold every bar (`accuracy_limits`), so noise never fills the
    axis. `test_images`: the test set's size(s), for the caption's "one image = x pp"."""
    points = [(*point, None)[:5] for point in points]  # rows without an interval: no bar
    if isinstance(test_images, int):
        test_images = [test_images]
    packed = [p for p in points if p[3] is not None]
    panels = 2 if packed else 1
    fig, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 5), squeeze=False)
    markers = {"FP32": "s", "PTQ": "o", "QAT": "^"}
    sides = [(axes[0][0], 1, "model file size (MiB)", points)]
    if packed:
        sides.append((axes[0][1], 3, "packed size (MiB): weights at their width", packed))
    colors = {point[0]: f"C{i % 10}" for i, point in enumerate(points)}  # one per row, both panels
    fp32 = sorted({p[2] for p in points if p[0] == "FP32"})
    limits = accuracy_limits([(p[2], float(p[4] or 0.0)) for p in points])
    for ax, column, xlabel, shown in sides:
        for point in shown:
            label, acc, size, ci = point[0], point[2], point[column], point[4]
            marker = markers.get(label.split()[0], "o")
            color = colors[label]
            if ci is not None and label != "FP32":
                ax.errorbar(size, acc, yerr=ci, fmt="none", ecolor=color, capsize=4, zorder=2)
            ax.scatter(size, acc, s=60, marker=marker, color=color, label=label, zorder=3)
            ax.annotate(label, (size, acc), textcoords="offset points", xytext=(6, 4), fontsize=8)
        for acc in fp32:
            ax.axhline(acc, color="0.4", ls="--", lw=1, zorder=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.margins(x=0.2)
        ax.set_ylim(*limits)
    axes[0][0].set_title("Accuracy against file size")
    if packed:
        axes[0][1].set_title("Accuracy against packed size")
    caption = fig.text(0.5, 0.01, accuracy_size_caption(test_images or []), ha="center",
                       va="bottom", fontsize=8, wrap=True)  # fmt: skip
    caption.set_gid("caption")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
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


def wilson_interval(correct: int, count: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score 95 % interval (%) of an accuracy of `correct` out of `count`: a
    binomial interval that stays honest at 0 and 100 % (the normal one shrinks to nothing
    there); (nan, nan) without images."""
    if count <= 0:
        return math.nan, math.nan
    p = correct / count
    centre = (p + z * z / (2 * count)) / (1 + z * z / count)
    half = z * math.sqrt(p * (1 - p) / count + z * z / (4 * count * count)) / (1 + z * z / count)
    low = 0.0 if correct <= 0 else max(0.0, centre - half)  # exact at the ends, no rounding
    high = 1.0 if correct >= count else min(1.0, centre + half)
    return 100.0 * low, 100.0 * high


def per_class_caption(counts: Sequence[int]) -> str:
    known = sorted({int(n) for n in counts if n})
    if not known:
        return ""
    each = f"{known[0]:,}" if len(known) == 1 else f"{known[0]:,} - {known[-1]:,}"
    return (
        f"{each} test images per class: one image is {one_image_pp(known)} of a class's "
        "accuracy. Error bars: Wilson 95 % interval of each int8 model's accuracy in the class "
        "(binomial, from the confusion counts); a class's drop of a few images is within that "
        "noise (the whole test set's paired interval is the report's Drop 95% interval)."
    )


def per_class_figure(
    class_names: Sequence[str],
    fp32: list[float],
    models: list[tuple[str, list[float]]],
    counts: Sequence[int] | None = None,
) -> Figure:
    """Top: per-class accuracy of FP32 and each int8 model; bottom: each model's drop.

    `counts`: test images per class (confusion row sums). With them, each int8 bar of the top
    panel carries the Wilson 95 % interval of its accuracy (`wilson_interval`) and a caption
    says what one image is worth in each class."""
    x = np.arange(len(class_names))
    width = 0.8 / (1 + len(models))
    fig, (ax_acc, ax_drop) = plt.subplots(2, 1, figsize=(max(8.0, 0.8 * len(x) + 3), 7.5))
    ax_acc.bar(x - 0.4 + width / 2, fp32, width, label="FP32", color="0.45")
    for i, (label, acc) in enumerate(models, start=1):
        at = x - 0.4 + width * (i + 0.5)
        ax_acc.bar(at, acc, width, label=label, color=f"C{i - 1}")
        if counts is not None:
            bounds = [
                wilson_interval(round(a * n / 100.0), n) if n and not math.isnan(a) else (a, a)
                for a, n in zip(acc, counts, strict=True)
            ]
            below = [max(0.0, a - lo) for a, (lo, _) in zip(acc, bounds, strict=True)]
            above = [max(0.0, hi - a) for a, (_, hi) in zip(acc, bounds, strict=True)]
            yerr = np.array([below, above])
            ax_acc.errorbar(at, acc, yerr=yerr, fmt="none", ecolor="black", elinewidth=0.8,
                            capsize=2)  # fmt: skip
        drop = [f - a for f, a in zip(fp32, acc, strict=True)]
        ax_drop.bar(at, drop, width, label=label, color=f"C{i - 1}")
    for ax in (ax_acc, ax_drop):
        ax.set_xticks(x)
        ax.set_xticklabels(class_names, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    ax_drop.axhline(0, color="black", lw=0.8)
    ax_acc.set_ylabel("test accuracy (%)")
    bars = " (int8 error bars: Wilson 95 % interval)" if counts else ""
    ax_acc.set_title(f"Per-class test accuracy{bars}")
    ax_drop.set_ylabel("FP32 - int8 (pp)")
    ax_drop.set_xlabel("class")
    ax_drop.set_title("Per-class accuracy drop (positive: int8 loses)")
    caption = per_class_caption(counts or [])
    if caption:
        fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=8, wrap=True).set_gid(
            "caption"
        )
        fig.tight_layout(rect=(0, 0.05, 1, 1))
    else:
        fig.tight_layout()
    return fig
