"""A result belongs to the settings it claims: a lab or sweep rerun into a finished folder reuses
only what was computed with equal settings, names the first difference otherwise, and redoes it
(with everything after it) under overwrite=true; one labquant process per run folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from labquant import run_lock
from labquant.errors import ConfigError
from labquant.tasks.lab import run_lab
from tests.conftest import REPO_ROOT, TINY, TINY_LAB, compose_config
from tests.reliability.faults import PauseAt, fault_overrides
from tests.reliability.runs import LAB, TRAIN, assert_ok, assert_one_line_error, output, run_cli

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it


def stamps(folder: Path) -> dict[str, int]:
    """Every stage file's modification time (the lab folder's own .hydra/, which Hydra writes
    at every start, and the lock aside)."""
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns
        for p in folder.glob("*/**/*")
        if p.is_file()
        and p.name != run_lock.LOCK_NAME
        and p.relative_to(folder).parts[0] != ".hydra"
    }


@pytest.fixture
def lab_copy(tiny_lab: Path, tmp_path: Path) -> Path:
    """The finished tiny lab, moved: a moved folder is the same result (paths are not settings)."""
    return Path(shutil.copytree(tiny_lab, tmp_path / "lab"))


def rerun_lab(lab_dir: Path, *overrides: str) -> dict:
    try:
        return run_lab(compose_config("lab", [*TINY_LAB, *overrides], lab_dir))
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.slow
def test_a_lab_rerun_with_another_width_is_refused_naming_it(lab_copy: Path) -> None:
    """Case 1 of the issue: today's main skips every stage and reports the width-8 results."""
    before = stamps(lab_copy)
    result = run_cli(LAB, *TINY_LAB, "model.base_width=12", run_dir=lab_copy)
    assert_one_line_error(
        result,
        f"stage fp32 ({lab_copy / 'fp32'})",
        "model.base_width: 8 -> 12",
        "overwrite=true",
        prog="labquant-lab",
    )
    assert stamps(lab_copy) == before


def test_a_lab_rerun_with_equal_or_result_neutral_settings_reuses_every_stage(
    lab_copy: Path,
) -> None:
    before = stamps(lab_copy)
    rerun_lab(lab_copy, "trainer.log_every_n_steps=7", "logger.tensorboard.name=tb")
    assert stamps(lab_copy) == before


def test_a_qat_setting_redoes_the_qat_stage_only_and_only_with_overwrite(lab_copy: Path) -> None:
    with pytest.raises(ConfigError) as error:
        rerun_lab(lab_copy, "lab.qat.epochs=2")
    assert f"stage qat_pot ({lab_copy / 'qat_pot'})" in str(error.value)
    assert "(lab.qat.epochs: 1 -> 2)" in str(error.value)  # what the user typed, not quant.*

    before = stamps(lab_copy)
    rerun_lab(lab_copy, "lab.qat.epochs=2", "overwrite=true")
    after = stamps(lab_copy)
    for stage in ("fp32", "ptq_pot"):
        assert after[f"{stage}/results.json"] == before[f"{stage}/results.json"]
    qat = json.loads((lab_copy / "qat_pot" / "results.json").read_text())
    assert qat["settings"]["quant.epochs"] == 2 and qat["status"] == "complete"
    assert sorted(p.name for p in (lab_copy / "qat_pot" / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]  # the old run's files went first: no best-v1.ckpt beside them
    report = json.loads((lab_copy / "report.json").read_text())
    assert [r["test_acc"] for r in report["rows"] if r["stage"] == "qat"] == [qat["test_acc"]]


def test_a_damaged_stage_the_lab_would_skip_is_named(lab_copy: Path) -> None:
    int8 = lab_copy / "ptq_pot" / "model_int8_state_dict.pt"
    int8.write_bytes(int8.read_bytes()[:100])
    with pytest.raises(ConfigError, match=f"^stage ptq_pot: {int8} is damaged.*overwrite=true"):
        rerun_lab(lab_copy)
    rerun_lab(lab_copy, "overwrite=true")  # redoes that stage (and only what depends on it)
    assert torch.load(int8, weights_only=True)  # whole again


def test_a_stage_from_before_settings_were_recorded_is_treated_as_different(
    lab_copy: Path,
) -> None:
    path = lab_copy / "fp32" / "results.json"
    old = json.loads(path.read_text())
    del old["settings"], old["fingerprint"]
    path.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="whose settings were not recorded"):
        rerun_lab(lab_copy)


