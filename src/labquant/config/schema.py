"""Every user-facing setting's type and range in one schema, checked before any work starts.

Why pydantic (v2): each field declares its type AND its range where it is defined (`gt=0`,
`Literal[...]`, `min_length=1`); strict mode refuses a bool or 2.5 where an integer is wanted
and "abc" where a number is; and every error carries a location that maps one to one to the
dotted setting the user typed (`optimizer.lr`). Hydra structured configs check types only and
would need a schema line in every YAML file.

`validate_settings(cfg)` raises ConfigError with one line for the first error:
`<setting>=<value as written> <what is wrong>; e.g. <setting>=<example>`. Each field carries its
example and, where the generic reason would mislead (unions, lists), a `rule` that replaces it.
Groups allow extra keys (`_target_`, Trainer kwargs). A field a group leaves out is simply
absent (None); an explicit `null` is checked like any other value.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from labquant.config import paths
from labquant.config.groups import is_option_file
from labquant.errors import ConfigError

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Augment = Literal["device", "workers"]
BenchSection = Literal["augment", "train_step", "inference", "qat_step", "sizes", "gpu"]
PRECISION_RULE = "must be a precision such as 32-true, bf16-mixed or 16-mixed"
TARGET_PATTERN = r"^\s*\S+\s+(>=|<=)\s+[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def setting(example: Any, rule: str | None = None, default: Any = None, **constraints: Any) -> Any:
    """A field with the example that ends its error message (`e.g. optimizer.lr=0.1`) and,
    optionally, a `rule` that replaces the generic reason for every error in it."""
    extra = {"example": example} | ({"rule": rule} if rule else {})
    return Field(default, json_schema_extra=extra, **constraints)


def choice_of(group: str) -> Callable[[str], str]:
    """A name that must be a config file in conf/<group>/ (checked where that folder exists)."""

    def check(name: str) -> str:
        if is_option_file(name):
            return name  # a file (labquant-sensitivity's qconfig): config/groups.py checks it
        choices = sorted(p.stem for p in (paths.CONF_DIR / group).glob("*.yaml"))
        if choices and name not in choices:
            raise PydanticCustomError("unknown", "is not one of {c}", {"c": ", ".join(choices)})
        return name

    return check


QConfigName = Annotated[str, AfterValidator(choice_of("qconfig"))]


def warmup_fits(warmup_epochs: float, max_epochs: int) -> bool:
    """The warmup rule, here and in WarmupCosineAnnealingLR: a cosine phase must remain."""
    return 0 <= warmup_epochs < max_epochs


def warmup_rule(max_epochs: int) -> tuple[str, str]:
    """(what is wrong, the fix) when `warmup_fits` is False."""
    return (
        f"must be >= 0 and < trainer.max_epochs ({max_epochs})",
        "lower scheduler.warmup_epochs or raise trainer.max_epochs",
    )


def check_warmup_epochs(warmup_epochs: float, max_epochs: int) -> None:
    """`warmup_fits` for code that takes the values outside a composed config."""
    if not warmup_fits(warmup_epochs, max_epochs):
        wrong, fix = warmup_rule(max_epochs)
        raise ConfigError(f"scheduler.warmup_epochs={format_value(warmup_epochs)} {wrong}; {fix}")


ModelName = Annotated[str, AfterValidator(choice_of("model"))]
BackendName = Annotated[str, AfterValidator(choice_of("backend"))]


def cross_field_error(field: str, reason: str, fix: str) -> PydanticCustomError:
    """An error in `field` found by a model validator; `{group}` in the texts becomes the
    dotted prefix of the model that raised it (`lab.qat.`, or nothing at the top)."""
    return PydanticCustomError(
        "cross_field", "{reason}", {"field": field, "reason": reason, "fix": fix}
    )


class Settings(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Data(Settings):
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


class Model(Settings):
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


def _rule_of(hint: Any) -> str | None:
    """The `rule` an Annotated argument declares in its Field (json_schema_extra)."""
    for meta in getattr(hint, "__metadata__", ()):
        extra = getattr(meta, "json_schema_extra", None)
        if isinstance(extra, dict) and "rule" in extra:
            return str(extra["rule"])
    return None


def check_target_arguments(model: Settings, what: str, unset_fix: str) -> None:
    """Every key of a group is an argument of its `_target_`, of the type (and range) that
    argument declares. An argument declared `None` is one the target has no use for (a
    power-of-two setting of an engine-default qconfig): refused with `unset_fix`. Targets are
    imported by their dotted name: config/ imports nothing of quant/."""
    target = (model.model_extra or {}).get("_target_")
    if not isinstance(target, str):
        return
    try:
        init = get_object(target)
        init = init.__init__ if isinstance(init, type) else init
        hints = typing.get_type_hints(init, include_extras=True)
        hints.pop("return", None)
        defaults = {name: p.default for name, p in inspect.signature(init).parameters.items()}
    except Exception:  # an unimportable target fails in instantiate, with its own line
        return
    for key, value in (model.model_extra or {}).items():
        if key.startswith("_"):
            continue
        if key not in hints:
            raise cross_field_error(
                key, f"is not a setting of {what}", f"choose one of {', '.join(hints)}"
            )
        if hints[key] is type(None):
            if value is None:
                continue
            raise cross_field_error(key, f"is not a setting of {what}", unset_fix)
        example = defaults.get(key)
        try:
            TypeAdapter(hints[key], config=ConfigDict(strict=True)).validate_python(value)
        except ValidationError as error:
            reason = _rule_of(hints[key]) or _reason(error.errors()[0])
            raise cross_field_error(
                key, reason, f"e.g. {{group}}{key}={format_value(example)}"
            ) from None


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


class Backend(Settings):
    """A backend's settings are its constructor's arguments, declared with their types and
    defaults by each backend class itself (quant/<name>/backend.py), so a new backend declares
    its own and this schema names none of them."""

    @model_validator(mode="after")
    def _arguments_of_the_target(self) -> Backend:
        target = (self.model_extra or {}).get("_target_")
        check_target_arguments(self, str(target), "leave it unset")
        return self


class Lab(Settings):
    qconfigs: list[QConfigName] = setting(["pot"], min_length=1)
    backends: list[BackendName] = setting(["eager"], min_length=1)
    ptq: Quant = setting("ptq", default=...)
    qat: Quant = setting("qat", default=...)
    export: bool = setting(True)  # labquant-export on each power-of-two stage
    golden: NonNegInt = setting(8)


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


def root_model(settings: dict[str, Any]) -> type[Settings]:
    """The schema of an app's composed config, told apart by the groups only it has."""
    for key, model in (
        ("sections", BenchSettings),
        ("lab", LabSettings),
        ("budget", SensitivitySettings),
        ("stage_dir", ExportSettings),
    ):
        if key in settings:
            return model
    return QuantizeSettings if "quant" in settings else TrainSettings


