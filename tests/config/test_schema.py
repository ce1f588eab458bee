"""The settings schema on the real composed configs, and one-line instantiation errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel

from labquant.config import schema
from labquant.config.apps import APPS
from labquant.config.instantiate import instantiate
from labquant.config.paths import CONF_DIR
from labquant.config.resolvers import register_resolvers
from labquant.config.schema import validate_settings
from labquant.errors import ConfigError
from tests.conftest import TINY, compose_config

Compose = Callable[..., DictConfig]


@pytest.fixture(scope="module")
def compose_app() -> Iterator[Compose]:
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):

        def compose_(name: str, *overrides: str, hydra_key: bool = False) -> DictConfig:
            return compose(name, overrides=list(overrides), return_hydra_config=hydra_key)

        yield compose_
    GlobalHydra.instance().clear()


def settings_error(cfg: DictConfig) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_settings(cfg)
    message = str(caught.value)
    assert "\n" not in message
    return message


# What each app needs set on top of its conf/<app>.yaml (a `???` there).
REQUIRED = {"export": ["stage_dir=outputs/lab/ptq_pot"]}


def app_configs() -> dict[str, object]:
    """conf/<app>.yaml -> the task_name it sets (None where it sets none)."""
    return {p.stem: OmegaConf.load(p).get("task_name") for p in sorted(CONF_DIR.glob("*.yaml"))}


@pytest.mark.parametrize("name", sorted(app_configs()))
def test_default_configs_validate(compose_app: Compose, name: str) -> None:
    validate_settings(compose_app(name, *REQUIRED.get(name, [])))


def test_every_app_has_an_entry_in_the_app_table() -> None:
    """The schema of a config is looked up by its task_name, never guessed from its keys: a new
    conf/<app>.yaml without an entry in config/apps.py's APPS fails here."""
    apps = app_configs()
    missing = {config: task for config, task in apps.items() if task not in APPS}
    assert not missing, f"conf/<app>.yaml task_name without an APPS entry: {missing}"
    assert set(APPS) == set(apps.values()), "an APPS entry no conf/<app>.yaml names"


def test_the_app_is_named_by_task_name_not_guessed(compose_app: Compose) -> None:
    """The app comes from task_name (or `app=`), not from which groups the config holds: a
    train config given a `quant` group is still checked as train."""
    cfg = compose_app("quantize")
    validate_settings(cfg)
    with pytest.raises(ConfigError, match=r"^task_name=nope is not one of train, quantize"):
        validate_settings(compose_app("train", "task_name=nope"))
    with pytest.raises(ConfigError, match=r"^task_name is missing; "):
        validate_settings(compose_app("train", "~task_name"))
    validate_settings(compose_app("train", "+quant.mode=ptq"), app="train")
    with pytest.raises(ConfigError, match=r"^quant\.mode=qatt must be ptq or qat"):
        validate_settings(compose_app("quantize", "quant.mode=qatt"))


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("train", ["data=synthetic", "model=small", "scheduler=step", "data.val_size=500"]),
        ("train", ["scheduler=none", "data.eval_batch_size=null", "trainer.precision=16"]),
        ("train", ["trainer.devices=[0,1]"]),
        ("train", ["trainer.devices=-1", "trainer.max_epochs=1"]),
        ("train", ["trainer.devices=auto", "optimizer.lr=1"]),
        ("train", ["experiment=quick"]),
        ("train", ["experiment=ablation", "ablation=row2"]),
        ("quantize", ["quant=qat", "qconfig=x86", "ckpt_path=best.ckpt"]),
        ("lab", ["experiment=quick", "lab.qconfigs=[x86,pot]", "lab.qat.epochs=3"]),
        ("bench", ["quick=true", "sections=[inference]", "inference.models=[resnet18]"]),
        # a target's own arguments that no YAML sets, of the type they declare
        ("train", ["data=synthetic", "+data.noise=0", "+data.device_resident=false"]),
        ("train", ["data=cifar10", "+data.url=https://example.org/c.tgz"]),
        ("train", ["model=resnet50", "model.stem=imagenet", "model.num_classes=100"]),
    ],
)
def test_other_valid_settings(compose_app: Compose, name: str, overrides: list[str]) -> None:
    validate_settings(compose_app(name, *overrides))


def test_the_hydra_key_is_ignored(compose_app: Compose) -> None:
    validate_settings(compose_app("train", hydra_key=True))


