"""The lab folder's figures (accuracy_size.png, sqnr_layers.png, per_class.png) and the per-class
table, embedded in report.md; built only from the stages' results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labquant.reports.figures import (
    accuracy_size_caption,
    accuracy_size_figure,
    per_class_accuracy,
    per_class_caption,
    per_class_figure,
    save_figure,
    sqnr_layers_figure,
    stage_label,
)

ACCURACY_SIZE = "accuracy_size.png"
SQNR_LAYERS = "sqnr_layers.png"
PER_CLASS = "per_class.png"


def int8_stages(rows: list[dict[str, Any]], stage_results: dict[str, dict[str, Any]]) -> list:
    """(label, results) of every int8 row, in the table's order."""
    return [
        (stage_label(stage_results[row["dir"]]), stage_results[row["dir"]])
        for row in rows
        if row["stage"] != "fp32" and row["dir"] in stage_results and not row.get("runtime")
    ]


def tested_images(
    rows: list[dict[str, Any]], stage_results: dict[str, dict[str, Any]]
) -> list[int]:
    """The test-set sizes the rows were measured on (results.json `test_images`; one in a lab)."""
    sizes = {stage_results.get(row["dir"], {}).get("test_images") for row in rows}
    return sorted(int(n) for n in sizes if n)


def per_class_table(
    rows: list[dict[str, Any]], stage_results: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """Per-class test images, FP32 accuracy and each int8 model's accuracy and drop (pp); the
    FP32 reference of each drop is the CPU FP32 evaluation of the same stage (as acc_drop)."""
    models = [
        (label, results)
        for label, results in int8_stages(rows, stage_results)
        if (results.get("confusion") or {}).get("int8")
    ]
    if not models:
        return None
    counts, fp32 = per_class_accuracy(models[0][1]["confusion"]["fp32"])
    names = models[0][1].get("class_names") or [str(i) for i in range(len(counts))]
    table: dict[str, Any] = {"classes": list(names), "counts": counts, "fp32": fp32, "models": []}
    for label, results in models:
        _, reference = per_class_accuracy(results["confusion"]["fp32"])
        _, acc = per_class_accuracy(results["confusion"]["int8"])
        drop = [round(f - a, 6) for f, a in zip(reference, acc, strict=True)]
        table["models"].append({"label": label, "acc": acc, "drop": drop})
    return table


def per_class_markdown(table: dict[str, Any]) -> list[str]:
    header = ["class", "test images", "FP32 (%)"]
    for model in table["models"]:
        header += [f"{model['label']} (%)", f"{model['label']} drop (pp)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, name in enumerate(table["classes"]):
        cells = [name, str(table["counts"][i]), f"{table['fp32'][i]:.2f}"]
        for model in table["models"]:
            cells += [f"{model['acc'][i]:.2f}", f"{model['drop'][i]:+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_lab_figures(
    lab_dir: Path, rows: list[dict[str, Any]], stage_results: dict[str, dict[str, Any]]
) -> dict[str, list[str]]:
    """Write the three lab figures; return report.md sections by name (markdown lines)."""
    lab_dir = Path(lab_dir)
    sections: dict[str, list[str]] = {}
    shown = [row for row in rows if not row.get("runtime")]
    points = [
        (
            stage_label(stage_results.get(row["dir"], row)),
            row["size_mib"],
            row["test_acc"],
            row.get("packed_size_mib"),
            row.get("acc_drop_ci95") if row["stage"] != "fp32" else None,
        )
        for row in shown
    ]
    images = tested_images(shown, stage_results)
    save_figure(accuracy_size_figure(points, images), lab_dir / ACCURACY_SIZE)
    sections["accuracy_size"] = [
        f"![Test accuracy against model file size and packed size, one point per row, each "
        f"int8 point with the 95 % interval of its drop]({ACCURACY_SIZE})",
        "",
        accuracy_size_caption(images),
        "",
    ]
    models = [
        (label, r["layers"]) for label, r in int8_stages(rows, stage_results) if r.get("layers")
    ]
    if models:
        save_figure(sqnr_layers_figure(models), lab_dir / SQNR_LAYERS)
        sections["sqnr"] = [
            "## Per-layer SQNR",
            "",
            f"![Per-layer SQNR of each int8 model against FP32]({SQNR_LAYERS})",
            "",
        ]
    table = per_class_table(rows, stage_results)
    if table is not None:
        accuracies = [(m["label"], m["acc"]) for m in table["models"]]
        fig = per_class_figure(table["classes"], table["fp32"], accuracies, counts=table["counts"])
        save_figure(fig, lab_dir / PER_CLASS)
        sections["per_class"] = [
            "## Per-class test accuracy",
            "",
            f"![Per-class test accuracy of FP32 and each int8 model, and the drop]({PER_CLASS})",
            "",
            *per_class_markdown(table),
            "",
            "Drop = FP32 - int8 accuracy of the class in percentage points, FP32 evaluated on "
            "the CPU beside each int8 model; confusion matrices are in each stage's "
            "results.json (`confusion`). " + per_class_caption(table["counts"]),
            "",
        ]
    return sections
