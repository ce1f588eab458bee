"""The lab's comparison table (FP32 / PTQ / QAT), built only from the stages' results.json."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from labquant.reports.artifacts import write_json, write_text
from labquant.reports.lab_figures import write_lab_figures
from labquant.speed import best_fp32_speed

COLUMNS = (
    ("Model", "label"),
    ("Backend", "backend"),
    ("Size (MiB)", "size_mib"),
    ("Packed (MiB)", "packed_size_mib"),
    ("GBitOps", "gbitops"),
    ("Bits W/A", "bits"),
    ("Accuracy (%)", "test_acc"),
    ("Accuracy Drop (pp)", "acc_drop"),
    ("Drop 95% interval (pp)", "acc_drop_ci95"),
    ("CPU latency batch 1 (ms)", "latency_b1_ms"),
    ("vs best FP32, batch 1", "speedup_b1"),
    ("CPU img/s batch 256", "img_s_b256"),
    ("vs best FP32, batch 256", "speedup_b256"),
    ("qconfig", "qconfig"),
)


def worst_layers(layers: list[dict[str, Any]], count: int = 5) -> list[dict[str, Any]]:
    """The layers with the lowest SQNR against FP32: where quantization hurts most."""
    return sorted(layers, key=lambda layer: layer["sqnr_db"])[:count]


def best_fp32(results: dict[str, Any]) -> dict[str, Any]:
    """The fastest FP32 path a stage measured beside its int8 model, per batch size:
    {"b1": (path, ms), "b256": (path, img/s)}, by labquant.speed's rule (the bench's); older
    results know eager FP32 only."""
    paths = results.get("fp32_latencies") or (
        {"eager": results["fp32_latency"]} if results.get("fp32_latency") else {}
    )
    return best_fp32_speed(paths)


def stage_row(
    results: dict[str, Any],
    stage_dir: str,
    fp32_latency: dict[str, float] | None = None,
    runtime: str | None = None,
) -> dict[str, Any]:
    """One report.json row; FP32 latency comes from a quantization stage, measured beside int8.

    `runtime`: the row of the stage's artifact run by another runtime (pt2e: `onnxruntime`).
    int8 rows carry their speed against the best FP32 path of the same stage (`speedup_b1`:
    best FP32 latency / int8 latency; `speedup_b256`: int8 img/s / best FP32 img/s; below 1:
    int8 is slower than FP32 deployed well)."""
    latency = results.get(f"{runtime}_latency" if runtime else "latency") or fp32_latency or {}
    test_acc = results[f"{runtime}_test_acc"] if runtime else results["test_acc"]
    row = {
        "stage": results["stage"],
        "backend": results.get("backend"),
        "runtime": runtime,
        "qconfig": results.get("qconfig"),
        "size_mib": results["size_mib"],
        # The weights at their declared width plus biases, shifts and zero points (quant/layers).
        "packed_size_mib": results.get("packed_size_mib"),
        "bits": bits_label(results),
        "gbitops": round(results["bitops"] / 1e9, 3) if results.get("bitops") else None,
        "test_acc": test_acc,
        "acc_drop": round(results["fp32_test_acc"] - test_acc, 4)
        if runtime
        else results.get("acc_drop", 0.0),
        "acc_drop_ci95": results.get(f"{runtime}_acc_drop_ci95" if runtime else "acc_drop_ci95"),
        "latency_b1_ms": latency.get("latency_b1_ms"),
        "img_s_b256": latency.get("img_s_b256"),
        "dir": stage_dir,
    }
    best = best_fp32(results)
    if best and results["stage"] != "fp32" and row["latency_b1_ms"]:
        row["speedup_b1"] = round(best["b1"][1] / row["latency_b1_ms"], 2)
        row["speedup_b256"] = round(row["img_s_b256"] / best["b256"][1], 2)
        row["fp32_best"] = {"b1": best["b1"][0], "b256": best["b256"][0]}
    return row


def bits_label(results: dict[str, Any]) -> str | None:
    """`W4/A8` (`W4pc/A8` with per-channel weights, as the lab report writes it), or for a
    mixed-precision qconfig `mixed (W4/A8 + 3 layers)`: the defaults and the layers that
    `layer_bits` gives other widths."""
    weight, activation = results.get("weight_bits"), results.get("activation_bits")
    if weight is None or activation is None:
        return None
    per_channel = "pc" if results.get("granularity") == "per_channel" else ""
    widths = f"W{weight}{per_channel}/A{activation}"
    layer_bits = results.get("layer_bits")
    if not layer_bits:
        return widths
    names = [layer["name"] for layer in results.get("layers") or [] if "name" in layer]
    if names:
        count = sum(any(fnmatchcase(name, pattern) for pattern in layer_bits) for name in names)
        return f"mixed ({widths} + {count} layer{'' if count == 1 else 's'})"
    count = len(layer_bits)
    return f"mixed ({widths} + {count} layer_bits entr{'y' if count == 1 else 'ies'})"


def runtime_names(results: dict[str, Any]) -> list[str]:
    """Other runtimes a stage tested its artifact in (`<name>_test_acc` in results.json)."""
    return [key[: -len("_test_acc")] for key in results if key.endswith("_test_acc")
            and key not in ("fp32_test_acc", "torch_test_acc", "hw_test_acc")]  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _label(row: dict[str, Any]) -> str:
    label = row["stage"].upper()
    if row["stage"] == "fp32" and row.get("fp32_path"):
        return f"{label} ({row['fp32_path']})"
    return f"{label} ({row['runtime']})" if row.get("runtime") else label


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.3f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = {**row, "label": _label(row)}
        for key in ("speedup_b1", "speedup_b256"):
            if cells.get(key) is not None:
                cells[key] = f"{cells[key]:.2f}x"
        if cells.get("acc_drop_ci95") is not None:
            cells["acc_drop_ci95"] = f"±{cells['acc_drop_ci95']:.2f}"
        lines.append("| " + " | ".join(_cell(cells.get(key)) for _, key in COLUMNS) + " |")
    return "\n".join(lines)


def speed_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What the speed columns compare against, and every int8 row slower than it, plainly."""
    notes = []
    compared = [row for row in rows if row.get("fp32_best")]
    if not compared:
        return notes
    paths = sorted({f"{r['fp32_best']['b1']} (batch 1) / {r['fp32_best']['b256']} (batch 256)"
                    for r in compared})  # fmt: skip
    notes.append(
        "Speed columns: each int8 row against the FASTEST FP32 path measured in the same "
        f"stage (eager, torch.compile, ONNX Runtime when installed); fastest: {'; '.join(paths)}."
    )
    for key, batch in (("speedup_b1", "batch 1"), ("speedup_b256", "batch 256")):
        slower = [f"{_label(r)} {r.get('qconfig')}/{r.get('backend')}" for r in compared
                  if r.get(key) is not None and r[key] < 1.0]  # fmt: skip
        if slower:
            notes.append(
                f"Slower than the best FP32 path at {batch}: {', '.join(slower)} (int8 is "
                "not faster than FP32 there on this CPU)."
            )
    return notes


