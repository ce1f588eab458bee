"""labquant-export refuses what it cannot export with one line, before any work (in process:
a subprocess per case costs a torch import)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from labquant.cli import export as cli_export
from labquant.cli.app import run_job
from labquant.config.paths import CONF_DIR
from labquant.errors import ConfigError
from labquant.tasks.export import export

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it


def export_cfg(tmp_path, **overrides):
    cfg = {
        "task_name": "export",
        "stage_dir": str(tmp_path / "ptq_x86"),
        "golden": 0,
        "rounding": "half_even",
        "images": None,
        "data_root": None,
        "overwrite": False,
        "paths": {"output_dir": str(tmp_path / "ptq_x86" / "export")},
    }
    return OmegaConf.create({**cfg, **overrides})


def test_a_non_power_of_two_stage_is_refused(tmp_path) -> None:
    stage = tmp_path / "ptq_x86"
    (stage / ".hydra").mkdir(parents=True)
    (stage / "results.json").write_text(
        json.dumps({"status": "complete", "stage": "ptq", "qconfig": "x86"})
    )
    qconfig = {"_target_": "labquant.quant.qconfigs.engine_default", "name": "x86", "engine": "x86"}
    OmegaConf.save({"qconfig": qconfig, "backend": {"name": "eager"}}, stage / ".hydra/config.yaml")
    with pytest.raises(ConfigError, match=r"^stage_dir=.*qconfig=x86, not a power-of-two"):
        export(export_cfg(tmp_path))
    assert not (stage / "export").exists()


def test_a_pt2e_fused_stage_is_refused(tmp_path) -> None:
    """backend=pt2e_fused adds each residual add into its conv's accumulator, an op the integer
    program does not have: one line, before any file is read or written."""
    stage = tmp_path / "ptq_pot_unsigned_pt2e_fused"
    (stage / ".hydra").mkdir(parents=True)
    (stage / "results.json").write_text(
        json.dumps({"status": "complete", "stage": "ptq", "qconfig": "pot_unsigned"})
    )
    qconfig = OmegaConf.load(CONF_DIR / "qconfig/pot_unsigned.yaml")
    backend = OmegaConf.load(CONF_DIR / "backend/pt2e_fused.yaml")
    OmegaConf.save({"qconfig": qconfig, "backend": backend}, stage / ".hydra/config.yaml")
    with pytest.raises(
        ConfigError, match=r"^stage_dir=.*backend=pt2e_fused has no integer export; quantize with"
    ):
        export(export_cfg(tmp_path, stage_dir=str(stage)))
    assert not (stage / "export").exists()


def test_bad_settings_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^rounding=nearest must be half_even or half_up"):
        export(export_cfg(tmp_path, rounding="nearest"))
    with pytest.raises(ConfigError, match="holds no complete quantize stage"):
        export(export_cfg(tmp_path))


def test_missing_stage_dir_is_one_line_exit_2(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["labquant-export", "golden=2"])
    with pytest.raises(SystemExit) as exit_info:
        cli_export.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "labquant-export: error: stage_dir is missing; e.g. stage_dir=outputs/<lab>/ptq_pot"
    )


@pytest.fixture
def lab_copy(tiny_lab: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_lab, tmp_path / "lab"))


def damage(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # what a full disk or a cut copy leaves


@pytest.mark.parametrize(
    ("stage", "harm", "needles"),
    [
        ("fp32", None, ["is an FP32 stage, not an int8 one"]),
        ("ptq_pot", damage, ["model_int8_state_dict.pt is damaged", "redo that stage"]),
        ("ptq_pot", Path.unlink, ["model_int8_state_dict.pt is missing"]),
    ],
)
def test_an_fp32_stage_or_a_damaged_int8_file_is_one_line_exit_2(
    lab_copy: Path, stage: str, harm, needles: list[str], capsys
) -> None:
    """Today's main: a FileNotFoundError / PytorchStreamReader traceback and exit 1."""
    if harm is not None:
        harm(lab_copy / stage / "model_int8_state_dict.pt")
    out = lab_copy / stage / "export"
    cfg = export_cfg(lab_copy, stage_dir=str(lab_copy / stage), paths={"output_dir": str(out)})
    with pytest.raises(SystemExit) as exit_info:
        run_job(export, cfg, "labquant-export")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"labquant-export: error: stage_dir={lab_copy / stage}") and "\n" not in err
    )
    assert all(needle in err for needle in needles), err
    assert not (out / "results.json").exists()