def format_value(value: Any) -> str:
    """A value as written on the command line: `null`, `true`, `[1,2]`, `{a:1}`, `'0.1'`."""
    if value is None or isinstance(value, bool):
        return str(value).lower().replace("none", "null")
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):  # quoted where it would otherwise read as a number, bool or null
        try:
            float(value)
            return f"'{value}'"
        except ValueError:
            return f"'{value}'" if value.lower() in ("", "true", "false", "null") else value
    return str(value)


def _lookup(tree: Any, path: list[str]) -> Any:
    for part in path:
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _locate(data: Any, loc: tuple[Any, ...], missing: bool) -> tuple[list[str], bool]:
    """The dotted setting a pydantic location names, and whether the error is in a list item.

    Union members add tags (`constrained-int`) that name no key: skipped. The path stops at a
    list: the whole list is the setting the user wrote.
    """
    path: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(data, list):
            return path, True
        if isinstance(data, dict) and part in data:
            path.append(str(part))
            data = data[part]
        elif missing and i == len(loc) - 1:
            path.append(str(part))
    return path, False


def _extra(model: Any, path: list[str]) -> dict[str, Any]:
    """The example and rule declared with a dotted setting ({} for an undeclared key)."""
    field = None
    for part in path:
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return {}
        types = (field.annotation, *getattr(field.annotation, "__args__", ()))
        model = next((t for t in types if isinstance(t, type) and issubclass(t, BaseModel)), None)
    extra = field.json_schema_extra if field is not None else None
    return extra if isinstance(extra, dict) else {}


