"""The quantization sweep's Pareto report: one row per PTQ / QAT job of a multirun over one FP32
checkpoint, read from the jobs' own files, with the jobs no other job beats on accuracy for
less packed size (or fewer BitOps) marked.

`pareto.md`, `pareto.csv` and `pareto.png` land in the sweep folder. A Hydra callback rebuilds
them after every job (so a failing or killed job never loses the rows before it) and once more
at the end of the multirun; `labquant-report <sweep folder>` rebuilds them from the files, byte
for byte (no clock, no absolute path, a PNG without a Software tag).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from omegaconf import OmegaConf

from labquant.config.resolvers import register_resolvers
from labquant.reports.ablation import SweepReportCallback, job_dirs
from labquant.reports.artifacts import read_json, write_atomic, write_csv, write_text
from labquant.reports.table import bits_label

PARETO_MD = "pareto.md"
PARETO_CSV = "pareto.csv"
PARETO_PNG = "pareto.png"
DPI = 110
# PNG text chunks matplotlib would add (its version): left out so a rebuild is byte-identical.
PNG_METADATA: dict[str, Any] = {"Software": None}

# (markdown title, row key); the CSV header is the keys.
COLUMNS = (
    ("#", "job"),
    ("qconfig", "qconfig"),
    ("stage", "stage"),
    ("backend", "backend"),
    ("bits W/A", "bits"),
    ("test acc (%)", "test_acc"),
    ("drop (pp)", "acc_drop"),
    ("95% interval (pp)", "acc_drop_ci95"),
    ("packed (MiB)", "packed_size_mib"),
    ("GBitOps", "gbitops"),
    ("Pareto size", "pareto_size"),
    ("Pareto BitOps", "pareto_bitops"),
    ("status", "status"),
)
CSV_FIELDS = (*(key for _, key in COLUMNS), "fp32_test_acc")
MISSING = "FAILED: no results.json (killed or still running)"


def _known(value: float | None) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def pareto_optimal(points: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """Which (cost, accuracy) points no other point dominates (cost <= and accuracy >=, one of
    them strictly). A point with a None (or NaN) cost or accuracy is never optimal and dominates
    nothing; equal points are all optimal."""
    known = [(c, a) if _known(c) and _known(a) else None for c, a in points]
    marks = []
    for point in known:
        if point is None:
            marks.append(False)
            continue
        cost, acc = point
        dominated = any(
            other is not None
            and other[0] <= cost
            and other[1] >= acc
            and (other[0] < cost or other[1] > acc)
            for other in known
        )
        marks.append(not dominated)
    return marks


def _job_settings(job_dir: Path) -> dict[str, Any]:
    """qconfig, stage and backend of a job from its Hydra files, for a job without results."""
    register_resolvers()  # the saved configs may use ${lq.*}
    cfg = OmegaConf.load(job_dir / ".hydra/config.yaml")
    settings = {
        "qconfig": OmegaConf.select(cfg, "qconfig.name", default=None),
        "stage": OmegaConf.select(cfg, "quant.mode", default=None),
        "backend": None,
    }
    hydra_yaml = job_dir / ".hydra/hydra.yaml"
    if hydra_yaml.is_file():
        hydra_cfg = OmegaConf.load(hydra_yaml)
        choices = OmegaConf.select(hydra_cfg, "hydra.runtime.choices", default=None) or {}
        settings["backend"] = choices.get("backend")
        settings["qconfig"] = settings["qconfig"] or choices.get("qconfig")
    return settings


def _read_results(job_dir: Path) -> dict[str, Any] | None:
    path = job_dir / "results.json"
    if not path.is_file():
        return None
    try:
        results = read_json(path)
    except ValueError:
        return {"status": "failed", "error": "results.json is not valid JSON"}
    return results if isinstance(results, dict) else {"status": "failed", "error": "bad results"}


def job_row(job_dir: Path) -> dict[str, Any]:
    """One job's row (Pareto marks not set yet)."""
    results = _read_results(job_dir)
    complete = results is not None and results.get("status") == "complete"
    if complete:
        status = "ok"
        settings = {key: results.get(key) for key in ("qconfig", "stage", "backend")}
    else:
        if results is None:
            status = MISSING
        else:
            status = f"FAILED: {results.get('error', results.get('status', '?'))}"
        settings = _job_settings(job_dir)
        results = {}
    bitops = results.get("bitops")
    return {
        "job": job_dir.name,
        **settings,
        "bits": bits_label(results),
        "test_acc": results.get("test_acc"),
        "acc_drop": results.get("acc_drop"),
        "acc_drop_ci95": results.get("acc_drop_ci95"),
        "packed_size_mib": results.get("packed_size_mib"),
        "gbitops": round(bitops / 1e9, 3) if bitops is not None else None,
        "pareto_size": None,
        "pareto_bitops": None,
        "status": status,
        "complete": complete,
        "fp32_test_acc": results.get("fp32_test_acc"),
        "fp32_checkpoint": results.get("fp32_checkpoint"),  # compared, never written
    }