def worst_layers_section(row: dict[str, Any], layers: list[dict[str, Any]]) -> list[str]:
    """report.md's section on one stage's five lowest-SQNR layers (their clamps and clipping)
    and the layers whose shift clamp was hit: where to look first when int8 loses accuracy."""
    parts = [
        f"## Five worst layers, {row['stage'].upper()} {row['qconfig']} "
        f"{row.get('backend') or ''} (SQNR vs FP32)",
        "",
        "| layer | SQNR (dB) | weight SQNR (dB) | activation scale | clamp (act / weight) "
        "| clipped % (act / weight) |",
        "|---|---|---|---|---|---|",
    ]
    for layer in worst_layers(layers):
        clamp = layer.get("clamp") or {}
        parts.append(
            f"| {layer['name']} | {layer['sqnr_db']:.2f} | "
            f"{_cell(layer.get('weight_sqnr_db'))} | {layer['scale']:.6g} | "
            f"{clamp.get('activation') or '-'} / {clamp.get('weight') or '-'} | "
            f"{_percent(layer.get('clip_fraction'))} / "
            f"{_percent(layer.get('weight_clip_fraction'))} |"
        )
    hits = [layer["name"] for layer in layers if "flow" in str((layer.get("clamp") or {}).values())]
    return [*parts, "", f"Shift clamp hit in: {', '.join(hits) if hits else 'no layer'}.", ""]


def curve_lines(lab_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """One loss / accuracy figure link per stage that left one: a runtime row (ORT) shares its
    stage's training curve, so it adds none."""
    return [
        f"![{' '.join(filter(None, [row['stage'].upper(), row['qconfig'], row.get('backend')]))} "
        f"loss and accuracy per epoch]({row['dir']}/loss_accuracy.png)\n"
        for row in rows
        if not row.get("runtime") and (lab_dir / row["dir"] / "loss_accuracy.png").exists()
    ]


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
            "both measured on the CPU on the same test set. Its 95 % interval comes from the "
            "per-image differences (paired): the images only one of the two models gets right. "
            "A drop target smaller than that interval cannot be told apart on this test set. "
            "Size is the int8 file; Packed is what a hardware memory would hold: the weights at "
            "their declared width, int32 biases, one-byte shifts and zero points; GBitOps: "
            "multiply-accumulates x weight bits x input bits per image, in 10^9.",
            "",
        ]
    parts += figures.get("accuracy_size", []) + figures.get("sqnr", [])
    for row in rows:
        layers = [] if row.get("runtime") else stage_results.get(row["dir"], {}).get("layers")
        if layers:
            parts += worst_layers_section(row, layers)
    parts += figures.get("per_class", [])
    curves = curve_lines(lab_dir, rows)
    if curves:
        parts += ["## Curves", "", *curves, ""]
    notes = speed_notes(rows) + notes
    if notes:
        parts += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    text = "\n".join(parts)
    write_text(lab_dir / "report.md", text)
    return text
