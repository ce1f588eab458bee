"""`labquant-report <folder>`: rebuild a lab's report, an ablation sweep's table or a
quantization sweep's Pareto report, and every figure, from the results already in the folder;
nothing is trained or quantized.

The lab itself renders through `lab_rows` / `lab_notes` too, so a rebuild of an unchanged lab
writes report.md byte for byte as the lab did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labquant.errors import UserError
from labquant.reports.ablation import job_dirs, write_ablation
from labquant.reports.artifacts import completed_results, read_json
from labquant.reports.curves import plot_loss_accuracy
from labquant.reports.pareto import write_pareto
from labquant.reports.table import best_fp32, runtime_names, stage_row, write_lab_report

FIX = "pass a labquant-lab folder (its fp32/, ptq_*/, qat_*/ hold results.json) or a sweep folder"
QUANTIZE_STAGES = ("ptq", "qat")


def lab_rows(stage_results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """report.json rows: FP32 first (its CPU latency measured in the first int8 stage)."""
    first_quant = next((r for key, r in stage_results.items() if key != "fp32"), {})
    rows = []
    if "fp32" in stage_results:
        best = best_fp32(first_quant)
        fp32_latency = first_quant.get("fp32_latency")
        if best:  # the fastest FP32 path of the first int8 stage, per batch size
            fp32_latency = {"latency_b1_ms": best["b1"][1], "img_s_b256": best["b256"][1]}
        row = stage_row(stage_results["fp32"], "fp32", fp32_latency=fp32_latency)
        if best:
            paths = {best["b1"][0], best["b256"][0]}
            row["fp32_path"] = " / ".join(sorted(paths)) if len(paths) > 1 else best["b1"][0]
        rows.append(row)
    for key, results in stage_results.items():
        if key == "fp32":
            continue
        rows.append(stage_row(results, key))
        rows += [stage_row(results, key, runtime=name) for name in runtime_names(results)]
    return rows


def lab_notes(stage_results: dict[str, dict[str, Any]]) -> list[str]:
    """Notes from the stages' files only (no clock of the rebuild), so report.md is stable."""
    notes = []
    first_quant_dir = next((key for key in stage_results if key != "fp32"), None)
    if first_quant_dir is not None:
        notes.append(
            f"FP32 CPU figures measured in {first_quant_dir}/, side by side "
            "with its int8 model; latency is the median of repeated forward passes."
        )
        machines = {
            f"{r['cpu']['name']} ({r['cpu']['isa']})"
            for key, r in stage_results.items()
            if key != "fp32" and r.get("cpu")
        }
        if machines:  # int8 / FP32 ratios differ threefold between AVX2 and AVX-512 VNNI CPUs
            notes.append(f"CPU of the speed figures: {'; '.join(sorted(machines))}.")
    times = [
        f"{key} {results['wall_time_s']:.0f}"
        for key, results in stage_results.items()
        if results.get("wall_time_s") is not None
    ]
    if times:
        notes.append(f"Wall time per stage (s, from its results.json): {', '.join(times)}.")
    exported = [(key, r["export"]) for key, r in stage_results.items() if r.get("export")]
    notes += [bitexact_note(key, export) for key, export in exported]
    return notes


def with_export(stage_dir: Path, results: dict[str, Any]) -> dict[str, Any]:
    """A stage's results plus its labquant-export results (<stage>/export/), when it ran."""
    exported = completed_results(stage_dir / "export")
    return {**results, "export": exported} if exported else results