COMPARISONS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}
COMPARISONS["less_than_equal"] = "<="
REASONS = {
    "missing": "is missing",
    "int_type": "is not an integer",
    "int_from_float": "is not an integer",
    "float_type": "is not a number",
    "bool_type": "is not true or false",
    "string_type": "is not a string",
    "list_type": "is not a list",
    "model_type": "is not a group of settings",
    "string_too_short": "is empty",
    "too_short": "needs at least one item",
}


def _reason(error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in COMPARISONS:
        bound = next(iter(ctx.values()))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"must be {COMPARISONS[kind]} {bound}"
    if kind == "literal_error":
        return "must be " + ctx["expected"].replace("'", "")
    return REASONS.get(kind) or error["msg"][:1].lower() + error["msg"][1:]


def settings_error(error: Any, data: dict[str, Any], model: type[Settings]) -> str:
    """`<setting>=<value> <what is wrong>; <fix>` for one pydantic error."""
    ctx, missing = error.get("ctx") or {}, error["type"] == "missing"
    path, in_list = _locate(data, tuple(error["loc"]), missing)
    group = "".join(f"{p}." for p in path)
    if "field" in ctx:  # a cross-field check names its field below the model that raised it
        path += ctx["field"].split(".")
    name, extra = ".".join(path) or "settings", _extra(model, path)
    reason = ctx["reason"].replace("{group}", group) if "field" in ctx else _reason(error)
    if not missing and "field" not in ctx and "rule" in extra:
        reason = extra["rule"]
    elif in_list:
        reason = f"item {format_value(error['input'])} {reason}"
    fix = ctx["fix"].replace("{group}", group) if "fix" in ctx else f"check {name}"
    if "example" in extra and "fix" not in ctx:
        fix = f"e.g. {name}={format_value(extra['example'])}"
    shown = name if missing else f"{name}={format_value(_lookup(data, path))}"
    return " ".join(f"{shown} {reason}; {fix}".split())


def _plain(node: Any, path: str, unresolved: dict[str, Exception]) -> Any:
    """`OmegaConf.to_container(node, resolve=True)` less the `hydra` key and each value that
    cannot be resolved (noted in `unresolved`), so a wrong setting it refers to is named first."""
    if not isinstance(node, DictConfig | ListConfig):
        return node
    keys: Iterable[Any] = node.keys() if isinstance(node, DictConfig) else range(len(node))
    plain: dict[Any, Any] = {}
    for key in keys:
        name = f"{path}.{key}" if path else str(key)
        if name == "hydra":
            continue
        try:
            plain[key] = _plain(node[key], name, unresolved)
        except (InterpolationResolutionError, MissingMandatoryValue) as error:
            unresolved[name] = error
    return plain if isinstance(node, DictConfig) else list(plain.values())


def validate_settings(cfg: DictConfig) -> None:
    """Check a composed app config (train, quantize, lab or bench) against the schema; raise
    ConfigError with one line for the first error. `${hydra:...}` values are left unchecked
    where no Hydra run is set up (tests, the compose API)."""
    unresolved: dict[str, Exception] = {}
    data = _plain(cfg, "", unresolved)
    raw = OmegaConf.to_container(cfg, resolve=False)
    model = root_model(data)
    try:
        model.model_validate(data)
    except ValidationError as failure:

        def interpolated(error: Any) -> bool:  # blame the setting it refers to first
            path = _locate(data, tuple(error["loc"]), error["type"] == "missing")[0]
            return "${" in str(_lookup(raw, path))

        first = sorted(failure.errors(), key=interpolated)[0]
        raise ConfigError(settings_error(first, data, model)) from None
    for name, error in unresolved.items():
        path = name.split(".")
        if isinstance(error, MissingMandatoryValue):
            example = _extra(model, path).get("example", "<value>")
            raise ConfigError(f"{name} is missing; e.g. {name}={format_value(example)}")
        if "HydraConfig was not set" not in str(error):
            why = str(error).splitlines()[0]
            value = format_value(_lookup(raw, path))
            raise ConfigError(f"{name}={value} cannot be resolved ({why}); check what it refers to")
