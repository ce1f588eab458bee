"""Which layers may run at the low width: the search behind `labquant-sensitivity budget.*`.

The inputs are one number per layer from the sensitivity pass: `damage`, the output
noise-to-signal power the layer adds when it alone is at the low width (the network's logits
against FP32, on the validation split), and the bytes it saves there (`packed_bytes` at 8 bits
minus at the low width). Quantization noise from different layers is nearly uncorrelated, so
to first order the noise powers ADD at the output (the assumption HAWQ's and AIMET's per-layer
sensitivities rest on): choosing which layers to lower is then a 0/1 knapsack, and the search is
its classic greedy (least damage per saved byte first) followed by a repair pass that raises
back every lowered layer the budget no longer needs, most damaging first. The drop-bounded
search measures each step for real (a PTQ on the validation split) instead of trusting the sum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from labquant.errors import ConfigError

MIB = 2**20


@dataclass(frozen=True)
class LayerChoice:
    """One quantizable layer: its packed bytes at 8 bits and at the low width, and the output
    noise power it adds at the low width (>= 0)."""

    name: str
    high_bytes: int
    low_bytes: int
    damage: float

    @property
    def saved_bytes(self) -> int:
        return self.high_bytes - self.low_bytes


def search_order(layers: Iterable[LayerChoice]) -> list[LayerChoice]:
    """The layers in the order the greedy lowers them: least damage per saved byte first; a
    layer that saves nothing comes last (it only costs accuracy), ties by name."""
    return sorted(
        layers,
        key=lambda layer: (
            layer.saved_bytes <= 0,
            max(layer.damage, 0.0) / max(layer.saved_bytes, 1),
            layer.name,
        ),
    )


def packed_size(layers: Iterable[LayerChoice], lowered: set[str]) -> int:
    """Bytes of the network with the `lowered` layers at the low width, the rest at 8 bits."""
    return sum(layer.low_bytes if layer.name in lowered else layer.high_bytes for layer in layers)


def check_size_budget(layers: list[LayerChoice], budget_mib: float) -> None:
    """A size below what every layer at the low width packs into cannot be met: say so before
    any work (the sizes come from the FP32 network's shapes)."""
    smallest = packed_size(layers, {layer.name for layer in layers}) / MIB
    if budget_mib < smallest:
        raise ConfigError(
            f"budget.packed_size_mib={budget_mib:g} is below the smallest size this qconfig "
            f"reaches with every layer at its low width ({smallest:.4f} MiB); raise it or "
            "choose a lower-width qconfig"
        )


def fit_size(layers: list[LayerChoice], budget_mib: float) -> set[str]:
    """The layers to lower so that the network packs into `budget_mib`, by least summed damage:
    greedy by damage per saved byte, then every lowered layer raised back to 8 bits (most
    damaging first) where the budget still holds without it."""
    check_size_budget(layers, budget_mib)
    budget = budget_mib * MIB
    lowered: set[str] = set()
    for layer in search_order(layers):
        if packed_size(layers, lowered) <= budget:
            break
        lowered.add(layer.name)
    by_damage = sorted((layer for layer in layers if layer.name in lowered), key=_most_damaging)
    for layer in by_damage:
        if packed_size(layers, lowered - {layer.name}) <= budget:
            lowered.discard(layer.name)
    return lowered


def fit_drop(
    layers: list[LayerChoice], max_drop_pp: float, drop_of: Callable[[set[str]], float]
) -> tuple[set[str], list[tuple[str, float, bool]]]:
    """The layers to lower while the measured validation drop stays <= `max_drop_pp`: in the
    greedy order, each layer is lowered on top of those kept, `drop_of(lowered)` measures the
    drop (pp) for real, and the layer stays lowered only if it holds. Returns the set and every
    step (layer, measured drop, kept)."""
    lowered: set[str] = set()
    steps: list[tuple[str, float, bool]] = []
    for layer in search_order(layers):
        if layer.saved_bytes <= 0:
            continue  # lowering it saves nothing
        trial = lowered | {layer.name}
        drop = drop_of(trial)
        kept = drop <= max_drop_pp
        steps.append((layer.name, drop, kept))
        if kept:
            lowered = trial
    return lowered, steps


def _most_damaging(layer: LayerChoice) -> tuple[float, str]:
    return (-layer.damage, layer.name)
