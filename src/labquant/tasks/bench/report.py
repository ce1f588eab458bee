"""Targets checked against bench.json, and the bench.md / console table built from them."""

from __future__ import annotations

import operator
import os
from typing import Any

import torch

from labquant.errors import ConfigError
from labquant.machine import cpu

_OPERATORS = {">=": operator.ge, "<=": operator.le}


def machine() -> dict[str, Any]:
    """Where the figures come from: absolute numbers mean nothing without it."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    processor = cpu()
    return {
        "cpu": processor["name"],
        "isa": processor["isa"],
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "quantized_engines": list(torch.backends.quantized.supported_engines),
    }


def parse_target(target: str) -> tuple[str, str, float]:
    """'inference.small.int8_speedup_b1 >= 2' -> (key, '>=', 2.0)."""
    parts = target.split()
    if len(parts) != 3 or parts[1] not in _OPERATORS:
        raise ConfigError(
            f"bench target {target!r} must read '<json.key> >= <number>' or '... <= <number>'"
        )
    try:
        return parts[0], parts[1], float(parts[2])
    except ValueError:
        raise ConfigError(f"bench target {target!r}: {parts[2]!r} is not a number") from None


def lookup(results: dict[str, Any], key: str) -> Any:
    node: Any = results
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check_targets(results: dict[str, Any], targets: list[str]) -> list[dict[str, Any]]:
    """One row per target; `met` is None where its section did not run (e.g. no GPU)."""
    rows = []
    for target in targets:
        key, op, bound = parse_target(target)
        value = lookup(results, key)
        met = None if value is None else bool(_OPERATORS[op](value, bound))
        rows.append({"figure": key, "value": value, "target": f"{op} {bound:g}", "met": met})
    return rows


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "not run"}[met]


def target_rows(results: dict[str, Any]) -> list[list[str]]:
    return [
        [
            row["figure"],
            "-" if row["value"] is None else f"{row['value']:g}",
            row["target"],
            _verdict(row["met"]),
        ]
        for row in results["targets"]
    ]


def _img_s(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _columns(inference: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(model, batch, that batch's row) for every measured model and batch size."""
    return [
        (model, b, row[b])
        for model, row in inference.items()
        if isinstance(row, dict)
        for b in ("b1", "b256")
        if isinstance(row.get(b), dict) and "fp32_best" in row[b]
    ]


def _paths(columns: list[tuple[str, str, dict[str, Any]]], kind: str) -> list[str]:
    names: dict[str, None] = {}
    for _, _, row in columns:
        names.update(dict.fromkeys(row.get(kind, {})))
    return list(names)


def _int8_cell(row: dict[str, Any], name: str) -> str:
    if name not in row.get("int8", {}):
        return "-"
    cell = f"{_img_s(row['int8'][name])} ({row['speedup'][name]:.2f}x"
    if name in row.get("of_kernel", {}):
        cell += f"; {row['of_kernel'][name]:.2f} of kernel"
    return cell + ")"


def deploy_lines(inference: dict[str, Any], isa: str) -> list[str]:
    """Which int8 path to ship per qconfig on this CPU kind: the fastest contender of that
    qconfig, per model and batch size, with its speedup over the best FP32 path."""
    lines = [f"Deploy on this CPU ({isa}): the fastest int8 path per qconfig."]
    for model, row in inference.items():
        if not isinstance(row, dict):
            continue
        for b in ("b1", "b256"):
            picks = row.get(f"deploy_{b}")
            if not picks:
                continue
            cells = ", ".join(
                f"{q}: {path} ({row[b]['speedup'][path]:.2f}x)" for q, path in picks.items()
            )
            lines.append(f"- {model} {b}: {cells}")
    return lines if len(lines) > 1 else []


def inference_table(inference: dict[str, Any], isa: str) -> list[str]:
    """bench.md's inference part: the ISA and kernel ratio, one column per model and batch,
    one row per path, and a plain list of the int8 paths slower than the best FP32 path."""
    columns = _columns(inference)
    if not columns:
        return []
    kernel = inference.get("kernel")
    lines = ["## Inference on the CPU, img/s", "", f"CPU ISA: **{isa}**; "]
    if kernel:
        lines[-1] += (
            f"kernel ratio ({kernel['shape']}): int8 runs **{kernel['int8_over_fp32']:.2f}x** "
            f"FP32 ({kernel['int8_best']} vs {kernel['fp32_best']}). "
        )
    limits = [inference[model].get("kernel", {}).get(b) for model, b, _ in columns]
    own = any(limits)
    lines[-1] += "int8 cells: img/s (speedup over the best FP32 path" + (
        "; that speedup as a fraction of the model's own kernel limit at that batch)."
        if own
        else ")."
    )
    lines += [
        "",
        "| path | " + " | ".join(f"{model} {b}" for model, b, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    if own:
        cells = [
            f"{limit['int8_over_fp32']:.2f}x ({limit['convs']} convs)" if limit else "-"
            for limit in limits
        ]
        lines.append(
            "| kernel limit: the model's convs alone, int8 / FP32 | " + " | ".join(cells) + " |"
        )
    for path in _paths(columns, "fp32"):
        cells = [_img_s(row["fp32"][path]) if path in row["fp32"] else "-" for *_, row in columns]
        lines.append(f"| FP32 {path} | " + " | ".join(cells) + " |")
    best = [f"{row['fp32_best_path']} ({_img_s(row['fp32_best'])})" for *_, row in columns]
    lines.append("| **best FP32** | " + " | ".join(best) + " |")
    for name in _paths(columns, "int8"):
        lines.append(
            f"| int8 {name} | " + " | ".join(_int8_cell(row, name) for *_, row in columns) + " |"
        )
    slower = []
    for model, b, row in columns:
        names = [
            f"{n} {row['speedup'][n]:.2f}x" for n in row.get("int8", {}) if row["speedup"][n] < 1
        ]
        if names:
            slower.append(f"{model} {b} (vs {row['fp32_best_path']}): {', '.join(names)}")
    lines += ["", *deploy_lines(inference, isa), ""]
    if slower:
        lines.append("int8 is SLOWER than the best FP32 path here: " + "; ".join(slower) + ".")
    else:
        lines.append("Every int8 path is faster than the best FP32 path.")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """bench.md: the machine, every target with its verdict, then the figures behind them."""
    m = results["machine"]
    out = [
        "# labquant-bench",
        "",
        f"Machine: {m['cpu']} ({m.get('isa', 'ISA not recorded')}), {m['cores']} cores "
        f"({m['torch_threads']} torch threads), "
        f"GPU: {m['gpu'] or 'none'}; torch {m['torch']}. Quick: {results['quick']}. "
        f"Wall time: {results['wall_time_s']:.0f} s.",
        "",
        "| figure | value | target | verdict |",
        "|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in target_rows(results)),
    ]
    inference = results.get("inference")
    if inference:
        table = inference_table(inference, inference.get("isa") or m.get("isa", "not recorded"))
        out += ["", *table]
    for section in ("augment", "train_step", "qat_step", "sizes", "gpu"):
        if section in results:
            out += ["", f"## {section}", "", "```", _flat(results[section]), "```"]
    return "\n".join(out) + "\n"


def _flat(node: Any, prefix: str = "") -> str:
    if not isinstance(node, dict):
        return f"{prefix}: {node}"
    return "\n".join(_flat(v, f"{prefix}.{k}" if prefix else str(k)) for k, v in node.items())