def mark_pareto(rows: list[dict[str, Any]]) -> None:
    """Set each complete row's Pareto marks (True / False) among the complete rows only; None
    where the row is incomplete or lacks that cost or its accuracy."""
    complete = [row for row in rows if row["complete"]]
    for key, cost in (("pareto_size", "packed_size_mib"), ("pareto_bitops", "gbitops")):
        marks = pareto_optimal([(row[cost], row["test_acc"]) for row in complete])
        for row, mark in zip(complete, marks, strict=True):
            known = _known(row[cost]) and _known(row["test_acc"])
            row[key] = mark if known else None


def sweep_rows(sweep_dir: Path | str) -> list[dict[str, Any]]:
    """One row per job folder of the sweep, in job order, Pareto marks included."""
    rows = [job_row(job_dir) for job_dir in job_dirs(Path(sweep_dir))]
    mark_pareto(rows)
    return rows


def _number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key in ("pareto_size", "pareto_bitops"):
        return "yes" if value else "no"
    if key == "acc_drop_ci95":
        return f"±{value:.2f}"
    if key in ("packed_size_mib", "gbitops"):
        return _number(value, 4)
    if isinstance(value, float):
        return _number(value, 2)
    return " ".join(str(value).split()).replace("|", "/")  # one line in a table cell


def _fp32_values(rows: list[dict[str, Any]], key: str) -> dict[Any, list[str]]:
    """Each distinct value of `key` among the complete rows -> the jobs that have it."""
    values: dict[Any, list[str]] = {}
    for row in rows:
        if row["complete"] and row.get(key) is not None:
            values.setdefault(row[key], []).append(row["job"])
    return values


def _groups(values: dict[Any, list[str]]) -> str:
    return "; ".join(f"job{'s' * (len(jobs) > 1)} {', '.join(jobs)}" for jobs in values.values())


def notes(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "Pareto size / Pareto BitOps: yes = no other complete job of this sweep has a packed "
        "size (resp. BitOps per image) <= and a test accuracy >= with one of them strictly "
        "better; no = some job beats it; - = not complete, or the cost is unknown.",
        "95% interval: half-width of the paired 95 % interval of the drop against the FP32 "
        "model on the same test images (both models tested on every image).",
        "Packed: the weights at their width plus biases, shifts and zero points; GBitOps: "
        "multiply-accumulates x weight bits x input bits per image, summed over the layers, / 1e9.",
    ]
    accs = _fp32_values(rows, "fp32_test_acc")
    if len(accs) == 1:
        lines.append(f"FP32 test accuracy: {_number(next(iter(accs)), 2)} %.")
    elif accs:
        shown = ", ".join(_number(acc, 2) for acc in sorted(accs))
        lines.append(f"FP32 test accuracies: {shown} %.")
    checkpoints = _fp32_values(rows, "fp32_checkpoint")
    if len(checkpoints) > 1:
        lines.append(
            f"WARNING: the jobs start from {len(checkpoints)} different FP32 checkpoints "
            f"({_groups(checkpoints)}: see fp32_checkpoint in their results.json); the rows "
            "do not compare one network."
        )
    if len(accs) > 1:
        lines.append(
            f"WARNING: the jobs measured {len(accs)} different FP32 test accuracies "
            f"({_groups(accs)}); their drops are against different references."
        )
    return lines


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_cell(row, key) for _, key in COLUMNS) + " |" for row in rows]
    body = ["# Quantization sweep: accuracy against packed size and BitOps", "", *lines, ""]
    return "\n".join([*body, *(f"- {note}" for note in notes(rows)), ""])


