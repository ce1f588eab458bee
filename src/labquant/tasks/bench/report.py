"""Targets checked against bench.json, and the bench.md / console table built from them."""

from __future__ import annotations

import operator
import os
from typing import Any

import torch

from labquant.errors import ConfigError
from labquant.reports.machine import cpu

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


def _inference_rows(inference: dict[str, Any], qconfigs: list[str]) -> list[str]:
    lines = []
    for model, row in inference.items():
        if not isinstance(row, dict) or "fp32_best" not in row:
            continue
        for b in ("b1", "b256"):
            fp32 = row["fp32"][b]
            cells = [model, b, f"{fp32['contiguous']:g}", f"{fp32['channels_last']:g}"]
            cells += [f"{row[q][b]:g} ({row[f'{q}_speedup_{b}']:.2f}x)" for q in qconfigs]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict[str, Any], qconfigs: list[str]) -> str:
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
        header = "| model | batch | FP32 contiguous | FP32 channels_last | "
        header += " | ".join(f"int8 {q} (speedup)" for q in qconfigs) + " |"
        out += [
            "",
            "## Inference on the CPU, img/s",
            "",
            header,
            "|" + "---|" * (4 + len(qconfigs)),
            *_inference_rows(inference, qconfigs),
        ]
    for section in ("augment", "train_step", "qat_step", "sizes", "gpu"):
        if section in results:
            out += ["", f"## {section}", "", "```", _flat(results[section]), "```"]
    return "\n".join(out) + "\n"


def _flat(node: Any, prefix: str = "") -> str:
    if not isinstance(node, dict):
        return f"{prefix}: {node}"
    return "\n".join(_flat(v, f"{prefix}.{k}" if prefix else str(k)) for k, v in node.items())