ERRORS = [
    # a number out of range
    ("train", ["optimizer.lr=-0.1"], "optimizer.lr=-0.1 must be > 0; e.g. optimizer.lr=0.1"),
    (
        "train",
        ["optimizer.momentum=1"],
        "optimizer.momentum=1 must be < 1; e.g. optimizer.momentum=0.9",
    ),
    ("train", ["seed=-1"], "seed=-1 must be >= 0; e.g. seed=42"),
    ("lab", ["lab.qat.lr=0"], "lab.qat.lr=0 must be > 0; e.g. lab.qat.lr=0.005"),
    (
        "lab",
        ["lab.qat.distill_weight=1.5"],
        "lab.qat.distill_weight=1.5 must be <= 1; e.g. lab.qat.distill_weight=1.0",
    ),
    (
        "quantize",
        ["quant=qat", "quant.distill_temperature=0"],
        "quant.distill_temperature=0 must be > 0; e.g. quant.distill_temperature=1.0",
    ),
    (
        "quantize",
        ["qconfig.max_shift_amount=40"],
        "qconfig.max_shift_amount=40 must be an integer in 0..31 (the shift of a power-of-two "
        "scale 2**-n); e.g. qconfig.max_shift_amount=8",
    ),
    # the power-of-two design space: its factory's declared types and ranges (quant/pot.py)
    (
        "quantize",
        ["qconfig.weight_bits=9"],
        "qconfig.weight_bits=9 must be an integer in 2..8 (code width); e.g. qconfig.weight_bits=8",
    ),
    (
        "lab",
        ["qconfig=pot_w4a8", "qconfig.activation_bits=1"],
        "qconfig.activation_bits=1 must be an integer in 2..8 (code width); "
        "e.g. qconfig.activation_bits=8",
    ),
    (
        "quantize",
        ["qconfig.range=kl"],
        "qconfig.range=kl must be minmax, percentile or mse; e.g. qconfig.range=minmax",
    ),
    (
        "quantize",
        ["qconfig.percentile=150"],
        "qconfig.percentile=150 must be a percentile in (0, 100]; e.g. qconfig.percentile=99.99",
    ),
    (
        "quantize",
        ["qconfig.exponent=nearest"],
        "qconfig.exponent=nearest must be round, floor or ceil; e.g. qconfig.exponent=round",
    ),
    (
        "quantize",
        ["qconfig=x86", "+qconfig.granularity=per_channel"],
        "qconfig.granularity=per_channel is not a setting of qconfig=x86; it applies to "
        "power-of-two qconfigs only (qconfig=x86 uses its engine's own observers): choose one, "
        "e.g. qconfig=pot_w4a8_pc, or leave it unset",
    ),
    # a wrong type: a string, a bool or a float where an integer is wanted, a string for a number
    (
        "train",
        ["data.batch_size=abc"],
        "data.batch_size=abc is not an integer; e.g. data.batch_size=128",
    ),
    (
        "train",
        ["data.batch_size=true"],
        "data.batch_size=true is not an integer; e.g. data.batch_size=128",
    ),
    (
        "train",
        ["data.batch_size=2.5"],
        "data.batch_size=2.5 is not an integer; e.g. data.batch_size=128",
    ),
    (
        "quantize",
        ["qconfig.max_shift_amount=2.5"],
        "qconfig.max_shift_amount=2.5 must be an integer in 0..31 (the shift of a power-of-two "
        "scale 2**-n); e.g. qconfig.max_shift_amount=8",
    ),
    ("train", ["optimizer.lr=abc"], "optimizer.lr=abc is not a number; e.g. optimizer.lr=0.1"),
    ("train", ["optimizer.lr='0.1'"], "optimizer.lr='0.1' is not a number; e.g. optimizer.lr=0.1"),
    (
        "train",
        ["data.pin_memory=1"],
        "data.pin_memory=1 is not true or false; e.g. data.pin_memory=null",
    ),
    # a choice, a union, a list
    (
        "train",
        ["data.augment=gpu"],
        "data.augment=gpu must be device or workers; e.g. data.augment=device",
    ),
    (
        "train",
        ["data.val_size=1.5"],
        "data.val_size=1.5 must be a count >= 1 or a fraction in (0, 1); e.g. data.val_size=0.1",
    ),
    (
        "train",
        ["model=small", "model.layers=[2,0]"],
        "model.layers=[2,0] must be a non-empty list of integers >= 1; e.g. model.layers=[2,2,2]",
    ),
    (
        "lab",
        ["lab.qconfigs=[]"],
        "lab.qconfigs=[] needs at least one item; e.g. lab.qconfigs=[pot]",
    ),
    (
        "lab",
        ["lab.qconfigs=[pot,pott]"],
        "lab.qconfigs=[pot,pott] item pott is not one of fbgemm, pot, pot_mse, pot_unsigned, "
        "pot_w4a4, pot_w4a8, pot_w4a8_pc, qnnpack, x86; "
        "e.g. lab.qconfigs=[pot]",
    ),
    # model and data: each key is an argument of the group's `_target_`, of its declared type
    (
        "train",
        ["model=resnet18", "+model.layers=[1,1,1,1]"],
        "model.layers=[1,1,1,1] is not a setting of labquant.models.resnet.resnet18; "
        "choose one of num_classes, stem",
    ),
    (  # the experiment's model.layers is small's: with model=resnet18 it is refused too
        "train",
        ["experiment=quick", "model=resnet18"],
        "model.layers=[1,1,1,1] is not a setting of labquant.models.resnet.resnet18; "
        "choose one of num_classes, stem",
    ),
    (
        "train",
        ["model=small", "+model.zero_init_residual=true"],
        "model.zero_init_residual=true is not a setting of labquant.models.resnet.small_resnet; "
        "choose one of layers, base_width, block, num_classes, stem",
    ),
    (
        "train",
        ["data=synthetic", "+data.max_shift=abc"],
        "data.max_shift=abc is not an integer; e.g. data.max_shift=8",
    ),
    (
        "train",
        ["data=synthetic", "+data.noise=low"],
        "data.noise=low is not a number; e.g. data.noise=0.15",
    ),
    # across fields, and an interpolated value blamed on the setting it copies
    (
        "train",
        ["scheduler.warmup_epochs=50"],
        "scheduler.warmup_epochs=50 must be >= 0 and < trainer.max_epochs (40); "
        "lower scheduler.warmup_epochs or raise trainer.max_epochs",
    ),
    (
        "quantize",
        ["quant=qat", "quant.warmup_epochs=7"],
        "quant.warmup_epochs=7 must be < quant.epochs (6); "
        "lower quant.warmup_epochs or raise quant.epochs",
    ),
    (
        "train",
        ["trainer.max_epochs=abc"],
        "trainer.max_epochs=abc is not an integer; e.g. trainer.max_epochs=40",
    ),
    # missing
    ("train", ["~optimizer"], "optimizer is missing; e.g. optimizer=sgd"),
    (
        "quantize",
        ["ckpt_path=???"],
        "ckpt_path is missing; e.g. ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt",
    ),
    # bench
    ("bench", ["threads=0"], "threads=0 must be >= 1; e.g. threads=2"),
    ("bench", ["sections=[]"], "sections=[] needs at least one item; e.g. sections=[inference]"),
    (
        "bench",
        ["sections=[gpux]"],
        "sections=[gpux] item gpux must be augment, train_step, inference, qat_step, sizes or "
        "gpu; e.g. sections=[inference]",
    ),
    (
        "bench",
        ["gpu.enabled=maybe"],
        "gpu.enabled=maybe must be auto, true or false; e.g. gpu.enabled=auto",
    ),
    (
        "bench",
        ["quick_settings.train_step.epochs=1"],
        "quick_settings.train_step.epochs=1 must be >= 2; e.g. quick_settings.train_step.epochs=3",
    ),
    (
        "bench",
        ["targets=[fast]"],
        "targets=[fast] must be a list of '<bench.json key> >= | <= <number>'; "
        "e.g. targets=[qat_step.ratio <= 1.6]",
    ),
]


