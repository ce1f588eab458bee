"""`labquant-sensitivity`'s pipeline: which layer needs which width, and a mixed-precision
power-of-two qconfig under a budget.

From an FP32 checkpoint and a low-width power-of-two qconfig (e.g. qconfig=pot_w4a8), every
quantizable layer is tried twice by PTQ (the calibration batches, as `labquant-quantize` does):
only that layer at the low width with the rest at 8 bits, and only that layer at 8 bits with
the rest low. Each variant is scored on the VALIDATION split (top-1 and the logits' SQNR
against FP32), never on the test set, so the ranking and the proposal it leads to are not
tuned on the numbers the lab reports. A budget (`budget.packed_size_mib` or
`budget.max_drop_pp`) turns the ranking into `layer_bits` (quant/mixed_precision.py), written
as a qconfig YAML that `qconfig=<file>` and `lab.qconfigs=[<file>]` accept.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from labquant.data.augment import normalize
from labquant.data.tensors import TensorImageDataModule
from labquant.errors import ConfigError
from labquant.quant.layers import (
    packed_bytes,
    packed_size_mib,
    quantizable_layers,
    sqnr_db,
    total_bitops,
)
from labquant.quant.mixed_precision import (
    MIB,
    LayerChoice,
    check_size_budget,
    fit_drop,
    fit_size,
    packed_size,
    search_order,
)
from labquant.quant.qconfigs import QConfigSpec
from labquant.reports.artifacts import write_json, write_text
from labquant.reports.sensitivity import sensitivity_markdown, write_figure
from labquant.tasks.board import log_sensitivity
from labquant.tasks.common import model_name
from labquant.tasks.fingerprint import settings_record
from labquant.tasks.quantize import StageInputs, calibrate, load_inputs

log = logging.getLogger(__name__)
HIGH_BITS = 8


@dataclass(frozen=True)
class Score:
    """One int8 variant on the validation split."""

    acc: float  # top-1 (%)
    sqnr_db: float  # its logits against the FP32 network's

    @property
    def noise(self) -> float:
        """Noise-to-signal power of the logits: what adds up over layers (first order)."""
        return 10.0 ** (-self.sqnr_db / 10.0)


def uniform(spec: QConfigSpec, weight_bits: int, activation_bits: int) -> QConfigSpec:
    return replace(spec, weight_bits=weight_bits, activation_bits=activation_bits, layer_bits=())


def lowered_spec(low: QConfigSpec, lowered: set[str] | list[str], order: list[str]) -> QConfigSpec:
    """8 bits everywhere except the `lowered` layers, which take `low`'s widths (network order,
    so the YAML reads like the network)."""
    high = uniform(low, HIGH_BITS, HIGH_BITS)
    entries = tuple(
        (name, low.weight_bits, low.activation_bits) for name in order if name in lowered
    )
    return replace(high, layer_bits=entries)


def raised_spec(low: QConfigSpec, name: str) -> QConfigSpec:
    """`low` everywhere except `name` at 8 bits."""
    return replace(low, layer_bits=((name, HIGH_BITS, HIGH_BITS),))


def check_sensitivity_inputs(cfg: DictConfig, low: QConfigSpec) -> None:
    """What the sensitivity pass needs of its settings, checked before any work."""
    if cfg.quant.mode != "ptq":
        raise ConfigError(
            f"quant={cfg.quant.mode}: labquant-sensitivity measures each layer by PTQ; "
            "leave quant=ptq (run QAT on the proposed qconfig with labquant-quantize)"
        )
    if not low.scheme.widths:
        raise ConfigError(
            f"qconfig={low.name} is not a power-of-two qconfig; labquant-sensitivity "
            "compares power-of-two widths: choose e.g. qconfig=pot_w4a8"
        )
    if (low.weight_bits, low.activation_bits) == (HIGH_BITS, HIGH_BITS):
        raise ConfigError(
            f"qconfig={low.name} is 8 bits everywhere: there is no low width to try; choose a "
            "low-width qconfig, e.g. qconfig=pot_w4a8, or set qconfig.weight_bits=4"
        )
    if low.layer_bits:
        raise ConfigError(
            "qconfig.layer_bits is what labquant-sensitivity proposes; leave it unset here"
        )


def layer_choices(net: nn.Module, low: QConfigSpec, damage: dict[str, float]) -> list[LayerChoice]:
    """Each conv / linear with its packed bytes at 8 bits and at the low width (from the FP32
    network's shapes: the same rule results.json's packed size uses)."""
    modules = dict(net.named_modules())
    choices = []
    for name in quantizable_layers(net):
        weight = modules[name].weight
        row = {"weights": weight.numel(), "out_channels": weight.shape[0]}
        size = {
            bits: packed_bytes({**row, "bits": {"weight": bits}}, low.scheme, low.per_channel)
            for bits in (HIGH_BITS, low.weight_bits)
        }
        choices.append(
            LayerChoice(name, size[HIGH_BITS], size[low.weight_bits], damage.get(name, 0.0))
        )
    return choices


class Probe:
    """PTQ of one layer assignment, scored on the validation split (cached per assignment)."""

    def __init__(self, cfg: DictConfig, inputs: StageInputs, val: tuple[Tensor, Tensor]) -> None:
        self.cfg, self.inputs, self.val = cfg, inputs, val
        self.fp32_logits = logits_of(inputs.fp32_net, val[0])
        self.cache: dict[QConfigSpec, Score] = {}

    def quantize(self, spec: QConfigSpec) -> tuple[nn.Module, Any]:
        with quiet_trainers():  # dozens of PTQ runs: one log line each, not Lightning's banner
            tuned = calibrate(self.cfg, replace(self.inputs, qconfig=spec))
        return tuned.prepared, self.inputs.backend.convert(tuned.prepared, spec, self.inputs.batch)

    def score_of(self, int8: Any) -> Score:
        logits = logits_of(int8, self.val[0])
        acc = 100.0 * float((logits.argmax(1) == self.val[1]).double().mean())
        return Score(round(acc, 4), round(sqnr_db(self.fp32_logits, logits), 3))

    def __call__(self, spec: QConfigSpec) -> Score:
        if spec not in self.cache:
            self.cache[spec] = self.score_of(self.quantize(spec)[1])
        return self.cache[spec]


@contextlib.contextmanager
def quiet_trainers() -> Iterator[None]:
    """Lightning's per-Trainer info lines (accelerators found, tips) off for a while."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@torch.inference_mode()
