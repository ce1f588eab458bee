"""A key that no config declares is refused on the command line, naming the closest declared
one; a real argument of a group's `_target_` stays reachable even when its YAML leaves it out."""

from __future__ import annotations

import pytest

from labquant.config.declared import check_declared_keys, target_parameters
from labquant.errors import ConfigError
from tests.conftest import TINY, compose_config


@pytest.mark.parametrize(
    ("args", "app", "closest"),
    [
        (["optimizer.lrr=0.1"], "train", "optimizer.lr"),
        (["+optimizer.lrr=0.1"], "train", "optimizer.lr"),  # Hydra's own advice, refused too
        (["qconfig.max_shift_amout=6"], "quantize", "qconfig.max_shift_amount"),
        (["lab.qat.epoch=2"], "lab", "lab.qat.epochs"),
        (["data=synthetic", "data.num_trian=10"], "train", "data.num_train"),
        (["trainer.max_epoch=2"], "train", "trainer.max_epochs"),  # a Trainer argument
        (["-m", "optimizer.lrr=0.1,0.2"], "train", "optimizer.lr"),  # a sweep is checked too
    ],
)
def test_a_mistyped_setting_names_the_closest_declared_one(
    args: list[str], app: str, closest: str
) -> None:
    key = next(a for a in args if "=" in a and "." in a.split("=")[0]).lstrip("+").split("=")[0]
    with pytest.raises(ConfigError) as error:
        check_declared_keys(args, app)
    assert str(error.value) == f"{key} is not a setting; did you mean {closest}?"


def test_a_key_in_no_group_lists_the_settings_there() -> None:
    with pytest.raises(ConfigError, match=r"^nothing\.here is not a setting; the settings there"):
        check_declared_keys(["+nothing.here=1"], "train")


def test_every_job_of_a_group_sweep_must_declare_the_key() -> None:
    """model.base_width is small's, not resnet18's: the resnet18 job would fail in Hydra."""
    assert check_declared_keys(["model=small", "model.base_width=8"], "train")
    with pytest.raises(ConfigError, match=r"^model\.base_width is not a setting"):
        check_declared_keys(["-m", "model=small,resnet18", "model.base_width=8"], "train")


def test_declared_settings_and_hydra_keys_pass_unchanged() -> None:
    args = [*TINY, "optimizer.lr=0.05", "hydra.run.dir=/tmp/x", "hydra/launcher=joblib", "-m"]
    assert check_declared_keys(args, "train") == args
    assert check_declared_keys(["stage_dir=/x", "golden=2"], "export") == [
        "stage_dir=/x",
        "golden=2",
    ]


def test_a_target_argument_missing_from_the_yaml_reaches_the_target(tmp_path) -> None:
    """`trainer.gradient_clip_val=1` is a Trainer argument conf/trainer/default.yaml leaves out:
    it is handed to Hydra as `++trainer.gradient_clip_val=1` and arrives in the config."""
    args = check_declared_keys(["trainer.gradient_clip_val=1", "optimizer.dampening=0.1"], "train")
    assert args == ["++trainer.gradient_clip_val=1", "++optimizer.dampening=0.1"]
    cfg = compose_config("train", args, tmp_path)
    assert cfg.trainer.gradient_clip_val == 1 and cfg.optimizer.dampening == 0.1


def test_a_new_callback_is_checked_against_its_own_target() -> None:
    target = "+callbacks.guard._target_=labquant.lit.callbacks.EpochTimer"
    with pytest.raises(ConfigError, match=r"^callbacks\.guard\.nope is not a setting"):
        check_declared_keys([target, "+callbacks.guard.nope=1"], "train")
    added = "+callbacks.ckpt._target_=lightning.pytorch.callbacks.ModelCheckpoint"
    assert check_declared_keys([added, "+callbacks.ckpt.every_n_epochs=2"], "train")


def test_target_parameters_follow_kwargs_into_base_classes() -> None:
    """CIFAR10DataModule hands **kwargs to TensorImageDataModule: both count."""
    names = target_parameters("labquant.data.cifar10.CIFAR10DataModule")
    assert names is not None and {"root", "download", "batch_size", "val_size"} <= names
    assert "lr" in target_parameters("torch.optim.SGD")
    assert target_parameters("no.such.module.Thing") is None  # left to instantiate's error
