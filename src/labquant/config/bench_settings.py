"""conf/bench.yaml's settings: labquant-bench's sections, each with its own group of settings.

Why apart: the benchmark's settings share no group with the training apps (no model, data or
trainer group: each section names its models and sizes itself), and `quick_settings` reuses
the sections' models, so they live together and away from the groups the other apps compose.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from labquant.config.fields import (
    PRECISION_RULE,
    Augment,
    BackendName,
    ModelName,
    NonNegInt,
    PosInt,
    QConfigName,
    Settings,
    setting,
)

BenchSection = Literal["augment", "train_step", "inference", "qat_step", "sizes", "gpu"]
TARGET_PATTERN = r"^\s*\S+\s+(>=|<=)\s+[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


class BenchAugment(Settings):
    images: PosInt = setting(10000)
    batch_size: PosInt = setting(256)
    workers: NonNegInt = setting(2)
    device: str = setting("cpu")


class BenchTrainStep(Settings):
    model: ModelName = setting("small")
    images: PosInt = setting(1536)
    batch_size: PosInt = setting(128)
    epochs: int = setting(3, ge=2)  # the first is warm-up and is not timed
    rounds: PosInt = setting(3)


class BenchKernel(Settings):
    channels: PosInt = setting(256)
    size: PosInt = setting(28)
    batch: PosInt = setting(4)
    repeats: PosInt = setting(10)


class BenchInference(Settings):
    models: list[ModelName] = setting(["small", "resnet18"], min_length=1)
    repeats_b1: PosInt = setting(200)
    repeats_b256: PosInt = setting(5)
    calibration_batches: PosInt = setting(8)
    backends: list[BackendName] = setting(["eager", "pt2e"], min_length=1)
    compile: bool = setting(True)
    onnx: bool = setting(True)
    kernel: BenchKernel | None = setting({"channels": 256})


class BenchQATStep(Settings):
    model: ModelName = setting("small")
    batch_size: PosInt = setting(128)
    steps: PosInt = setting(10)


class BenchGPUPath(Settings):
    batch_size: PosInt = setting(128)
    augment: Augment = setting("device")
    num_workers: NonNegInt = setting(0)
    channels_last: bool = setting(True)
    precision: str | int = setting("bf16-mixed", rule=PRECISION_RULE)
    compile: bool = setting(False)


class BenchGPU(Settings):
    enabled: Literal["auto"] | bool = setting("auto", rule="must be auto, true or false")
    device: str = setting("cuda")
    models: list[ModelName] = setting(["resnet18", "resnet50"], min_length=1)
    images: PosInt = setting(50000)
    epochs: PosInt = setting(2)
    matmul_size: PosInt = setting(8192)
    default_path: BenchGPUPath | None = setting({"batch_size": 128})
    plain_path: BenchGPUPath | None = setting({"batch_size": 64})


class BenchSections(Settings):
    """The settings of each section; all optional, so quick_settings reuses them."""

    augment: BenchAugment | None = setting({"images": 10000})
    train_step: BenchTrainStep | None = setting({"epochs": 3})
    inference: BenchInference | None = setting({"repeats_b1": 200})
    qat_step: BenchQATStep | None = setting({"steps": 10})
    gpu: BenchGPU | None = setting({"enabled": "auto"})


class BenchSettings(BenchSections):
    """conf/bench.yaml (quick=true merges quick_settings over the sections)."""

    task_name: str = setting("bench")
    quick: bool = setting(True)
    threads: PosInt | None = setting(2)
    sections: list[BenchSection] = setting(["inference"], min_length=1)
    qconfigs: list[QConfigName] = setting(["x86", "pot"], min_length=1)
    quick_settings: BenchSections | None = setting({"inference": {"repeats_b1": 50}})
    targets: list[Annotated[str, Field(pattern=TARGET_PATTERN)]] = setting(
        ["qat_step.ratio <= 1.6"], rule="must be a list of '<bench.json key> >= | <= <number>'"
    )