def logits_of(model: Any, images: Tensor, batch_size: int = 500) -> Tensor:
    if isinstance(model, nn.Module):
        model.eval()
    return torch.cat(
        [model(normalize(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    ).float()


def check_sensitivity_data(
    cfg: DictConfig, low: QConfigSpec, fp32_net: nn.Module, dm: TensorImageDataModule
) -> None:
    """Before any work: the settings the pass needs, a size budget the network can reach (from
    the FP32 network's shapes) and a validation split to score on."""
    check_sensitivity_inputs(cfg, low)
    if cfg.budget.get("packed_size_mib") is not None:
        check_size_budget(layer_choices(fp32_net, low, {}), float(cfg.budget.packed_size_mib))
    images = len(dm.arrays("val")[1])
    if images < 2:
        raise ConfigError(
            f"data.val_size={cfg.data.val_size} leaves {images} validation images; "
            "labquant-sensitivity scores every layer on the validation split: set "
            "data.val_size=500 (or 0.1)"
        )


def load_sensitivity_inputs(cfg: DictConfig) -> tuple[StageInputs, tuple[Tensor, Tensor]]:
    """What a PTQ stage loads (quantize.load_inputs), with the FP32 reference evaluated on the
    validation split, the split every variant is scored on."""
    inputs = load_inputs(cfg, "val", functools.partial(check_sensitivity_data, cfg))
    images, labels = inputs.data.arrays("val")
    return inputs, (images.cpu(), labels.cpu())


def layer_rows(
    probe: Probe, low: QConfigSpec, names: list[str], base: dict[str, Score]
) -> list[dict[str, Any]]:
    """Each layer at the low width alone, and at 8 bits alone (network order)."""
    rows = []
    for i, name in enumerate(names, start=1):
        only_low = probe(lowered_spec(low, [name], names))
        only_high = probe(raised_spec(low, name))
        log.info("sensitivity %d/%d %s: low alone %.2f %%, 8-bit alone %.2f %%", i, len(names),
                 name, only_low.acc, only_high.acc)  # fmt: skip
        rows.append(
            {
                "name": name,
                "only_low": {
                    "val_acc": only_low.acc,
                    "drop_pp": round(base["high"].acc - only_low.acc, 4),
                    "sqnr_db": only_low.sqnr_db,
                },
                "only_high": {
                    "val_acc": only_high.acc,
                    "gain_pp": round(only_high.acc - base["low"].acc, 4),
                    "sqnr_db": only_high.sqnr_db,
                },
                # The output noise power this layer alone adds at the low width.
                "damage": max(0.0, only_low.noise - base["high"].noise),
            }
        )
    return rows


def propose(
    cfg: DictConfig, probe: Probe, choices: list[LayerChoice], names: list[str], fp32_acc: float
) -> dict[str, Any] | None:
    """The budget's mixed assignment, checked by a PTQ of it on the validation split."""
    budget, low = cfg.budget, probe.inputs.qconfig
    steps: list[tuple[str, float, bool]] = []
    if budget.get("packed_size_mib") is not None:
        lowered = fit_size(choices, float(budget.packed_size_mib))
        method = "greedy by damage per saved byte, then raised back where the size allows"
    elif budget.get("max_drop_pp") is not None:
        limit = float(budget.max_drop_pp)

        def drop_of(trial: set[str]) -> float:
            return round(fp32_acc - probe(lowered_spec(low, trial, names)).acc, 4)

        lowered, steps = fit_drop(choices, limit, drop_of)
        method = "greedy by damage per saved byte, each step measured on the validation split"
    else:
        return None
    spec = replace(lowered_spec(low, lowered, names), name=str(budget.name))
    prepared, int8 = probe.quantize(spec)
    score = probe.score_of(int8)
    layers = probe.inputs.backend.layer_table(
        probe.inputs.fp32_net, prepared.cpu(), int8, probe.inputs.batch
    )
    return {
        "name": spec.name,
        "method": method,
        "low": [name for name in names if name in lowered],
        "high": [name for name in names if name not in lowered],
        "val_acc": score.acc,
        "val_drop_pp": round(fp32_acc - score.acc, 4),
        "val_sqnr_db": score.sqnr_db,
        "packed_size_mib": packed_size_mib(layers, low.scheme, low.per_channel),
        "estimated_packed_size_mib": round(packed_size(choices, lowered) / MIB, 6),
        "bitops": total_bitops(layers),
        "steps": [{"layer": n, "val_drop_pp": d, "kept": k} for n, d, k in steps],
        "layer_bits": {
            name: {"weight": low.weight_bits, "activation": low.activation_bits}
            for name in names
            if name in lowered
        },
    }


def qconfig_yaml(cfg: DictConfig, proposal: dict[str, Any]) -> str:
    """The proposal as a qconfig file: the chosen qconfig's settings at 8 bits, with the
    lowered layers at its low widths."""
    qconfig = OmegaConf.to_container(cfg.qconfig, resolve=True)
    assert isinstance(qconfig, dict)
    qconfig |= {
        "name": proposal["name"],
        "weight_bits": HIGH_BITS,
        "activation_bits": HIGH_BITS,
        "layer_bits": proposal["layer_bits"],
    }
    header = (
        f"# Mixed precision proposed by labquant-sensitivity from qconfig={cfg.qconfig.name} "
        f"({proposal['method']}), validation split only.\n"
        f"# Packed {proposal['packed_size_mib']} MiB; validation drop "
        f"{proposal['val_drop_pp']} pp. Use: qconfig=<this file> or lab.qconfigs=[<this file>]\n"
    )
    return header + OmegaConf.to_yaml(OmegaConf.create(qconfig))


def rank_layers(
    net: nn.Module, low: QConfigSpec, rows: list[dict[str, Any]]
) -> tuple[list[LayerChoice], list[dict[str, Any]]]:
    """Each layer's packed bytes at both widths and its rank (most damage first, ties by name)
    added to its row; the choices the budget's search takes and the rows in rank order."""
    damage = {row["name"]: row["damage"] for row in rows}
    choices = layer_choices(net, low, damage)
    for row, choice in zip(rows, choices, strict=True):
        row |= {"high_bytes": choice.high_bytes, "low_bytes": choice.low_bytes}
    ranked = sorted(rows, key=lambda row: (-row["damage"], row["name"]))
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    return choices, ranked


def uniform_figures(
    base: dict[str, Score], fp32_acc: float, choices: list[LayerChoice], names: list[str]
) -> dict[str, dict[str, Any]]:
    """The two uniform baselines (every layer at 8 bits, every layer low) the per-layer figures
    are read against: validation accuracy, drop against FP32, SQNR, packed size."""
    return {
        key: {
            "val_acc": score.acc,
            "val_drop_pp": round(fp32_acc - score.acc, 4),
            "sqnr_db": score.sqnr_db,
            "packed_size_mib": round(
                packed_size(choices, set(names) if key == "low" else set()) / MIB, 6
            ),
        }
        for key, score in base.items()
    }


def sensitivity(cfg: DictConfig) -> dict[str, Any]:
    """Rank every layer, propose a mixed assignment under the budget; write the files."""
    started = time.perf_counter()
    out_dir = Path(cfg.paths.output_dir)
    inputs, val = load_sensitivity_inputs(cfg)
    low = inputs.qconfig
    names = quantizable_layers(inputs.fp32_net)
    probe = Probe(cfg, inputs, val)
    fp32_acc = round(inputs.fp32_eval.acc, 4)  # on the validation split
    base = {"high": probe(uniform(low, HIGH_BITS, HIGH_BITS)), "low": probe(low)}
    rows = layer_rows(probe, low, names, base)
    choices, ranked = rank_layers(inputs.fp32_net, low, rows)
    proposal = propose(cfg, probe, choices, names, fp32_acc)
    results: dict[str, Any] = {
        "stage": "sensitivity",
        "status": "complete",
        "model": model_name(cfg),
        "backend": inputs.backend.name,
        "qconfig": low.name,
        "low_bits": {"weight": low.weight_bits, "activation": low.activation_bits},
        "split": "val",
        "val_images": len(val[1]),
        "fp32_val_acc": fp32_acc,
        "uniform": uniform_figures(base, fp32_acc, choices, names),
        "layers": rows,
        "ranking": [row["name"] for row in ranked],
        "greedy_order": [choice.name for choice in search_order(choices)],
        "budget": OmegaConf.to_container(cfg.budget, resolve=True),
        "proposal": proposal,
        "ptq_runs": len(probe.cache) + (proposal is not None),
        "fp32_checkpoint": str(cfg.ckpt_path),
    }
    if proposal is not None:
        path = out_dir / "qconfig" / f"{proposal['name']}.yaml"
        write_text(path, qconfig_yaml(cfg, proposal))
        proposal["qconfig_file"] = str(path)
    write_text(out_dir / "sensitivity.md", sensitivity_markdown(results))
    write_figure(results, out_dir / "sensitivity.png")
    results["wall_time_s"] = round(time.perf_counter() - started, 2)
    log_sensitivity(cfg, results)
    write_json(out_dir / "sensitivity.json", results)
    results.update(settings_record(cfg, "sensitivity"))
    write_json(out_dir / "results.json", results)
    if proposal is not None:
        log.info("proposed %s: %s", proposal["qconfig_file"], _summary(proposal))
    return results


def _summary(proposal: dict[str, Any]) -> str:
    return (
        f"{len(proposal['low'])} of {len(proposal['low']) + len(proposal['high'])} layers low, "
        f"packed "
        f"{proposal['packed_size_mib']} MiB, validation drop {proposal['val_drop_pp']} pp"
    )
