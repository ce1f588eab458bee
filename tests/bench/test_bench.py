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

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it

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
    # No Inductor compile and no ONNX export here (minutes); test_onnx_contenders covers pt2e
    # (uncompiled) and ONNX Runtime.
    "inference.backends=[eager]",
    "qconfigs=[x86,pot]",
    "inference.compile=false",
    "inference.onnx=false",
    "inference.kernel.channels=16",
    "inference.kernel.size=8",
    "inference.kernel.batch=1",
    "inference.kernel.repeats=1",
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
    assert f"CPU ISA: **{results['machine']['isa']}**" in md
    assert "| **best FP32** |" in md and "| int8 eager_pot |" in md


@pytest.mark.slow
def test_bench_figures_are_measured_and_consistent(bench_run) -> None:
    results, _ = bench_run
    augment = results["augment"]
    assert augment["images"] == 512
    assert augment["speedup"] == pytest.approx(
        augment["batched_img_s"] / augment["per_image_img_s"], rel=0.01
    )
    assert results["train_step"]["lightning_img_s"] > 0 < results["train_step"]["plain_img_s"]
    inference = results["inference"]
    kernel = inference["kernel"]
    assert kernel["int8_over_fp32"] > 0 and kernel["shape"].startswith("conv3x3 16->16")
    assert inference["backends"] == ["eager"] and inference["isa"]
    small = inference["small"]
    contenders = {"eager_x86", "eager_pot"}
    for batch in ("b1", "b256"):
        row = small[batch]
        # compile=false, onnx=false: the eager FP32 paths only.
        assert set(row["fp32"]) == {"eager", "eager_channels_last"}
        assert row["fp32_best"] == max(row["fp32"].values()) > 0
        assert row["fp32"][row["fp32_best_path"]] == row["fp32_best"]
        assert set(row["int8"]) == contenders
        for name in contenders:
            assert row["speedup"][name] == pytest.approx(
                row["int8"][name] / row["fp32_best"], abs=1e-3
            )
            # judged against the model's own convolutions at this batch, not the one big conv
            assert row["of_kernel"][name] == pytest.approx(
                row["speedup"][name] / small["kernel"][batch]["int8_over_fp32"], abs=1e-3
            )
        # The worst qconfig decides (its best contender: here the only one).
        assert small[f"int8_speedup_{batch}"] == min(row["speedup"].values()) > 0
        assert small[f"int8_speedup_{batch}_path"] in contenders
        assert small[f"deploy_{batch}"] == {"x86": "eager_x86", "pot": "eager_pot"}
        assert small[f"int8_of_kernel_{batch}"] == pytest.approx(
            small[f"int8_speedup_{batch}"] / small["kernel"][batch]["int8_over_fp32"], abs=1e-3
        )
        assert small["kernel"][batch]["convs"] > small["kernel"][batch]["shapes"] > 1
    for q in ("x86", "pot"):
        assert results["qat_step"][q]["step_ms"] > 0
        # The teacher's forward is extra work on top of the same QAT step.
        assert results["qat_step"][q]["distilled_step_ms"] > 0
        # int8 weights are a quarter of fp32, plus scales, biases and headers.
        assert 0.24 < results["sizes"]["small"][f"eager_{q}"]["ratio"] < 0.3
    sizes = results["sizes"]["small"]
    assert sizes["ratio"] == max(v["ratio"] for v in sizes.values() if isinstance(v, dict))
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


