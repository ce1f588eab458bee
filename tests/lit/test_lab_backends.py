"""A `lab.backends` entry is its option name (conf/backend/<name>.yaml), not its class: pt2e and
pt2e_fused share PT2EBackend, and `backend=pt2e lab.backends=[pt2e,pt2e_fused]` runs one plain
and one fused backend, each in its own stage folders and recording its own settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from labquant.config import paths
from labquant.config.groups import group_choices, load_group_option
from labquant.config.instantiate import instantiate
from labquant.errors import ConfigError
from labquant.tasks.fingerprint import run_settings
from labquant.tasks.lab import (
    lab_backend,
    qconfig_entry,
    quant_stages,
    run_stage,
    stage_config,
)
from labquant.tasks.quantize import quantize
from labquant.tasks.train import fit_fp32
from tests.conftest import SHORTEST_LAB, TINY, compose_config
from tests.quant.toy_backend import RoundedWeightsBackend

# The stage folder suffixes: eager's folders are the lab's names from before PT2E.
SUFFIXES = {"eager": "", "pt2e": "_pt2e", "pt2e_fused": "_pt2e_fused"}
# Smaller than TINY: the real stages below take seconds
SMALLER = ["data.num_train=256", "data.num_test=128", "data.val_size=64", "model.layers=[1,1]"]
BOTH = ["backend=pt2e", "backend.compile=false", "lab.backends=[pt2e,pt2e_fused]"]


def lab_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    return compose_config("lab", [*overrides, "lab.qconfigs=[pot_unsigned]"], tmp_path / "lab")


def planned_stages(
    cfg: DictConfig, tmp_path: Path, checkpoint: str = "best.ckpt"
) -> dict[str, DictConfig]:
    """{stage name: stage config} the lab would run from an FP32 checkpoint (none needed)."""
    qconfigs = dict(qconfig_entry(cfg, entry) for entry in cfg.lab.qconfigs)
    backends = {name: lab_backend(cfg, name) for name in cfg.lab.backends}
    stages = quant_stages(cfg, tmp_path / "lab", qconfigs, backends, checkpoint)
    return {name: stage for name, _, stage in stages}


def test_every_backend_option_is_named_by_its_file() -> None:
    assert set(SUFFIXES) <= set(group_choices("backend"))
    for option in group_choices("backend"):
        cfg = load_group_option("backend", option)
        assert cfg.name == option, f"conf/backend/{option}.yaml: name: {cfg.name}"
        backend = instantiate(cfg, f"backend={option}")
        assert backend.name == option
        if option in SUFFIXES:  # stage folder names must not change
            assert backend.stage_suffix == SUFFIXES[option]


def test_the_composed_backend_replaces_only_its_own_option(tmp_path: Path) -> None:
    """The defect: matched by `_target_`, both entries were the composed plain pt2e."""
    cfg = lab_cfg(tmp_path, *BOTH)
    plain, fused = lab_backend(cfg, "pt2e"), lab_backend(cfg, "pt2e_fused")
    assert plain.cfg is cfg.backend and not plain.backend.compile  # the user's override
    assert (plain.backend.name, plain.backend.fuse_residual_add) == ("pt2e", False)
    assert (fused.backend.name, fused.backend.fuse_residual_add) == ("pt2e_fused", True)
    assert fused.cfg == load_group_option("backend", "pt2e_fused")  # its YAML, compile: true
    assert fused.backend.compile and not fused.backend.onnx


def test_each_stage_runs_and_records_its_own_backend(tmp_path: Path) -> None:
    stages = planned_stages(lab_cfg(tmp_path, *BOTH), tmp_path)
    assert list(stages) == [
        "ptq_pot_unsigned_pt2e",
        "qat_pot_unsigned_pt2e",
        "ptq_pot_unsigned_pt2e_fused",
        "qat_pot_unsigned_pt2e_fused",
    ]
    for name, stage in stages.items():
        fused = name.endswith("_fused")
        assert stage.backend.name == ("pt2e_fused" if fused else "pt2e")
        settings = run_settings(stage, "quantize")
        assert settings["backend.fuse_residual_add"] is fused, name
        assert settings["backend.compile"] is fused, name  # backend.compile=false: pt2e's only
        assert settings["backend.stage_suffix"] == ("_pt2e_fused" if fused else "_pt2e")


FUSED = ["backend=pt2e_fused", "backend.compile=false"]


@pytest.mark.parametrize(
    ("overrides", "composed"),
    [
        ([*FUSED, "lab.backends=[pt2e,pt2e_fused]"], "pt2e_fused"),
        ([*FUSED, "lab.backends=[eager,pt2e]"], None),  # the composed one is no entry
        (["lab.backends=[eager,pt2e]"], "eager"),
    ],
)
def test_other_compositions_keep_each_entry_its_own(
    tmp_path: Path, overrides: list[str], composed: str | None
) -> None:
    cfg = lab_cfg(tmp_path, *overrides)
    for name in cfg.lab.backends:
        entry = lab_backend(cfg, name)
        assert entry.backend.name == name
        if name == composed:
            assert entry.cfg is cfg.backend
        else:
            assert entry.cfg == load_group_option("backend", name)


def test_a_backend_yaml_named_otherwise_is_a_one_line_error(tmp_path: Path) -> None:
    """Without `name:` a PT2EBackend file would call itself pt2e and share pt2e's folders."""
    mine = tmp_path / "backend" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text("_target_: labquant.quant.pt2e.backend.PT2EBackend\nfuse_residual_add: true\n")
    cfg = lab_cfg(tmp_path, "backend=pt2e")
    with pytest.raises(ConfigError, match=r"^lab.backends=.*mine.yaml: that backend is named "):
        lab_backend(cfg, str(mine))
    mine.write_text(f"{mine.read_text()}name: mine\nstage_suffix: _mine\n")
    entry = lab_backend(cfg, str(mine))
    assert (entry.backend.name, entry.backend.stage_suffix) == ("mine", "_mine")


