"""The backend seam (quant/backend.py): the two real backends implement its protocols, and a
PTQ-only backend is one module plus one YAML that the lab runs with nothing else changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from labquant.config import paths
from labquant.errors import ConfigError
from labquant.quant.backend import (
    Artifacts,
    IntegerExporter,
    QATQuantizer,
    QuantBackend,
    Quantizer,
    check_mode,
)
from labquant.quant.eager import EagerBackend
from labquant.quant.pt2e.backend import PT2EBackend
from tests.conftest import SHORTEST_LAB, TINY, compose_config
from tests.quant.toy_backend import RoundedWeightsBackend


def test_each_backend_declares_what_it_implements() -> None:
    eager, pt2e, toy = EagerBackend(), PT2EBackend(), RoundedWeightsBackend()
    for backend in (eager, pt2e, toy):
        assert isinstance(backend, Quantizer) and isinstance(backend, Artifacts)
        assert isinstance(backend, QuantBackend)
    assert isinstance(eager, QATQuantizer) and isinstance(pt2e, QATQuantizer)
    assert not isinstance(toy, QATQuantizer)
    assert isinstance(eager, IntegerExporter) and not isinstance(toy, IntegerExporter)
    check_mode(eager, "qat")
    with pytest.raises(
        ConfigError, match=r"^backend=toy does not support quant=qat \(it offers ptq\)"
    ):
        check_mode(toy, "qat")


@pytest.fixture
def conf_with_toy_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of conf/ with one more file, conf/backend/toy.yaml: all a new backend adds."""
    conf = Path(shutil.copytree(paths.CONF_DIR, tmp_path / "conf"))
    target = f"{RoundedWeightsBackend.__module__}.{RoundedWeightsBackend.__qualname__}"
    (conf / "backend" / "toy.yaml").write_text(f"_target_: {target}\n")
    monkeypatch.setattr(paths, "CONF_DIR", conf)
    return conf


@pytest.mark.slow  # a whole lab
def test_the_lab_runs_a_ptq_only_backend_with_its_modes_only(
    conf_with_toy_backend: Path, tmp_path: Path
) -> None:
    lab_dir = tmp_path / "lab"
    overrides = [*TINY, *SHORTEST_LAB, "lab.backends=[eager,toy]"]
    try:
        from labquant.tasks.lab import run_lab

        report = run_lab(compose_config("lab", overrides, lab_dir))
    finally:
        GlobalHydra.instance().clear()
    assert [(row["dir"], row["backend"]) for row in report["rows"]] == [
        ("fp32", None),
        ("ptq_pot", "eager"),
        ("qat_pot", "eager"),
        ("ptq_pot_toy", "toy"),  # and no qat_pot_toy: the toy backend offers ptq only
    ]
    toy = json.loads((lab_dir / "ptq_pot_toy" / "results.json").read_text())
    assert toy["backend"] == "toy" and toy["status"] == "complete"
    assert (lab_dir / "ptq_pot_toy" / toy["int8_toy"]).is_file()
    assert not (lab_dir / "qat_pot_toy").exists()
    assert "| PTQ | toy |" in (lab_dir / "report.md").read_text()