@pytest.mark.parametrize(("name", "overrides", "expected"), ERRORS)
def test_wrong_settings_give_one_line(
    compose_app: Compose, name: str, overrides: list[str], expected: str
) -> None:
    assert settings_error(compose_app(name, *overrides)) == expected


@pytest.mark.parametrize(
    ("overrides", "start"),
    [
        (  # num_train is synthetic's: CIFAR10DataModule (and its base class) take no such key
            ["data=cifar10", "+data.num_train=5"],
            "data.num_train=5 is not a setting of labquant.data.cifar10.CIFAR10DataModule; "
            "choose one of root, download, url, md5, batch_size, ",
        ),
        (
            ["data=synthetic", "+data.root=data"],
            "data.root=data is not a setting of labquant.data.synthetic.SyntheticDataModule; "
            "choose one of num_train, num_test, noise, ",
        ),
        (
            ["data=synthetic", "+data.nois=0.1"],
            "data.nois=0.1 is not a setting of labquant.data.synthetic.SyntheticDataModule; ",
        ),
    ],
)
def test_a_data_key_the_datamodule_does_not_take_is_refused(
    compose_app: Compose, overrides: list[str], start: str
) -> None:
    """Arguments the DataModule hands to TensorImageDataModule (**kwargs) count as its own."""
    assert settings_error(compose_app("train", *overrides)).startswith(start)


