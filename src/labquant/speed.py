"""The one way labquant times inference: labquant-quantize's speed figures (which the lab report
reads from results.json) and labquant-bench's come from these functions, so the two agree for
the same model on the same CPU.

- one timer: every contender runs once per round, round-robin, best of N rounds (a busy spell of
  a shared machine hits every contender alike; noise only ever adds time, so the minimum is the
  estimate of what the code costs);
- one input per batch size (`example_batch`), every row of it computed (no runtime pads a batch
  to a shape it compiled before);
- one rule for the fastest FP32 path (`best_fp32`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

Clock = Callable[[], float]
Runner = Callable[[Tensor], object]

BATCH_SIZES = (1, 256)
# Up to this batch Inductor's Python wrapper (Python work per kernel call) is a visible share of
# the time: the generated C++ wrapper was 29 % faster at batch 1 for the int8 program and 10 %
# for FP32 on 2 AMX cores (docs/performance.md). Its cost is per call, not per image, so larger
# batches keep the default wrapper (and its shorter compile).
CPP_WRAPPER_MAX_BATCH = 8


def inductor_options(batch_size: int) -> dict[str, bool]:
    """torch.compile options for one batch shape, the same for every Inductor runtime (FP32
    and int8), so neither side of a speedup gets a wrapper the other lacks."""
    return {"cpp_wrapper": batch_size <= CPP_WRAPPER_MAX_BATCH}


# Rounds per batch size where a caller names none (labquant-quantize; the bench has settings).
DEFAULT_ROUNDS: Mapping[int, int] = {1: 50, 256: 5}
CLOCK: Clock = time.perf_counter  # the clock every timer reads unless it is given one (tests)


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_best_seconds(
    runs: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    clock: Clock | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Best time of each run, timed round-robin (each runs once per round) after `warmup`
    untimed rounds; the device is synchronised before each clock reading."""
    clock = clock or CLOCK
    for _ in range(warmup):
        for run in runs.values():
            run()
    synchronize(device)
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(max(1, rounds)):
        for name, run in runs.items():
            start = clock()
            run()
            synchronize(device)
            best[name] = min(best[name], clock() - start)
    return best


def best_seconds(
    run: Callable[[], object],
    repeats: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    clock: Clock | None = None,
) -> float:
    """`interleaved_best_seconds` of a single run."""
    return interleaved_best_seconds({"run": run}, repeats, warmup, clock, device)["run"]


def rate(items: int, seconds: float) -> float:
    return round(items / seconds, 1) if seconds > 0 else float("inf")


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator > 0 else float("inf")


def example_batch(batch_size: int, image_shape: tuple[int, ...] = (3, 32, 32)) -> Tensor:
    """The input every timed runtime sees at this batch size (normalised-image statistics)."""
    generator = torch.Generator().manual_seed(100 + batch_size)
    return torch.randn(batch_size, *image_shape, generator=generator)


def images_per_second(
    runs: Mapping[str, Runner], batch: Tensor, rounds: int, clock: Clock | None = None
) -> dict[str, float]:
    """Images per second of each runtime on `batch`, timed together; the warm-up rounds let
    oneDNN build its kernels for this shape and Inductor compile it (not timed)."""
    for run in runs.values():
        if isinstance(run, nn.Module):
            run.eval()
    calls = {name: (lambda run=run: run(batch)) for name, run in runs.items()}
    with torch.inference_mode():
        seconds = interleaved_best_seconds(
            calls, rounds, warmup=2 if len(batch) == 1 else 1, clock=clock
        )
    return {name: rate(len(batch), s) for name, s in seconds.items()}


def speed_by_batch(
    runs: Mapping[str, Runner],
    rounds: Mapping[int, int] = DEFAULT_ROUNDS,
    image_shape: tuple[int, ...] = (3, 32, 32),
    clock: Clock | None = None,
) -> dict[int, dict[str, float]]:
    """{batch size: {runtime: img/s}} for every size of BATCH_SIZES, all runtimes timed together
    on `example_batch`: labquant-quantize (`cpu_speed`) and the bench both measure this way."""
    return {
        size: images_per_second(runs, example_batch(size, image_shape), rounds[size], clock)
        for size in BATCH_SIZES
    }


def cpu_speed(
    runs: Mapping[str, Runner],
    rounds: Mapping[int, int] = DEFAULT_ROUNDS,
    image_shape: tuple[int, ...] = (3, 32, 32),
    clock: Clock | None = None,
) -> dict[str, dict[str, float]]:
    """Each runtime's two figures in results.json: batch-1 latency (ms) and batch-256
    throughput (img/s), from `speed_by_batch`."""
    figures = speed_by_batch(runs, rounds, image_shape, clock)
    return {
        name: {
            "latency_b1_ms": round(1000.0 / figures[1][name], 3),
            "img_s_b256": figures[256][name],
        }
        for name in runs
    }


def best_fp32(figures: Mapping[str, float], *, higher_is_better: bool = True) -> tuple[str, float]:
    """(name, value) of the fastest path in `figures`: the highest throughput (img/s), or the
    lowest latency with `higher_is_better=False`."""
    if not figures:
        raise ValueError("best_fp32 needs at least one figure")
    pick = max if higher_is_better else min
    name = pick(figures, key=lambda key: figures[key])
    return name, figures[name]


def best_fp32_speed(latencies: Mapping[str, Mapping[str, float]]) -> dict[str, tuple[str, float]]:
    """The fastest FP32 path of `cpu_speed`'s figures per batch size: {"b1": (path, ms),
    "b256": (path, img/s)}; {} when there is none."""
    if not latencies:
        return {}
    b1 = {name: figures["latency_b1_ms"] for name, figures in latencies.items()}
    b256 = {name: figures["img_s_b256"] for name, figures in latencies.items()}
    return {"b1": best_fp32(b1, higher_is_better=False), "b256": best_fp32(b256)}
