"""Each app's whole settings, and the explicit table from an app's `task_name` to them.

Why a table: every conf/<app>.yaml names its app in `task_name`, so the schema a composed config
is checked against is looked up, never guessed from which groups the config happens to hold (a
new app, or a group added to an old one, would silently pick another app's schema).
tests/config/test_schema.py fails when a conf/<app>.yaml has no entry here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from labquant.config.bench_settings import BenchSettings
from labquant.config.fields import (
    NonNegInt,
    PosInt,
    Settings,
    cross_field_error,
    setting,
    warmup_fits,
    warmup_rule,
)
from labquant.config.group_models import (
    Backend,
    Budget,
    Data,
    Lab,
    Model,
    Optimizer,
    QConfig,
    Quant,
    Scheduler,
    Trainer,
)
from labquant.config.messages import format_value
from labquant.errors import ConfigError


class TrainSettings(Settings):
    """conf/train.yaml: FP32 training. The trainer comes first: other groups interpolate it."""

    task_name: str = setting("train")
    seed: NonNegInt = setting(42)
    channels_last: bool = setting(True)
    compile: bool = setting(False)
    resume: bool = setting(False)
    overwrite: bool = setting(False)
    ckpt_path: str | None = setting("outputs/<date>/<time>/checkpoints/best.ckpt")
    ablation_row: PosInt | None = setting(1)
    trainer: Trainer = setting("default", default=...)
    data: Data = setting("cifar10", default=...)
    model: Model = setting("resnet18", default=...)
    optimizer: Optimizer = setting("sgd", default=...)
    scheduler: Scheduler | None = setting("warmup_cosine")
    backend: Backend | None = setting("eager")

    @model_validator(mode="after")
    def _warmup_within_budget(self) -> TrainSettings:
        warmup, budget = getattr(self.scheduler, "warmup_epochs", None), self.trainer.max_epochs
        if None not in (warmup, budget) and not warmup_fits(warmup, budget):
            raise cross_field_error("scheduler.warmup_epochs", *warmup_rule(budget))
        return self


class QuantizeSettings(TrainSettings):
    """conf/quantize.yaml: PTQ or QAT of an FP32 checkpoint."""

    quant: Quant = setting("ptq", default=...)
    qconfig: QConfig = setting("pot", default=...)


class LabSettings(TrainSettings):
    """conf/lab.yaml: FP32 training, then PTQ and QAT for each of lab.qconfigs."""

    lab: Lab = setting({"qconfigs": ["pot"]}, default=...)
    qconfig: QConfig = setting("pot", default=...)


class SensitivitySettings(QuantizeSettings):
    """conf/sensitivity.yaml: per-layer sensitivity and a mixed-precision proposal."""

    budget: Budget = setting({"packed_size_mib": 0.1}, default=...)


class ExportSettings(Settings):
    """conf/export.yaml: the integer model of a power-of-two int8 stage folder."""

    task_name: str = setting("export")
    stage_dir: str = setting("outputs/<lab>/ptq_pot", min_length=1)
    golden: NonNegInt = setting(8)
    rounding: Literal["half_even", "half_up"] = setting("half_up")
    images: PosInt | None = setting(1000)
    data_root: str | None = setting("../shared/data/cifar10-mini", min_length=1)
    overwrite: bool = setting(False)


# conf/<app>.yaml's `task_name` -> the settings of that app. A lab's stages keep the lab's
# task_name (their config is the lab's, with a stage's quant and qconfig), and its exports
# start from conf/export.yaml (task_name: export).
APPS: dict[str, type[Settings]] = {
    "train": TrainSettings,
    "quantize": QuantizeSettings,
    "lab": LabSettings,
    "sensitivity": SensitivitySettings,
    "export": ExportSettings,
    "bench": BenchSettings,
}


def app_settings(task_name: Any) -> type[Settings]:
    """The settings model of the app `task_name` names; ConfigError for one the table lacks."""
    model = APPS.get(task_name) if isinstance(task_name, str) else None
    if model is not None:
        return model
    apps = ", ".join(APPS)
    if task_name is None:
        raise ConfigError(f"task_name is missing; conf/<app>.yaml sets it to one of {apps}")
    raise ConfigError(
        f"task_name={format_value(task_name)} is not one of {apps}; leave it as "
        "conf/<app>.yaml sets it"
    )