def test_an_interpolation_that_fails_is_one_line(
    compose_app: Compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LABQUANT_SCHEMA_TEST_UNSET", raising=False)
    cfg = compose_app("train", "data.root=${oc.env:LABQUANT_SCHEMA_TEST_UNSET}")
    assert settings_error(cfg).startswith(
        "data.root=${oc.env:LABQUANT_SCHEMA_TEST_UNSET} cannot be resolved ("
    )


def _fields(model: type[BaseModel], seen: set[type]) -> Iterator[tuple[str, object]]:
    seen.add(model)
    for name, field in model.model_fields.items():
        yield f"{model.__name__}.{name}", field.json_schema_extra
        types = (field.annotation, *getattr(field.annotation, "__args__", ()))
        for t in types:
            if isinstance(t, type) and issubclass(t, BaseModel) and t not in seen:
                yield from _fields(t, seen)


def test_the_facade_keeps_the_names_others_import() -> None:
    assert schema.format_value([1, None]) == "[1,null]"
    assert callable(schema.check_warmup_epochs) and schema.APPS is APPS
    assert schema.TrainSettings is APPS["train"] and schema.BenchSettings is APPS["bench"]


def test_every_setting_has_an_example() -> None:
    seen: set[type] = set()
    for root in APPS.values():
        for name, extra in _fields(root, seen):
            assert isinstance(extra, dict) and "example" in extra, name


# Targets for instantiate(): hydra.utils.instantiate wraps what they raise.
def build(depth: int = 1) -> dict[str, int]:
    return {"depth": depth}


def build_with_config_error(depth: int = 1) -> None:
    raise ConfigError(f"model.depth={depth} must be >= 2; e.g. model.depth=18")


def test_instantiate_returns_the_object() -> None:
    node = OmegaConf.create({"_target_": f"{__name__}.build", "depth": 3})
    assert instantiate(node, "model") == {"depth": 3}


def test_instantiate_passes_a_user_error_through_unchanged() -> None:
    node = OmegaConf.create({"_target_": f"{__name__}.build_with_config_error", "depth": 1})
    with pytest.raises(ConfigError) as caught:
        instantiate(node, "model")
    assert str(caught.value) == "model.depth=1 must be >= 2; e.g. model.depth=18"
    assert caught.value.__cause__ is None  # the target's own error, not a wrapper


def test_instantiate_turns_other_errors_into_one_line() -> None:
    node = OmegaConf.create({"_target_": f"{__name__}.build", "width": 3})
    with pytest.raises(ConfigError) as caught:
        instantiate(node, "model")
    assert str(caught.value) == (
        f"model={__name__}.build: build() got an unexpected keyword argument 'width'; "
        "check the model.* settings"
    )


def test_instantiate_names_a_target_that_cannot_be_imported() -> None:
    node = OmegaConf.create({"_target_": "labquant_no_such_module.build"})
    with pytest.raises(ConfigError) as caught:
        instantiate(node, "backend")
    assert str(caught.value) == (
        "backend=labquant_no_such_module.build: cannot import it (No module named "
        "'labquant_no_such_module'); check the backend.* settings"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["backend=pt2e", "backend.compile=abc"],
            "backend.compile=abc is not true or false; e.g. backend.compile=true",
        ),
        (
            ["backend=pt2e", "+backend.nope=1"],
            "backend.nope=1 is not a setting of labquant.quant.pt2e.backend.PT2EBackend; "
            "choose one of compile, onnx",
        ),
        (
            ["backend=eager", "+backend.compile=true"],
            "backend.compile=true is not a setting of labquant.quant.eager.EagerBackend",
        ),
    ],
)
def test_backend_settings_are_the_backend_classes_own(tmp_path, overrides, message) -> None:
    """conf/backend/pt2e.yaml's compile / onnx are PT2EBackend's arguments: the schema names no
    backend's settings, the class declares them (types and defaults) and is checked."""
    cfg = compose_config("quantize", [*TINY, *overrides], tmp_path)
    with pytest.raises(ConfigError) as error:
        validate_settings(cfg)
    assert str(error.value).startswith(message)
