"""The mixed-precision search behind `labquant-sensitivity budget.*`: the size budget is never
exceeded, the cheapest damage goes first, and nothing is lowered that the budget does not need."""

from __future__ import annotations

import random

import pytest

from labquant.errors import ConfigError
from labquant.quant.mixed_precision import (
    MIB,
    LayerChoice,
    fit_drop,
    fit_size,
    packed_size,
    search_order,
)


def random_layers(rng: random.Random, count: int) -> list[LayerChoice]:
    layers = []
    for i in range(count):
        high = rng.randint(1_000, 400_000)
        low = high // 2 + rng.randint(0, 2_000)
        layers.append(LayerChoice(f"l{i}", high, min(low, high), rng.random() ** 3))
    return layers


@pytest.mark.parametrize("seed", range(40))
def test_the_size_budget_is_never_exceeded_and_nothing_is_lowered_needlessly(seed):
    rng = random.Random(seed)
    layers = random_layers(rng, rng.randint(1, 14))
    smallest = packed_size(layers, {layer.name for layer in layers})
    largest = packed_size(layers, set())
    budget_mib = rng.uniform(smallest, largest * 1.05) / MIB
    lowered = fit_size(layers, budget_mib)
    assert packed_size(layers, lowered) <= budget_mib * MIB
    for name in lowered:  # raising any lowered layer back would break the budget
        assert packed_size(layers, lowered - {name}) > budget_mib * MIB
    if budget_mib * MIB >= largest:
        assert lowered == set()


def test_the_least_damage_per_saved_byte_is_lowered_first():
    layers = [
        LayerChoice("fragile", 1000, 500, damage=1.0),  # 2e-3 per byte
        LayerChoice("big_robust", 10_000, 5_000, damage=0.5),  # 1e-4 per byte
        LayerChoice("small_robust", 1000, 500, damage=0.01),  # 2e-5 per byte
        LayerChoice("saves_nothing", 100, 100, damage=0.0),
    ]
    order = [layer.name for layer in search_order(layers)]
    assert order == ["small_robust", "big_robust", "fragile", "saves_nothing"]
    # 12,100 bytes at 8 bits. 7,100: small_robust goes low first, then big_robust, after which
    # small_robust is raised back (7,100 bytes fit without it).
    assert fit_size(layers, 7_100 / MIB) == {"big_robust"}
    assert fit_size(layers, 6_600 / MIB) == {"big_robust", "small_robust"}
    assert fit_size(layers, 6_100 / MIB) == {"big_robust", "small_robust", "fragile"}


def test_a_size_below_every_layer_low_is_refused_before_any_work():
    layers = [LayerChoice("a", 2 * MIB, MIB, 0.1), LayerChoice("b", 2 * MIB, MIB, 0.2)]
    with pytest.raises(ConfigError) as caught:
        fit_size(layers, 1.5)
    message = str(caught.value)
    assert "budget.packed_size_mib=1.5 is below the smallest size" in message
    assert "(2.0000 MiB)" in message and "\n" not in message


def test_the_drop_bound_keeps_only_steps_whose_measured_drop_holds():
    layers = [LayerChoice(n, 1000, 500, d) for n, d in (("a", 0.1), ("b", 0.4), ("c", 0.2))]
    cost = {"a": 0.3, "b": 2.0, "c": 0.5}  # pp, additive in this stand-in for a PTQ

    def drop_of(lowered: set[str]) -> float:
        return sum(cost[name] for name in lowered)

    lowered, steps = fit_drop(layers, 1.0, drop_of)
    assert lowered == {"a", "c"}
    assert steps == [("a", 0.3, True), ("c", 0.8, True), ("b", 2.8, False)]
