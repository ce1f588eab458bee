"""sensitivity.md and sensitivity.png of a `labquant-sensitivity` run, from its results only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from labquant.reports.figures import layer_axis, layer_width, save_figure


def _bits(bits: dict[str, int]) -> str:
    return f"W{bits['weight']}/A{bits['activation']}"


def sensitivity_markdown(results: dict[str, Any]) -> str:
    """The ranking (most sensitive first), the uniform baselines and the budget's proposal."""
    low = _bits(results["low_bits"])
    uniform = results["uniform"]
    lines = [
        f"# Per-layer sensitivity: {results['model']}, qconfig={results['qconfig']} "
        f"({results['backend']})",
        "",
        f"Scored on the validation split ({results['val_images']} images, one image = "
        f"{100 / results['val_images']:.2f} pp), never on the test set. FP32 validation "
        f"accuracy {results['fp32_val_acc']:.2f} %; uniform W8/A8 {uniform['high']['val_acc']:.2f} "
        f"% (logits SQNR {uniform['high']['sqnr_db']:.1f} dB, "
        f"{uniform['high']['packed_size_mib']:.4f} MiB packed), uniform {low} "
        f"{uniform['low']['val_acc']:.2f} % ({uniform['low']['sqnr_db']:.1f} dB, "
        f"{uniform['low']['packed_size_mib']:.4f} MiB).",
        "",
        f"| rank | layer | {low} alone: val acc (%) | drop vs W8/A8 (pp) | logits SQNR (dB) | "
        f"8-bit alone: val acc (%) | gain vs {low} (pp) | logits SQNR (dB) | saves (bytes) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_rank = sorted(results["layers"], key=lambda row: row["rank"])
    for row in by_rank:
        only_low, only_high = row["only_low"], row["only_high"]
        lines.append(
            f"| {row['rank']} | {row['name']} | {only_low['val_acc']:.2f} | "
            f"{only_low['drop_pp']:+.2f} | {only_low['sqnr_db']:.1f} | "
            f"{only_high['val_acc']:.2f} | {only_high['gain_pp']:+.2f} | "
            f"{only_high['sqnr_db']:.1f} | {row['high_bytes'] - row['low_bytes']} |"
        )
    lines += [
        "",
        f"- Rank: by the output noise a layer adds at {low} alone (the noise-to-signal power of "
        "the logits against FP32 over uniform W8/A8's); accuracy on this many images moves "
        "in whole images, the noise does not.",
    ]
    if results.get("proposal"):
        lines += _proposal_lines(results, low)
    return "\n".join(lines) + "\n"


def _proposal_lines(results: dict[str, Any], low: str) -> list[str]:
    """The budget's proposal section: which layers go low, what it packs to and scores on the
    validation split, where its qconfig file is, and the search's steps when it measured any."""
    proposal, uniform = results["proposal"], results["uniform"]
    lines = [
        "",
        f"## Proposal under the budget: `{proposal['name']}`",
        "",
        f"- Budget: {_budget(results['budget'])}; search: {proposal['method']}.",
        f"- {_layers(proposal['low'])} at {low}: {', '.join(proposal['low']) or 'none'}.",
        f"- {_layers(proposal['high'])} at W8/A8: {', '.join(proposal['high']) or 'none'}.",
        f"- Packed {proposal['packed_size_mib']:.4f} MiB "
        f"({proposal['packed_size_mib'] / uniform['high']['packed_size_mib']:.3f} of uniform "
        f"W8/A8); validation accuracy {proposal['val_acc']:.2f} % (drop "
        f"{proposal['val_drop_pp']:+.2f} pp against FP32), logits SQNR "
        f"{proposal['val_sqnr_db']:.1f} dB.",
        f"- qconfig file: `{Path(proposal.get('qconfig_file', '')).name}` in qconfig/: "
        "`labquant-quantize qconfig=<run>/qconfig/<name>.yaml ...` or "
        "`labquant-lab lab.qconfigs=[pot,<run>/qconfig/<name>.yaml]`; its test accuracy "
        "is measured there.",
    ]
    if proposal["steps"]:
        tried = ", ".join(
            f"{s['layer']} {s['val_drop_pp']:+.2f}{'' if s['kept'] else ' (kept at 8)'}"
            for s in proposal["steps"]
        )
        lines.append(f"- Steps (layer lowered, validation drop in pp): {tried}.")
    return lines


def _layers(names: list[str]) -> str:
    return f"{len(names)} layer{'' if len(names) == 1 else 's'}"


def _budget(budget: dict[str, Any]) -> str:
    if budget.get("packed_size_mib") is not None:
        return f"packed size <= {budget['packed_size_mib']} MiB"
    return f"validation drop <= {budget['max_drop_pp']} pp"


def sensitivity_figure(results: dict[str, Any]) -> Figure:
    """Per layer in network order: the validation drop with only it at the low width and the
    gain with only it at 8 bits (top), and the logits' SQNR of both (bottom); layers the
    proposal lowers are hatched."""
    rows = results["layers"]
    names = [row["name"] for row in rows]
    x = np.arange(len(names))
    low = _bits(results["low_bits"])
    lowered = set((results.get("proposal") or {}).get("low", []))
    hatch = ["//" if name in lowered else "" for name in names]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(layer_width(len(names)), 7.5), sharex=True)
    drops = [row["only_low"]["drop_pp"] for row in rows]
    gains = [row["only_high"]["gain_pp"] for row in rows]
    for i in range(len(names)):
        top.bar(x[i] - 0.2, drops[i], 0.4, color="tab:red", hatch=hatch[i])
        top.bar(x[i] + 0.2, gains[i], 0.4, color="tab:green", hatch=hatch[i])
    top.axhline(0, color="black", lw=0.8)
    top.set_ylabel("validation accuracy (pp)")
    one_image = 100 / results["val_images"]
    top.set_title(
        f"{results['model']} {results['qconfig']}: validation drop with only this layer at "
        f"{low} (red)\nand gain with only it at W8/A8 (green); one image = {one_image:.2f} pp",
        fontsize=10,
    )
    top.grid(axis="y", alpha=0.3)
    bottom.plot(x, [row["only_low"]["sqnr_db"] for row in rows], "o-", color="tab:red",
                label=f"only this layer at {low}")  # fmt: skip
    bottom.plot(x, [row["only_high"]["sqnr_db"] for row in rows], "s-", color="tab:green",
                label="only this layer at W8/A8")  # fmt: skip
    uniform = results["uniform"]
    bottom.axhline(uniform["high"]["sqnr_db"], color="tab:green", ls="--", lw=0.8,
                   label="uniform W8/A8")  # fmt: skip
    bottom.axhline(uniform["low"]["sqnr_db"], color="tab:red", ls="--", lw=0.8,
                   label=f"uniform {low}")  # fmt: skip
    bottom.set_ylabel("logits SQNR vs FP32 (dB)")
    bottom.legend(fontsize=8, title="hatched: lowered by the proposal" if lowered else None)
    layer_axis(bottom, names)
    fig.tight_layout()
    return fig


def write_figure(results: dict[str, Any], out_png: Path) -> Path:
    return save_figure(sensitivity_figure(results), out_png)
