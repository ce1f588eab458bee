"""A run that fails once work has started says so in results.json (status "failed", the error)
and keeps its last good checkpoint; a config error found before any work writes nothing; a
complete results.json is never replaced by a failed one unless overwrite=true."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from labquant.cli.app import run_job
from labquant.errors import ConfigError, DataError, TrainingDiverged
from labquant.run_lock import LOCK_NAME
from labquant.tasks.runner import write_failure
from tests.conftest import TINY
from tests.reliability.faults import PoisonWeightsAt, fault_overrides
from tests.reliability.runs import (
    FP32_METRICS,
    FP32_RUN,
    TRAIN,
    assert_ok,
    assert_one_line_error,
    output,
    results,
    run_cli,
)

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it

COMPLETE = {"status": "complete", "test_acc": 91.5}

# --- through the command line


@pytest.mark.slow
def test_divergence_after_a_good_epoch_keeps_the_last_good_checkpoint(
    fp32_reference: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    poisoned = run_cli(
        TRAIN, *FP32_RUN, *fault_overrides("poison", PoisonWeightsAt, epoch=1), run_dir=run_dir
    )
    line = assert_one_line_error(poisoned, "training diverged", "epoch 1", "optimizer.lr")
    record = results(run_dir)
    assert record["status"] == "failed" and record["error_type"] == "TrainingDiverged"
    assert record["error"] == line.removeprefix("labquant-train: error: ")

    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 0  # epoch 0's, not overwritten by the diverged epoch 1
    weights = [v for v in last["state_dict"].values() if v.is_floating_point()]
    assert weights and all(torch.isfinite(v).all() for v in weights)

    # The kept checkpoint finishes the run: exactly as if it had never failed.
    resumed = run_cli(TRAIN, *FP32_RUN, "resume=true", run_dir=run_dir)
    assert_ok(resumed)
    assert "Restored all states from the checkpoint" in output(resumed)
    want, got = results(fp32_reference), results(run_dir)
    assert got["status"] == "complete"
    for key in FP32_METRICS:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


@pytest.mark.slow
def test_diverging_learning_rate_stops_with_epoch_step_and_lr(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(TRAIN, *TINY, "trainer.max_epochs=3", "optimizer.lr=1e4", run_dir=run_dir)
    line = assert_one_line_error(result, "training diverged", "epoch 0", "optimizer.lr")
    assert " step " in line
    assert results(run_dir)["status"] == "failed"
    assert not (run_dir / "checkpoints").exists()  # stopped before the first epoch ended


def test_single_run_refuses_a_folder_with_a_complete_result(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps(COMPLETE))
    result = run_cli(TRAIN, *TINY, "trainer.max_epochs=1", run_dir=run_dir)
    assert_one_line_error(result, str(run_dir), "overwrite=true")
    assert json.loads((run_dir / "results.json").read_text()) == COMPLETE
    assert not (run_dir / "checkpoints").exists()


# --- run_job's rules (cli/app.py over tasks/runner.py), in-process


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def job(out_dir: Path, overwrite: bool = False) -> DictConfig:
    out_dir.mkdir(exist_ok=True)
    return OmegaConf.create({"paths": {"output_dir": str(out_dir)}, "overwrite": overwrite})


def raising(error: BaseException) -> Callable[[DictConfig], Any]:
    def task(cfg: DictConfig) -> Any:
        raise error

    return task


@pytest.mark.parametrize(
    "error", [ConfigError("x=-1 must be > 0; e.g. x=1"), DataError("data file f is missing")]
)
def test_error_before_any_work_writes_nothing(
    out_dir: Path, capsys: pytest.CaptureFixture[str], error: Exception
) -> None:
    with pytest.raises(SystemExit) as exited:
        run_job(raising(error), job(out_dir), "labquant-train")
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"labquant-train: error: {error}\n"
    assert [p.name for p in out_dir.iterdir()] == [LOCK_NAME]  # the run's lock, nothing else


def test_user_error_during_work_is_recorded_in_one_line(
    out_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = TrainingDiverged("training diverged: loss is nan at epoch 2, step 40; lower lr")
    with pytest.raises(SystemExit) as exited:
        run_job(raising(error), job(out_dir), "labquant-train")
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"labquant-train: error: {error}\n"
    assert results(out_dir) == {
        "status": "failed",
        "error_type": "TrainingDiverged",
        "error": str(error),
    }


def test_crash_is_recorded_and_raised(out_dir: Path) -> None:
    with pytest.raises(RuntimeError, match="out of memory"):
        run_job(raising(RuntimeError("out of memory\nmore detail")), job(out_dir), "prog")
    assert results(out_dir)["status"] == "failed"
    assert results(out_dir)["error"] == "out of memory"  # the first line


def test_a_failure_never_replaces_a_complete_result_without_overwrite(out_dir: Path) -> None:
    job(out_dir)
    (out_dir / "results.json").write_text(json.dumps(COMPLETE))
    assert not write_failure(out_dir, RuntimeError("boom"))
    assert results(out_dir) == COMPLETE
    assert write_failure(out_dir, RuntimeError("boom"), overwrite=True)
    assert results(out_dir)["status"] == "failed"


def test_overwrite_run_that_fails_replaces_the_complete_result(out_dir: Path) -> None:
    cfg = job(out_dir, overwrite=True)
    (out_dir / "results.json").write_text(json.dumps(COMPLETE))
    with pytest.raises(SystemExit):
        run_job(raising(TrainingDiverged("training diverged")), cfg, "prog")
    assert results(out_dir)["status"] == "failed"  # the folder no longer claims the old result


def test_finished_lab_drops_the_failure_record_of_an_earlier_attempt(out_dir: Path) -> None:
    """A lab rerun after a failure finishes its stages; the lab folder must not go on saying
    "failed". A complete record (not written by the lab itself) is left alone."""
    from labquant.tasks.lab import clear_failure

    job(out_dir)
    write_failure(out_dir, TrainingDiverged("training diverged"))
    clear_failure(out_dir)
    assert not (out_dir / "results.json").exists()
    (out_dir / "results.json").write_text(json.dumps(COMPLETE))
    clear_failure(out_dir)
    assert results(out_dir) == COMPLETE