SWEEP = [
    *TINY,
    "data.num_train=400",
    "data.num_test=200",
    "data.val_size=100",
    "data.batch_size=100",
    "trainer.max_epochs=1",
    "scheduler.warmup_epochs=0",
]


def sweep(sweep_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", TRAIN, "-m", *SWEEP, *args, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def job_lr(job: Path) -> float:
    return json.loads((job / "results.json").read_text())["settings"]["optimizer.lr"]


@pytest.mark.slow
def test_a_sweep_rerun_with_other_values_fails_those_jobs_and_keeps_their_records(
    tmp_path: Path,
) -> None:
    """Case 2 of the issue: today's main reports both jobs "not rerun" with the old results
    while Hydra rewrote their .hydra/overrides.yaml to the new values."""
    sweep_dir = tmp_path / "sweep"
    assert_ok(sweep(sweep_dir, "optimizer.lr=0.1,0.05"))
    records = {j: (sweep_dir / j / "results.json").read_text() for j in ("0", "1")}

    rerun = sweep(sweep_dir, "optimizer.lr=0.2,0.05")
    assert rerun.returncode != 0  # job 0 failed, job 1 was reused
    log = output(rerun)
    assert "other settings (optimizer.lr: 0.1 -> 0.2); pass overwrite=true" in log
    assert f"{sweep_dir / '1'} holds a complete run with these settings: not rerun" in log
    assert {j: (sweep_dir / j / "results.json").read_text() for j in ("0", "1")} == records
    assert "optimizer.lr=0.1" in (sweep_dir / "0" / ".hydra" / "overrides.yaml").read_text()

    assert_ok(sweep(sweep_dir, "optimizer.lr=0.2,0.05", "overwrite=true"))
    assert (job_lr(sweep_dir / "0"), job_lr(sweep_dir / "1")) == (0.2, 0.05)
    assert (sweep_dir / "1" / "results.json").read_text() == records["1"]  # equal: reused
    assert "optimizer.lr=0.2" in (sweep_dir / "0" / ".hydra" / "overrides.yaml").read_text()
    checkpoints = sorted(p.name for p in (sweep_dir / "0" / "checkpoints").iterdir())
    assert checkpoints == ["best.ckpt", "last.ckpt"]


@pytest.mark.slow
def test_a_second_run_into_a_folder_in_use_is_refused_and_kill_9_frees_it(
    tmp_path: Path,
) -> None:
    """Case 3 of the issue: today's main lets both runs interleave metrics.csv and TensorBoard
    and write best-v1.ckpt beside best.ckpt."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    first_args = [*TINY, "trainer.max_epochs=2", "scheduler.warmup_epochs=0"]
    pause = fault_overrides("pause", PauseAt, epoch=1, seconds=120)
    first = subprocess.Popen(
        [sys.executable, "-m", TRAIN, *first_args, *pause, f"hydra.run.dir={run_dir}"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.ckpt").exists():  # epoch 0 done: paused
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        hydra_config = (run_dir / ".hydra" / "config.yaml").read_text()
        second = run_cli(TRAIN, *TINY, "trainer.max_epochs=1", run_dir=run_dir)
        assert_one_line_error(
            second, f"{run_dir} is in use by another labquant run (pid {first.pid})"
        )
        assert (run_dir / ".hydra" / "config.yaml").read_text() == hydra_config  # untouched
        assert not list((run_dir / "checkpoints").glob("*-v1.ckpt"))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel dropped the dead run's lock: the folder can be taken again, and resumed.
    run_lock.acquire(run_dir)
    run_lock.release(run_dir)
    resumed = run_cli(TRAIN, *first_args, "resume=true", run_dir=run_dir)
    assert_ok(resumed)
    assert "Restored all states from the checkpoint" in output(resumed)


def test_the_lock_is_counted_within_a_process_and_refuses_another(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    run_lock.acquire(folder)
    run_lock.acquire(folder)  # the entry point and the task runner of one process
    probe = [sys.executable, "-c", "import sys; from labquant import run_lock; "
             "run_lock.acquire(sys.argv[1])", str(folder)]  # fmt: skip
    refused = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    assert f"is in use by another labquant run (pid {os.getpid()})" in refused.stderr
    run_lock.release(folder)
    assert subprocess.run(probe, capture_output=True, timeout=60).returncode != 0  # still held
    run_lock.release(folder)
    assert subprocess.run(probe, capture_output=True, timeout=60).returncode == 0
