"""labquant.speed, the one inference timer: round-robin best-of-N on a fake clock, every row of a
batch computed (no padding), and labquant-quantize's figures (the lab report's) equal to the
bench's for the same runtimes."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor

from labquant import speed


class FakeClock:
    """A clock that only moves when a fake runtime says it worked: `cost` seconds per image,
    plus `extra[k]` on its k-th call (a busy spell)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[tuple[str, int]] = []

    def __call__(self) -> float:
        return self.now

    def runtime(self, name: str, cost: float, extra: dict[int, float] | None = None):
        count = [0]

        def run(x: Tensor) -> Tensor:
            self.calls.append((name, len(x)))
            self.now += cost * len(x) + (extra or {}).get(count[0], 0.0)
            count[0] += 1
            return x[:, :1, 0, 0]

        return run


def test_timer_is_round_robin_best_of_n_after_untimed_warmup() -> None:
    clock = FakeClock()
    # a's first call is warm-up (slow, untimed); b is hit by a busy spell in its first round.
    a = clock.runtime("a", 0.001, extra={0: 9.0})
    b = clock.runtime("b", 0.002, extra={1: 5.0})
    x = torch.zeros(4, 3, 2, 2)
    seconds = speed.interleaved_best_seconds(
        {"a": lambda: a(x), "b": lambda: b(x)}, rounds=3, warmup=1, clock=clock
    )
    assert seconds == pytest.approx({"a": 0.004, "b": 0.008})
    # warm-up round, then three timed rounds, each contender once per round in turn
    assert [name for name, _ in clock.calls] == ["a", "b"] * 4


def test_cpu_speed_computes_every_row_and_reports_both_figures() -> None:
    clock = FakeClock()
    runs = {"int8": clock.runtime("int8", 1e-4), "fp32": clock.runtime("fp32", 4e-4)}
    figures = speed.cpu_speed(runs, rounds={1: 3, 256: 2}, clock=clock)
    assert figures["int8"] == {"latency_b1_ms": 0.1, "img_s_b256": 10000.0}
    assert figures["fp32"] == {"latency_b1_ms": 0.4, "img_s_b256": 2500.0}
    assert {size for _, size in clock.calls} == {1, 256}
    assert speed.best_fp32_speed({"eager": figures["fp32"], "int8": figures["int8"]}) == {
        "b1": ("int8", 0.1),
        "b256": ("int8", 10000.0),
    }


def test_pt2e_program_compiles_each_batch_shape_instead_of_padding(monkeypatch) -> None:
    """A batch-256 call after a 512 one computes 256 rows (it used to be padded to 512)."""
    from labquant.quant.pt2e.backend import PT2EInt8Model

    seen: list[int] = []
    wrappers: dict[int, bool] = {}

    def fake_compile(module, dynamic, options):  # Inductor takes 30-60 s; the shapes are ours
        assert dynamic is False

        def run(x: Tensor) -> Tensor:
            seen.append(len(x))
            wrappers[len(x)] = options["cpp_wrapper"]
            return x.sum(dim=(1, 2, 3))

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = PT2EInt8Model(program=None, qconfig="pot")  # type: ignore[arg-type]
    model._module = model._inductor_module = torch.nn.Identity()
    for size in (512, 505, 256, 1, 256):
        assert model(torch.ones(size, 3, 2, 2)).shape == (size,)
    assert seen == [512, 505, 256, 1, 256]
    assert sorted(model._compiled) == [1, 256, 505, 512]
    # Batch 1 through Inductor's C++ wrapper, as the FP32 compiled path at that size
    assert wrappers == {512: False, 505: False, 256: False, 1: True}
    assert speed.inductor_options(1) == {"cpp_wrapper": True}
    assert speed.inductor_options(256) == {"cpp_wrapper": False}


def test_quantize_report_and_bench_time_the_same_way(monkeypatch) -> None:
    """Same runtimes, same clock: labquant-quantize's results.json figures, the lab report's
    speedups and the bench's rows are the same numbers."""
    from labquant.reports.table import stage_row
    from labquant.tasks import quantize
    from labquant.tasks.bench.inference import timed_rows

    costs = {"int8": 1e-4, "onnxruntime": 2e-4, "eager": 8e-4, "compiled": 5e-4}

    def runtimes(clock: FakeClock) -> dict:
        return {name: clock.runtime(name, cost) for name, cost in costs.items()}

    clock = FakeClock()
    monkeypatch.setattr(speed, "CLOCK", clock)
    fakes = runtimes(clock)
    monkeypatch.setattr(
        quantize,
        "fp32_runtimes",
        lambda *args, **kwargs: {"eager": fakes["eager"], "compiled": fakes["compiled"]},
    )
    cfg = OmegaConf.create({"quant": {"fp32_paths": ["eager", "compiled"]}})
    batch = torch.zeros(2, 3, 32, 32)
    results = quantize.measure_speed(
        cfg, fakes["int8"], {"onnxruntime": fakes["onnxruntime"]}, torch.nn.Identity(), batch
    )
    bench = timed_rows(
        {"eager": fakes["eager"], "compiled": fakes["compiled"]},
        {"int8": fakes["int8"], "ort": fakes["onnxruntime"]},
        dict(speed.DEFAULT_ROUNDS),
        kernel_ratios=None,
    )
    assert results["latency"]["img_s_b256"] == bench["b256"]["int8"]["int8"] == 10000.0
    assert results["onnxruntime_latency"]["img_s_b256"] == bench["b256"]["int8"]["ort"]
    assert results["latency"]["latency_b1_ms"] == pytest.approx(1000 / bench["b1"]["int8"]["int8"])
    assert results["fp32_best"] == {"b1": ["compiled", 0.5], "b256": ["compiled", 2000.0]}
    assert bench["b256"]["fp32_best_path"] == "compiled"
    row = stage_row(
        {
            **results,
            "stage": "ptq_pot",
            "size_mib": 1.0,
            "test_acc": 60.0,
            "fp32_test_acc": 61.0,
            "acc_drop": 1.0,
        },
        "ptq_pot",
    )
    assert row["speedup_b256"] == bench["b256"]["speedup"]["int8"] == 5.0
    assert row["speedup_b1"] == bench["b1"]["speedup"]["int8"] == 5.0
