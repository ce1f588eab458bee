"""The lab's comparison table (FP32 / PTQ / QAT), built only from the stages' results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labquant.reports.artifacts import write_json, write_text
from labquant.reports.lab_figures import write_lab_figures

COLUMNS = (
    ("Model", "label"),
    ("Size (MiB)", "size_mib"),
    ("Accuracy (%)", "test_acc"),
    ("Accuracy Drop (pp)", "acc_drop"),
    ("CPU latency batch 1 (ms)", "latency_b1_ms"),
    ("CPU img/s batch 256", "img_s_b256"),
    ("qconfig", "qconfig"),
)


def worst_layers(layers: list[dict[str, Any]], count: int = 5) -> list[dict[str, Any]]:
    """The layers with the lowest SQNR against FP32: where quantization hurts most."""
    return sorted(layers, key=lambda layer: layer["sqnr_db"])[:count]


def stage_row(
    results: dict[str, Any], stage_dir: str, fp32_latency: dict[str, float] | None = None
) -> dict[str, Any]:
    """One report.json row; FP32 latency comes from a quantization stage, measured beside int8."""
    latency = results.get("latency") or fp32_latency or {}
    return {
        "stage": results["stage"],
        "qconfig": results.get("qconfig"),
        "size_mib": results["size_mib"],
        "test_acc": results["test_acc"],
        "acc_drop": results.get("acc_drop", 0.0),
        "latency_b1_ms": latency.get("latency_b1_ms"),
        "img_s_b256": latency.get("img_s_b256"),
        "dir": stage_dir,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = {**row, "label": row["stage"].upper()}
        lines.append("| " + " | ".join(_cell(cells.get(key)) for _, key in COLUMNS) + " |")
    return "\n".join(lines)


def write_lab_report(
    lab_dir: Path,
    rows: list[dict[str, Any]],
    stage_results: dict[str, dict[str, Any]],
    notes: list[str],
) -> str:
    """report.json (`{"rows": [...]}`) and report.md: the table, figures, worst layers,
    per-class damage, curves, notes. Only files go in, so a rebuild is byte-identical."""
    lab_dir = Path(lab_dir)
    write_json(lab_dir / "report.json", {"rows": rows})
    figures = write_lab_figures(lab_dir, rows, stage_results)
    parts = ["# labquant report", "", markdown_table(rows), ""]
    fp32_acc = next((r["test_acc"] for r in rows if r["stage"] == "fp32"), None)
    if fp32_acc is not None:
        parts += [
            f"Accuracy drop = FP32 test accuracy ({fp32_acc:.2f} %) - int8 test accuracy, "
            "both measured on the CPU on the same test set.",
            "",
        ]
    parts += figures.get("accuracy_size", []) + figures.get("sqnr", [])
    for row in rows:
        results = stage_results.get(row["dir"], {})
        layers = results.get("layers") or []
        if not layers:
            continue
        worst = worst_layers(layers)
        parts += [
            f"## Five worst layers, {row['stage'].upper()} {row['qconfig']} (SQNR vs FP32)",
            "",
        ]
        parts += [
            "| layer | SQNR (dB) | activation scale | clamp (act / weight) |",
            "|---|---|---|---|",
        ]
        for layer in worst:
            clamp = layer.get("clamp") or {}
            parts.append(
                f"| {layer['name']} | {layer['sqnr_db']:.2f} | {layer['scale']:.6g} | "
                f"{clamp.get('activation') or '-'} / {clamp.get('weight') or '-'} |"
            )
        hits = [
            layer["name"] for layer in layers if "flow" in str((layer.get("clamp") or {}).values())
        ]
        parts += ["", f"Shift clamp hit in: {', '.join(hits) if hits else 'no layer'}.", ""]
    parts += figures.get("per_class", [])
    curves = [
        f"![{' '.join(filter(None, [row['stage'].upper(), row['qconfig']]))} loss and accuracy "
        f"per epoch]({row['dir']}/loss_accuracy.png)\n"
        for row in rows
        if (lab_dir / row["dir"] / "loss_accuracy.png").exists()
    ]
    if curves:
        parts += ["## Curves", "", *curves, ""]
    if notes:
        parts += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    text = "\n".join(parts)
    write_text(lab_dir / "report.md", text)
    return text