def point_labels(rows: list[dict[str, Any]]) -> list[str]:
    """qconfig, plus the stage (and backend) when the sweep mixes them."""
    stages = {row["stage"] for row in rows}
    backends = {row["backend"] for row in rows}
    labels = []
    for row in rows:
        parts = [str(row["qconfig"])]
        if len(stages) > 1:
            parts.append(str(row["stage"]))
        if len(backends) > 1:
            parts.append(str(row["backend"]))
        labels.append(" ".join(parts))
    return labels


def _panel(ax: Any, rows: list[dict[str, Any]], labels: list[str], cost: str, mark: str) -> None:
    """One panel: the rows with a known `cost` (their `mark` is not None) against accuracy."""
    shown = [(row, label) for row, label in zip(rows, labels, strict=True) if row[mark] is not None]
    at: dict[tuple[float, float], list[str]] = {}  # equal points: one label naming them all
    for row, label in shown:
        ci = row["acc_drop_ci95"]
        ax.errorbar(
            row[cost],
            row["test_acc"],
            yerr=ci if ci is not None else None,
            fmt="o",
            ms=7,
            color="C0",
            mfc="C0" if row[mark] else "white",
            capsize=3,
            zorder=3,
        )
        at.setdefault((row[cost], row["test_acc"]), []).append(label)
    for xy, names in at.items():
        text = ", ".join(names)
        ax.annotate(text, xy, textcoords="offset points", xytext=(6, 4), fontsize=8)
    front = sorted((row[cost], row["test_acc"]) for row, _ in shown if row[mark])
    if front:
        xs, ys = zip(*front, strict=True)
        ax.step(xs, ys, where="post", color="C0", alpha=0.6, zorder=2)
    if not shown:
        ax.text(0.5, 0.5, "no complete job yet", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    ax.margins(x=0.2, y=0.15)


def pareto_figure(rows: list[dict[str, Any]]) -> Figure:
    """Test accuracy against packed size (left) and against GBitOps (right) of every complete
    job: error bars ±acc_drop_ci95, Pareto-optimal points filled and joined by a step line,
    dominated ones hollow, the FP32 test accuracy dashed."""
    complete = [row for row in rows if row["complete"]]
    labels = point_labels(complete)
    fig, (ax_size, ax_ops) = plt.subplots(1, 2, figsize=(13, 5.5))
    panels = (
        (ax_size, "packed_size_mib", "pareto_size", "packed size (MiB)", "packed size"),
        (ax_ops, "gbitops", "pareto_bitops", "GBitOps per image", "BitOps"),
    )
    fp32 = sorted(_fp32_values(rows, "fp32_test_acc"))
    for ax, cost, mark, xlabel, name in panels:
        _panel(ax, complete, labels, cost, mark)
        for acc in fp32:
            ax.axhline(acc, color="0.4", ls="--", lw=1, zorder=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Test accuracy against {name}")
    handles = [
        Line2D([], [], color="C0", marker="o", mfc="C0", ls="-", label="Pareto-optimal (front)"),
        Line2D([], [], color="C0", marker="o", mfc="white", ls="", label="dominated"),
        Line2D([], [], color="0.4", ls="--", label="FP32 test accuracy"),
    ]
    ax_size.legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle("Quantization sweep (error bars: paired 95 % interval of the drop vs FP32)")
    fig.tight_layout()
    return fig


def write_figure(rows: list[dict[str, Any]], out_png: Path) -> None:
    fig = pareto_figure(rows)
    save = dict(dpi=DPI, format="png", metadata=PNG_METADATA)
    write_atomic(out_png, lambda tmp: fig.savefig(tmp, **save))
    plt.close(fig)


def write_pareto(sweep_dir: Path | str) -> list[dict[str, Any]]:
    """pareto.md, pareto.csv and pareto.png in the sweep folder; returns the rows."""
    sweep_dir = Path(sweep_dir)
    rows = sweep_rows(sweep_dir)
    write_text(sweep_dir / PARETO_MD, markdown(rows))
    write_csv(sweep_dir / PARETO_CSV, rows, CSV_FIELDS)
    write_figure(rows, sweep_dir / PARETO_PNG)
    return rows


class ParetoCallback(SweepReportCallback):
    """Keeps a quantization sweep's Pareto report current (multirun only)."""

    write = staticmethod(write_pareto)
