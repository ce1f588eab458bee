"""labquant-bench end to end on a tiny budget: every section runs and reports real figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from labquant.errors import ConfigError
from labquant.tasks.bench.report import check_targets, parse_target
from labquant.tasks.bench.run import effective_settings
from tests.conftest import REPO_ROOT, compose_config

TINY_BENCH = [
    "augment.images=512",
    "augment.batch_size=128",
    "augment.workers=1",
    "train_step.images=256",
    "train_step.batch_size=64",
    "train_step.rounds=1",
    "inference.models=[small]",
    "inference.repeats_b1=3",
    "inference.repeats_b256=1",
    "inference.calibration_batches=1",
    "qat_step.batch_size=32",
    "qat_step.steps=1",
    # The GPU section's code path, run on the CPU: tiny, fp32 (bf16 on a CPU is slow).
    "gpu.enabled=true",
    "gpu.device=cpu",
    "gpu.models=[small]",
    "gpu.images=128",
    "gpu.epochs=1",
    "gpu.matmul_size=128",
    "gpu.default_path.precision=32-true",
    "gpu.plain_path.num_workers=1",
]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    from labquant.tasks.bench.run import run_bench

    out = tmp_path_factory.mktemp("bench")
    results = run_bench(compose_config("bench", TINY_BENCH, out))
    return results, out


@pytest.mark.slow
def test_bench_writes_json_and_markdown_with_every_section(bench_run) -> None:
    results, out = bench_run
    assert json.loads((out / "bench.json").read_text()) == json.loads(json.dumps(results))
    for section in ("machine", "augment", "train_step", "inference", "qat_step", "sizes", "gpu"):
        assert section in results, section
    md = (out / "bench.md").read_text()
    assert "| figure | value | target | verdict |" in md
    assert "Machine: " in md and "## Inference on the CPU, img/s" in md


@pytest.mark.slow
def test_bench_figures_are_measured_and_consistent(bench_run) -> None:
    results, _ = bench_run
    augment = results["augment"]
    assert augment["images"] == 512
    assert augment["speedup"] == pytest.approx(
        augment["batched_img_s"] / augment["per_image_img_s"], rel=0.01
    )
    assert results["train_step"]["lightning_img_s"] > 0 < results["train_step"]["plain_img_s"]
    small = results["inference"]["small"]
    for batch in ("b1", "b256"):
        assert small["fp32_best"][batch] == max(small["fp32"][batch].values())
        speedups = [small[f"{q}_speedup_{batch}"] for q in ("x86", "pot")]
        assert small[f"int8_speedup_{batch}"] == min(speedups) > 0
    for q in ("x86", "pot"):
        assert results["qat_step"][q]["step_ms"] > 0
        # int8 weights are a quarter of fp32, plus scales, biases and headers.
        assert 0.24 < results["sizes"]["small"][q]["ratio"] < 0.3
    gpu = results["gpu"]["small"]
    assert gpu["epoch_s"] > 0 and gpu["plain_epoch_s"] > 0 and gpu["train_gflop_per_image"] > 0


@pytest.mark.slow
def test_every_target_gets_a_verdict(bench_run) -> None:
    results, _ = bench_run
    verdicts = {row["figure"]: row["met"] for row in results["targets"]}
    assert verdicts["gpu.resnet18.epoch_s"] is None  # resnet18 was not run
    assert verdicts["inference.resnet18.int8_speedup_b1"] is None
    assert isinstance(verdicts["augment.speedup"], bool)
    assert isinstance(verdicts["sizes.small.ratio"], bool)


def test_targets_met_missed_and_not_run() -> None:
    results = {"a": {"speedup": 30.0}, "b": {"ratio": 0.3}}
    rows = check_targets(results, ["a.speedup >= 20", "b.ratio <= 0.26", "c.x >= 1"])
    assert [row["met"] for row in rows] == [True, False, None]


@pytest.mark.parametrize("bad", ["a.speedup > 20", "a.speedup >= fast", "a.speedup"])
def test_malformed_target_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="bench target"):
        parse_target(bad)


def test_quick_merges_the_smaller_samples() -> None:
    cfg = OmegaConf.create(
        {
            "quick": True,
            "qat_step": {"steps": 10, "model": "small"},
            "quick_settings": {"qat_step": {"steps": 4}},
        }
    )
    assert effective_settings(cfg).qat_step == {"steps": 4, "model": "small"}
    cfg.quick = False
    assert effective_settings(cfg).qat_step.steps == 10


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sections=[augment,nope]", "sections=[augment,nope] item nope must be augment,"),
        ("qconfigs=[x86,int4]", "qconfigs=[x86,int4] item int4 is not one of"),
        ("threads=0", "threads=0 must be >= 1"),
    ],
)
def test_bad_bench_settings_are_one_line_errors(
    tmp_path: Path, override: str, message: str
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "labquant.cli.bench", override, f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith(f"labquant-bench: error: {message}")
    assert not (tmp_path / "bench.json").exists()