def test_a_backend_named_by_its_class_is_known_when_composed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A YAML with no `name:` (tests/quant/test_seam.py's toy.yaml): its class's name."""
    conf = Path(shutil.copytree(paths.CONF_DIR, tmp_path / "conf"))
    target = f"{RoundedWeightsBackend.__module__}.{RoundedWeightsBackend.__qualname__}"
    (conf / "backend" / "toy.yaml").write_text(f"_target_: {target}\n")
    monkeypatch.setattr(paths, "CONF_DIR", conf)
    cfg = lab_cfg(tmp_path)
    cfg.backend = OmegaConf.create({"_target_": target})  # as `backend=toy` composes it
    assert lab_backend(cfg, "toy").cfg is cfg.backend
    assert lab_backend(cfg, "eager").cfg == load_group_option("backend", "eager")


@pytest.mark.slow  # trains FP32 and quantizes for real (~30 s; a whole lab's QAT is minutes)
def test_the_stages_of_pt2e_and_pt2e_fused_record_their_own_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FP32, then the PTQ stage of each entry as the lab runs it: one plain and one fused, each
    in its own folder with its own results.json `backend` and recorded settings."""
    # pt2e_fused comes from its YAML: a copy of conf/ where it skips Inductor's compile (30-60 s
    # a batch shape on 2 cores), as backend.compile=false does for the composed pt2e
    conf = Path(shutil.copytree(paths.CONF_DIR, tmp_path / "conf"))
    fused_yaml = conf / "backend" / "pt2e_fused.yaml"
    fused_yaml.write_text(fused_yaml.read_text().replace("compile: true", "compile: false"))
    monkeypatch.setattr(paths, "CONF_DIR", conf)
    cfg = lab_cfg(tmp_path, *TINY, *SMALLER, *SHORTEST_LAB, *BOTH, "backend.onnx=false")
    fp32_dir = tmp_path / "lab" / "fp32"
    fp32 = run_stage("fp32", fp32_dir, fit_fp32, stage_config(cfg, fp32_dir), "fp32")
    stages = planned_stages(cfg, tmp_path, str(fp32_dir / fp32["checkpoint"]))
    ptq = {name: stage for name, stage in stages.items() if name.startswith("ptq_")}
    assert list(ptq) == ["ptq_pot_unsigned_pt2e", "ptq_pot_unsigned_pt2e_fused"]
    for name, stage in ptq.items():
        stage_dir = Path(stage.paths.output_dir)
        assert stage_dir == tmp_path / "lab" / name
        backend, fused = ("pt2e_fused", True) if name.endswith("_fused") else ("pt2e", False)
        run_stage(name, stage_dir, quantize, stage, "quantize")
        results = json.loads((stage_dir / "results.json").read_text())
        assert results["status"] == "complete"
        assert results["backend"] == results["settings"]["backend.name"] == backend
        assert results["settings"]["backend.fuse_residual_add"] is fused
        saved = OmegaConf.load(stage_dir / ".hydra" / "config.yaml")  # what labquant-export reads
        assert (saved.backend.name, saved.backend.fuse_residual_add) == (backend, fused)
