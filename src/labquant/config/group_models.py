"""The settings of each config group (conf/<group>/*.yaml), one pydantic model per group.

Why here: each group's settings are declared with their type, range and example in one place,
so the schema refuses a bad value in one line before any work. Groups that build a `_target_`
(model, data, qconfig, backend) are also checked against the target's own signature
(config/targets.py): a key the chosen model factory or DataModule does not take is refused even
where another option of the group declares it (`model.layers` is small's, not resnet18's). A
field a group leaves out is simply absent (None); an explicit `null` is checked like any other.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from labquant.config.fields import (
    PRECISION_RULE,
    Augment,
    BackendName,
    NonNegFloat,
    NonNegInt,
    PosInt,
    QConfigName,
    Settings,
    cross_field_error,
    setting,
)
from labquant.config.targets import check_target_arguments


class TargetChecked(Settings):
    """A group whose settings are the arguments of the class or factory its `_target_` names:
    each one must be an argument of that target, of its declared type."""

    @model_validator(mode="after")
    def _arguments_of_the_target(self) -> TargetChecked:
        check_target_arguments(self)
        return self


class Data(TargetChecked):
    """The union of the DataModules' settings; the chosen `_target_` must take each one given."""

    root: str = setting("data", min_length=1)
    download: bool = setting(True)
    num_train: PosInt = setting(5000)
    num_test: PosInt = setting(1000)
    batch_size: PosInt = setting(128)
    eval_batch_size: PosInt | None = setting(512)
    val_size: PosInt | Annotated[float, Field(gt=0, lt=1)] = setting(
        0.1, rule="must be a count >= 1 or a fraction in (0, 1)"
    )
    augment: Augment = setting("device")
    num_workers: NonNegInt = setting(2)
    pin_memory: bool | None = setting(None)
    seed: NonNegInt = setting(42)


class Model(TargetChecked):
    """The union of the model factories' settings; the chosen `_target_` must take each one."""

    num_classes: int = setting(10, ge=2)
    stem: Literal["cifar", "imagenet"] = setting("cifar")
    layers: list[PosInt] = setting(
        [2, 2, 2], rule="must be a non-empty list of integers >= 1", min_length=1
    )
    base_width: PosInt = setting(32)
    block: Literal["basic", "bottleneck"] = setting("basic")


class Optimizer(Settings):
    lr: float = setting(0.1, gt=0)
    momentum: float = setting(0.9, ge=0, lt=1)
    weight_decay: NonNegFloat = setting(5.0e-4)
    nesterov: bool = setting(False)


class Scheduler(Settings):
    interval: Literal["step", "epoch"] = setting("epoch")
    warmup_epochs: NonNegFloat = setting(2)
    max_epochs: PosInt = setting(40)
    min_lr: NonNegFloat = setting(1.0e-5)
    step_size: PosInt = setting(20)
    gamma: float = setting(0.1, gt=0, le=1)


class Trainer(Settings):
    max_epochs: PosInt = setting(40)
    accelerator: str = setting("auto")
    devices: Literal[-1] | PosInt | str | list[NonNegInt] = setting(
        1, rule="must be a count >= 1, -1 (all), auto or a list of device indices"
    )
    precision: str | int = setting("32-true", rule=PRECISION_RULE)
    log_every_n_steps: PosInt = setting(20)
    strategy: str = setting("ddp", min_length=1)
    num_nodes: PosInt = setting(2)
    sync_batchnorm: bool = setting(True)
    use_distributed_sampler: bool = setting(False)


class Quant(Settings):
    mode: Literal["ptq", "qat"] = setting("ptq")
    calibration_batches: PosInt = setting(32)
    epochs: PosInt = setting(6)
    lr: float = setting(0.005, gt=0)
    scale_lr: float | None = setting(0.001, gt=0)  # learned exponents' lr; None: quant.lr
    scale_optimizer: Literal["adam", "recipe"] = setting("adam")  # learned exponents' optimizer
    warmup_epochs: NonNegFloat = setting(0)
    freeze_observer_epoch: NonNegInt = setting(4)
    freeze_bn_epoch: NonNegInt = setting(3)
    distill_weight: float = setting(1.0, ge=0, le=1)
    distill_temperature: float = setting(1.0, gt=0)
    measure_latency: bool = setting(True)
    fp32_paths: list[Literal["eager", "eager_channels_last", "compiled", "onnxruntime"]] = setting(
        ["eager", "eager_channels_last", "compiled", "onnxruntime"], min_length=1
    )

    @model_validator(mode="after")
    def _warmup_within_epochs(self) -> Quant:
        if None not in (self.warmup_epochs, self.epochs) and self.warmup_epochs >= self.epochs:
            raise cross_field_error(
                "warmup_epochs",
                f"must be < {{group}}epochs ({self.epochs})",
                "lower {group}warmup_epochs or raise {group}epochs",
            )
        return self


class QConfig(Settings):
    """A qconfig's settings are its factory's arguments (quant/qconfigs.py: the power-of-two
    design space, declared there with their types and ranges beside the rules that use
    them), checked against the `_target_` the chosen conf/qconfig/<name>.yaml names."""

    name: str = setting("pot")

    @model_validator(mode="after")
    def _arguments_of_the_factory(self) -> QConfig:
        name = self.name
        check_target_arguments(
            self,
            f"qconfig={name}",
            f"it applies to power-of-two qconfigs only (qconfig={name} uses its engine's own "
            "observers): choose one, e.g. qconfig=pot_w4a8_pc, or leave it unset",
        )
        return self


class Backend(TargetChecked):
    """A backend's settings are its constructor's arguments, declared with their types and
    defaults by each backend class itself (quant/<name>/backend.py), so a new backend declares
    its own and this schema names none of them."""


class Lab(Settings):
    qconfigs: list[QConfigName] = setting(["pot"], min_length=1)
    backends: list[BackendName] = setting(["eager"], min_length=1)
    ptq: Quant = setting("ptq", default=...)
    qat: Quant = setting("qat", default=...)
    export: bool = setting(True)  # labquant-export on each power-of-two stage
    golden: NonNegInt = setting(8)


class Budget(Settings):
    """labquant-sensitivity's budget: at most one of the two is set (none: ranking only)."""

    packed_size_mib: float | None = setting(0.1, gt=0)
    max_drop_pp: float | None = setting(1.0, gt=0)
    name: str = setting("pot_w4a8_mixed", pattern=r"^[A-Za-z0-9_.-]+$")

    @model_validator(mode="after")
    def _one_budget(self) -> Budget:
        if self.packed_size_mib is not None and self.max_drop_pp is not None:
            raise cross_field_error(
                "max_drop_pp",
                "is set beside {group}packed_size_mib",
                "set one of them (the proposal reports the other)",
            )
        return self
