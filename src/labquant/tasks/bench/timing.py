"""Timing helpers: best-of-N wall time, with the device synchronised around each run."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(
    run: Callable[[], object], repeats: int, warmup: int = 1, device: torch.device | str = "cpu"
) -> float:
    """Fastest of `repeats` timed calls after `warmup` untimed ones.

    The minimum, not the mean: on a shared machine noise only ever adds time, so the fastest
    run is the best estimate of what the code itself costs.
    """
    for _ in range(warmup):
        run()
    synchronize(device)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best_seconds(
    runs: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, float]:
    """Best time of each run, timed round-robin (each runs once per round), so a slow spell of
    a shared machine hits every contender alike instead of whichever ran during it."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(max(1, rounds)):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def rate(items: int, seconds: float) -> float:
    return round(items / seconds, 1) if seconds > 0 else float("inf")


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator > 0 else float("inf")