def bitexact_note(stage: str, results: dict[str, Any]) -> str:
    """One line of the lab report: the integer reference against torch's int8 model."""
    machine = results.get("isa") or {}  # labquant.machine.cpu(): name and ISA
    cpu = f"{machine.get('name')}, {machine.get('isa')}"
    return (
        f"{stage}/export: integer-only reference (hardware semantics, {results['rounding']}) "
        f"test acc {results['hw_test_acc']} % vs torch int8 {results['torch_test_acc']} %; "
        f"identical logits codes on {results['identical_images']} of {results['images']} images "
        f"({results['identical_images_without_saturation']} of "
        f"{results['images_without_saturation']} with no int16 pair saturation), top-1 "
        f"agreement {results['top1_agreement']} %, {results['saturated_outputs']} torch outputs "
        f"hit by u8 x s8 pair saturation on this CPU ({cpu}); shifts "
        f"{results['shifts']['min_shift']}..{results['shifts']['max_shift']}"
        + _emulation_note(results.get("avx2_emulation"))
    )


def _emulation_note(emulation: dict[str, Any] | None) -> str:
    if not emulation:
        return ""
    return (
        f"; the reference with AVX2 int16 pair saturation emulated matches torch on "
        f"{emulation['identical_images']} of the images (top-1 {emulation['top1_agreement']} %)"
    )


def _stage_order(stage_dir: Path, results: dict[str, Any]) -> tuple:
    return (results.get("stage") != "fp32", str(results.get("qconfig")), stage_dir.name)


def _is_lab_stage(name: str, results: dict[str, Any]) -> bool:
    """labquant-lab's stage folders: fp32/ and <mode>_<qconfig>/ (a sweep's jobs are 0/, 1/...)."""
    stage = results.get("stage")
    return "test_acc" in results and (name == stage == "fp32" or name.startswith(f"{stage}_"))


def lab_stage_results(lab_dir: Path) -> dict[str, dict[str, Any]]:
    """The complete stages of a lab folder: in report.json's order where it names them, the
    others after it (FP32 first, then by qconfig, PTQ before QAT)."""
    found = {
        path.parent.name: results
        for path in sorted(lab_dir.glob("*/results.json"))
        if (results := completed_results(path.parent)) is not None
        and _is_lab_stage(path.parent.name, results)
    }
    order: list[str] = []
    report = lab_dir / "report.json"
    if report.is_file():
        order = [row["dir"] for row in read_json(report).get("rows", []) if row["dir"] in found]
    rest = sorted(set(found) - set(order), key=lambda key: _stage_order(lab_dir / key, found[key]))
    return {key: with_export(lab_dir / key, found[key]) for key in [*order, *rest]}


def rebuild_stage_curves(lab_dir: Path, stage_results: dict[str, dict[str, Any]]) -> None:
    """Each trained stage's loss_accuracy.png from its metrics.csv, titled as the stage does."""
    for key, results in stage_results.items():
        metrics = lab_dir / key / "metrics.csv"
        if not metrics.is_file() or results.get("stage") == "ptq":
            continue
        model = results.get("model", "")
        qat = f"{model} QAT ({results.get('qconfig')})"
        title = f"{model} FP32" if results["stage"] == "fp32" else qat
        plot_loss_accuracy(metrics, lab_dir / key / "loss_accuracy.png", title=title)


def write_lab(lab_dir: Path, stage_results: dict[str, dict[str, Any]]) -> str:
    return write_lab_report(
        lab_dir, lab_rows(stage_results), stage_results, lab_notes(stage_results)
    )


def rebuild_report(folder: Path | str) -> Path:
    """Rebuild the report of a lab folder, of an ablation sweep folder (FP32 jobs: ablation.md)
    or of a quantization sweep folder (PTQ / QAT jobs: pareto.md); return the report."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"folder={folder} is not a folder; {FIX}")
    stage_results = lab_stage_results(folder)
    if stage_results:
        rebuild_stage_curves(folder, stage_results)
        write_lab(folder, stage_results)
        return folder / "report.md"
    complete = [r for job in job_dirs(folder) if (r := completed_results(job)) is not None]
    if any(results.get("stage") in QUANTIZE_STAGES for results in complete):
        write_pareto(folder)
        return folder / "pareto.md"
    if complete:
        write_ablation(folder)
        return folder / "ablation.md"
    raise UserError(f"folder={folder} holds no complete results.json; {FIX}")
