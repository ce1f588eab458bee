"""The six-row ablation as one real multirun: six jobs, one table, skip on rerun, FAILED rows,
submitit_local, and the SLURM launcher config."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from labquant.config.paths import CONF_DIR

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it

BIN = Path(sys.executable).parent
TINY_SWEEP = [
    "data=synthetic",
    "data.num_train=400",
    "data.num_test=200",
    "data.val_size=100",
    "data.batch_size=100",
    "model=small",
    "model.layers=[1,1,1]",
    "model.base_width=8",
    "trainer.max_epochs=2",
    "callbacks.progress_bar=null",
    "trainer.enable_model_summary=false",
]
LAB_ROWS = {  # the lab's table: lr, scheduler, weight decay, momentum
    "1": (0.1, "none", 5e-4, 0.9),
    "2": (0.1, "StepLR", 5e-4, 0.9),
    "3": (0.1, "WarmupCosineAnnealingLR", 5e-4, 0.9),
    "4": (0.01, "WarmupCosineAnnealingLR", 5e-4, 0.9),
    "5": (0.1, "WarmupCosineAnnealingLR", 0.0, 0.9),
    "6": (0.1, "WarmupCosineAnnealingLR", 5e-4, 0.8),
}


def sweep(sweep_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BIN / "labquant-train"),
            "-m",
            "experiment=ablation",
            *TINY_SWEEP,
            *args,
            f"hydra.sweep.dir={sweep_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )


def table(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "ablation.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("ablation") / "sweep"
    result = sweep(sweep_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def test_one_command_runs_six_jobs_into_one_table(basic_sweep: Path) -> None:
    jobs = sorted(p.name for p in basic_sweep.iterdir() if (p / "results.json").is_file())
    assert jobs == ["0", "1", "2", "3", "4", "5"]
    rows = table(basic_sweep)
    assert [row["#"] for row in rows] == ["1", "2", "3", "4", "5", "6"]
    for row in rows:
        lr, scheduler, wd, momentum = LAB_ROWS[row["#"]]
        hyper = (float(row["learning rate"]), float(row["weight decay"]), float(row["momentum"]))
        assert hyper == (lr, wd, momentum)
        assert row["scheduler"].startswith(scheduler)
        assert row["status"] == "ok" and row["epochs"] == "2"
        assert 0 < float(row["test acc (%)"]) <= 100
    markdown = (basic_sweep / "ablation.md").read_text()
    assert markdown.count("| ok |") == 6
    assert (basic_sweep / "ablation_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert all(any((basic_sweep / j).glob("events.out.tfevents.*")) for j in jobs)


def test_step_row_is_scaled_to_a_short_budget_and_says_so(basic_sweep: Path) -> None:
    step_row = table(basic_sweep)[1]
    assert step_row["scheduler"] == "StepLR (x0.1 at epoch 1)"  # 20 of 40 -> 1 of 2
    assert "scaled to the same fraction" in (basic_sweep / "ablation.md").read_text()


def test_rerun_into_the_same_folder_skips_complete_rows(basic_sweep: Path) -> None:
    stamps = {p: p.stat().st_mtime_ns for p in basic_sweep.glob("*/results.json")}
    result = sweep(basic_sweep)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in basic_sweep.glob("*/results.json")} == stamps
    assert "not rerun" in result.stderr + result.stdout
    assert len(table(basic_sweep)) == 6


def test_a_failed_job_does_not_lose_the_others(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = sweep(sweep_dir, "ablation=row1", "optimizer.lr=0.05,-1")
    assert result.returncode != 0
    rows = table(sweep_dir)
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"].startswith("FAILED: optimizer.lr=-1")


def test_submitit_local_launcher_runs_the_same_sweep(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep_dir = tmp_path / "sweep"
    result = sweep(
        sweep_dir,
        "hydra/launcher=submitit_local",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=15",
        "trainer.max_epochs=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table(sweep_dir)
    assert [row["#"] for row in rows] == ["1", "2", "3", "4", "5", "6"]
    assert all(row["status"] == "ok" for row in rows)


@pytest.mark.parametrize("launcher", ["slurm_gpu", "submitit_slurm"])
def test_slurm_launcher_config_composes(launcher: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(
            "train",
            ["experiment=ablation", f"hydra/launcher={launcher}", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.partition == "gpu"
    assert list(cfg.hydra.sweeper.params.keys()) == ["ablation"]
    if launcher == "slurm_gpu":  # one job per GPU
        assert cfg.hydra.launcher.gpus_per_node == 1
        assert cfg.hydra.launcher.tasks_per_node == 1
