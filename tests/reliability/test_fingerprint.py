"""What a result records about its settings: every key that can change it, none that cannot
(paths, logging, run controls), inputs by their contents; and the first difference, named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from labquant.errors import ConfigError
from labquant.reports.artifacts import write_json
from labquant.tasks.fingerprint import (
    first_difference,
    reuse_complete_run,
    run_settings,
)
from tests.conftest import TINY, compose_config


def settings_of(tmp_path: Path, *overrides: str, app: str = "train", stage: str = "fp32") -> dict:
    return run_settings(compose_config(app, [*TINY, *overrides], tmp_path / "run"), stage)


@pytest.mark.parametrize("app", ["train", "quantize"])
def test_nothing_recorded_names_the_run_folder(tmp_path: Path, app: str) -> None:
    """The list of left-out keys is complete: no recorded value is a path in the run folder
    (checkpoint dirpath, TensorBoard save_dir, trainer.default_root_dir, ...)."""
    stage = "fp32" if app == "train" else "quantize"
    settings = settings_of(tmp_path, app=app, stage=stage)
    run_dir = str(tmp_path / "run")
    assert [k for k, v in settings.items() if run_dir in str(v)] == []
    assert not [k for k in settings if k.split(".")[0] in ("hydra", "paths", "logger")]
    assert {"seed", "model.base_width", "optimizer.lr", "trainer.max_epochs"} <= settings.keys()
    if app == "quantize":
        assert {"quant.mode", "qconfig.max_shift_amount", "backend._target_"} <= settings.keys()


@pytest.mark.parametrize(
    "override",
    [
        "trainer.log_every_n_steps=5",
        "logger.tensorboard.name=tb",
        "callbacks.progress_bar=null",
        "trainer.enable_model_summary=true",
        "overwrite=true",
        "resume=true",
    ],
)
def test_settings_that_do_not_change_a_result_are_left_out(tmp_path: Path, override: str) -> None:
    assert settings_of(tmp_path, override) == settings_of(tmp_path)


def test_a_changed_setting_is_the_first_difference(tmp_path: Path) -> None:
    old, new = (
        settings_of(tmp_path, "model.base_width=8"),
        settings_of(tmp_path, "model.base_width=12"),
    )
    assert first_difference(old, new) == "model.base_width: 8 -> 12"
    assert first_difference(old, old) is None
    assert first_difference({"a": 1}, {"a": 1, "b": [1, 2]}) == "b: (not set) -> [1,2]"
    assert first_difference({"a": 1, "b": None}, {"a": 1}) == "b: null -> (not set)"


def test_the_lab_plan_does_not_change_a_stage(tmp_path: Path) -> None:
    """Adding a qconfig to lab.qconfigs must not redo the FP32 stage nor the other stages."""
    fp32 = [settings_of(tmp_path, f"lab.qconfigs={q}", app="lab") for q in ("[pot]", "[pot,x86]")]
    assert fp32[0] == fp32[1]
    assert "qconfig.name" not in fp32[0]  # FP32 training reads no qconfig


def test_a_checkpoint_is_recorded_by_its_contents(tmp_path: Path) -> None:
    """The same file moved is the same input; another file at the same path is not."""
    first = tmp_path / "a" / "best.ckpt"
    first.parent.mkdir()
    first.write_bytes(b"weights one")
    moved = tmp_path / "b" / "best.ckpt"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    at = {
        p: settings_of(tmp_path, f"ckpt_path={p}", app="quantize", stage="quantize")
        for p in (first, moved)
    }
    assert at[first] == at[moved]
    assert at[first]["ckpt_path"].startswith("sha256:")
    first.write_bytes(b"weights two")
    changed = settings_of(tmp_path, f"ckpt_path={first}", app="quantize", stage="quantize")
    assert first_difference(at[first], changed).startswith("ckpt_path: sha256:")


def test_a_complete_run_is_reused_only_with_equal_settings(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    settings = {"optimizer.lr": 0.1}
    assert reuse_complete_run(folder, settings, False, "job") is None  # nothing there
    write_json(folder / "results.json", {"status": "complete", "settings": settings})
    assert reuse_complete_run(folder, {"optimizer.lr": 0.1}, False, "job")["status"] == "complete"
    assert reuse_complete_run(folder, {"optimizer.lr": 0.2}, True, "job") is None  # redo
    with pytest.raises(ConfigError) as error:
        reuse_complete_run(folder, {"optimizer.lr": 0.2}, False, "job")
    assert str(error.value) == (
        "job holds a complete run with other settings (optimizer.lr: 0.1 -> 0.2); pass "
        "overwrite=true to redo it with these settings, or choose another hydra.run.dir"
    )
    write_json(folder / "results.json", {"status": "complete"})  # an older labquant's run
    with pytest.raises(ConfigError, match="whose settings were not recorded"):
        reuse_complete_run(folder, settings, False, "job")
