"""The wheel is complete: it ships every module and the Hydra configs (labquant/conf), and the
entry points run from an install of it alone, away from the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, SHORTEST_LAB

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it

# What a wheel is built from. The build runs in a copy of these, not in the repository: an
# in-tree build leaves build/ behind, and setuptools reuses build/lib, so a module deleted from
# src/ would still reach the wheel and hide a broken one.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "src", "conf")

LAB = [
    "data=synthetic",
    "data.num_train=600",
    "data.num_test=200",
    "data.val_size=100",
    "data.batch_size=64",
    "model=small",
    "model.layers=[1]",
    "model.base_width=8",
    *SHORTEST_LAB,
    "callbacks.progress_bar=null",
    "trainer.enable_model_summary=false",
]


def _run(args: list[str], timeout: int = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"{result.args}\n{out[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(wheel, target): the repository's wheel, and a bare `pip install --target` of it."""
    tmp = tmp_path_factory.mktemp("wheel")
    tree = tmp / "tree"
    tree.mkdir()
    for name in SOURCES:
        source = REPO_ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(source, tree / name, ignore=ignore)
        else:
            shutil.copy2(source, tree / name)
    pip = [sys.executable, "-m", "pip"]
    _ok(_run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", tree]))
    (wheel,) = (tmp / "dist").glob("labquant-*.whl")
    _ok(_run([*pip, "install", "--no-deps", "--target", tmp / "site", wheel]))
    return wheel, tmp / "site"


@pytest.mark.slow
def test_wheel_ships_configs_and_runs_without_the_source_tree(
    installed_wheel: tuple[Path, Path], tmp_path: Path
) -> None:
    wheel, site = installed_wheel

    # Every module of src/labquant and every config of conf/, at labquant/conf/...
    names = set(zipfile.ZipFile(wheel).namelist())
    src = REPO_ROOT / "src"
    modules = {p.relative_to(src).as_posix() for p in (src / "labquant").rglob("*.py")}
    assert modules - names == set(), "add the missing packages to pyproject's packages list"
    configs = {
        "labquant/conf/" + p.relative_to(REPO_ROOT / "conf").as_posix()
        for p in (REPO_ROOT / "conf").rglob("*.yaml")
    }
    assert configs - names == set()
    assert {"labquant/conf/train.yaml", "labquant/conf/hydra/launcher/slurm_gpu.yaml"} <= names
    assert (site / "bin" / "labquant-train").is_file()

    # Only the target on PYTHONPATH, run from a folder outside the repository. The editable
    # install's finder (venv site-packages) comes after PYTHONPATH, so it must not win.
    env = {**os.environ, "PYTHONPATH": str(site), "HYDRA_FULL_ERROR": "1"}
    env.pop("PYTHONHOME", None)
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    def python(*args: str) -> str:
        return _ok(_run([sys.executable, *args], cwd=cwd, env=env))

    where = python(
        "-c",
        "import labquant, sys; from labquant.config.paths import CONF_DIR; "
        "print(labquant.__file__); print(CONF_DIR)",
    ).splitlines()
    module_file, conf_dir = Path(where[0]).resolve(), Path(where[1]).resolve()
    assert module_file == (site / "labquant" / "__init__.py").resolve()
    assert not module_file.is_relative_to(REPO_ROOT / "src")
    assert conf_dir == (site / "labquant" / "conf").resolve()

    job = python("-m", "labquant.cli.train", "--cfg", "job")
    assert "_target_: labquant.models.resnet" in job
    assert "task_name: train" in job

    lab_dir = tmp_path / "lab"
    python("-m", "labquant.cli.lab", *LAB, f"hydra.run.dir={lab_dir}")
    assert (lab_dir / "report.md").is_file()