def test_onnx_contenders(tmp_path: Path) -> None:
    """pt2e's int8 program and ONNX Runtime on its .onnx file are int8 contenders, ONNX
    Runtime on the FP32 model an FP32 one; each qconfig's best contender counts."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from labquant.tasks.bench.common import qconfig_specs
    from labquant.tasks.bench.inference import backend_for, bench_inference

    backends = {"pt2e": backend_for("pt2e", compile=False, onnx=True)}
    inference, sizes = bench_inference(
        ["small"], backends, qconfig_specs(["x86"]), 1, 1, 1, compile=False, onnx=True
    )
    for batch in ("b1", "b256"):
        row = inference["small"][batch]
        assert row["fp32"]["onnxruntime"] > 0 and row["int8"]["ort_x86"] > 0
        assert set(row["int8"]) == {"pt2e_x86", "ort_x86"} and "of_kernel" not in row
        best = max(row["int8"], key=lambda name: row["int8"][name])
        assert inference["small"][f"int8_speedup_{batch}_path"] == best == row["int8_best_path"]
    assert "kernel" not in inference and "int8_of_kernel_b1" not in inference["small"]
    assert sizes["small"]["pt2e_x86"]["pt2_mib"] > 0 < sizes["small"]["pt2e_x86"]["ratio"]


def test_a_qconfig_the_backend_refuses_has_no_contender(caplog) -> None:
    """backend=pt2e_fused takes x86 but refuses pot at zero point 128: the bench leaves that
    pair out and says why, and keeps the others."""
    from labquant.tasks.bench.common import qconfig_specs
    from labquant.tasks.bench.inference import backend_for, bench_inference

    backends = {"pt2e_fused": backend_for("pt2e_fused", compile=False, onnx=True)}
    with caplog.at_level("INFO"):
        _, sizes = bench_inference(
            ["small"], backends, qconfig_specs(["x86", "pot"]), 1, 1, 1, compile=False, timed=False
        )
    assert {k for k in sizes["small"] if isinstance(sizes["small"][k], dict)} == {"pt2e_fused_x86"}
    assert "no pt2e_fused_pot contender: backend.fuse_residual_add=true" in caplog.text


def test_fp32_runtimes_agree_and_the_best_is_named() -> None:
    import torch
    from torch import nn

    from labquant.speed import best_fp32
    from labquant.tasks.fp32_paths import fp32_runtimes

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    runtimes = fp32_runtimes(net, x, compile=True, onnx=False)
    # Compiled lazily: present, but not called here (a compile takes ~30 s).
    assert set(runtimes) == {"eager", "eager_channels_last", "compiled"}
    assert set(fp32_runtimes(net, x, compile=False, onnx=False)) == {
        "eager",
        "eager_channels_last",
    }
    with torch.no_grad():
        expected = net(x)
    for name in ("eager", "eager_channels_last"):
        torch.testing.assert_close(runtimes[name](x), expected)
    assert best_fp32({"eager": 100.0, "compiled": 250.0}) == ("compiled", 250.0)
    assert best_fp32({"eager": 3.0, "compiled": 2.0}, higher_is_better=False) == ("compiled", 2.0)
    with pytest.raises(ValueError):
        best_fp32({})


def test_kernel_ratio_compares_the_best_of_each_side() -> None:
    from labquant.tasks.bench.kernels import bench_kernel_ratio

    kernel = bench_kernel_ratio(channels=16, size=8, batch=1, repeats=1)
    assert kernel["shape"] == "conv3x3 16->16, 1x16x8x8"
    assert kernel["fp32_best"] in ("fp32_contiguous", "fp32_channels_last")
    assert kernel["int8_best"].startswith("int8_")
    ms = kernel["ms"]
    assert kernel["int8_over_fp32"] == pytest.approx(
        ms[kernel["fp32_best"]] / ms[kernel["int8_best"]], rel=0.05
    )


def test_model_kernel_limit_times_every_conv_shape_of_the_model() -> None:
    import torch
    from torch import nn

    from labquant.tasks.bench.kernels import ConvShape, conv_shapes, model_kernel_ratio

    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1),  # same shape as the one before: counted twice
        nn.Conv2d(8, 16, 1, stride=2, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    shapes = conv_shapes(net, torch.zeros(2, 3, 32, 32))
    repeated = ConvShape(8, 8, (3, 3), (1, 1), (1, 1), 1, (2, 8, 32, 32))
    assert shapes[repeated] == 2 and sum(shapes.values()) == 4 and len(shapes) == 3
    limit = model_kernel_ratio(net, (1, 4), repeats=1)
    for batch in ("b1", "b4"):
        row = limit[batch]
        assert (row["convs"], row["shapes"]) == (4, 3)
        assert row["int8_over_fp32"] == pytest.approx(
            row["ms"][row["fp32_best"]] / row["ms"][row["int8_best"]], rel=0.05
        )
    assert limit["int8_over_fp32"] == limit["b4"]["int8_over_fp32"]


def test_inference_table_names_isa_best_fp32_and_slower_int8() -> None:
    from labquant.tasks.bench.report import inference_table

    row = {
        "fp32": {"eager": 100.0, "compiled": 200.0},
        "fp32_best": 200.0,
        "fp32_best_path": "compiled",
        "int8": {"eager_x86": 300.0, "pt2e_pot": 150.0},
        "speedup": {"eager_x86": 1.5, "pt2e_pot": 0.75},
        "of_kernel": {"eager_x86": 1.0, "pt2e_pot": 0.5},
    }
    inference = {
        "threads": 2,
        "kernel": {
            "shape": "conv3x3 256->256, 4x256x28x28",
            "int8_over_fp32": 1.5,
            "int8_best": "int8_x86",
            "fp32_best": "fp32_channels_last",
        },
        "small": {
            "b1": row,
            "b256": {**row, "speedup": {"eager_x86": 1.5, "pt2e_pot": 1.1}},
            "kernel": {"b1": {"int8_over_fp32": 1.5, "convs": 15}, "b256": None},
            "deploy_b1": {"x86": "eager_x86", "pot": "pt2e_pot"},
        },
    }
    md = "\n".join(inference_table(inference, "AVX2, no VNNI"))
    assert "CPU ISA: **AVX2, no VNNI**" in md and "int8 runs **1.50x** FP32" in md
    assert "| path | small b1 | small b256 |" in md
    assert "| **best FP32** | compiled (200) | compiled (200) |" in md
    assert "| int8 eager_x86 | 300 (1.50x; 1.00 of kernel) |" in md
    assert "| kernel limit: the model's convs alone, int8 / FP32 | 1.50x (15 convs) | - |" in md
    assert "SLOWER than the best FP32 path here: small b1 (vs compiled): pt2e_pot 0.75x." in md
    assert "Deploy on this CPU (AVX2, no VNNI)" in md
    assert "- small b1: x86: eager_x86 (1.50x), pot: pt2e_pot (0.75x)" in md
    row["speedup"]["pt2e_pot"] = 1.2
    assert "Every int8 path is faster" in "\n".join(inference_table(inference, "AVX2"))


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


def test_qconfig_ratios_compare_each_qconfig_with_the_first_in_the_same_backend() -> None:
    from labquant.tasks.bench.inference import qconfig_ratios

    int8 = {"pt2e_x86": 200.0, "pt2e_pot": 180.0, "eager_x86": 100.0, "ort_pot": 500.0}
    assert qconfig_ratios(int8, ["eager", "pt2e"], ["x86", "pot"], "b1") == {
        "pt2e_pot_over_x86_b1": 0.9  # eager has no pot contender here; ort is no backend
    }
