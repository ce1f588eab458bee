"""kill -9 at a deterministic point, then `resume=true` in the same folder: the run must end
exactly where an uninterrupted run ends, and its metrics.csv must hold every epoch once.

Data order and augmentation depend only on (seed, epoch), so an exact match is expected.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from tests.reliability.faults import SigkillAt, fault_overrides
from tests.reliability.runs import (
    FP32_METRICS,
    FP32_RUN,
    PT2E_QAT_RUN,
    QAT_METRICS,
    QAT_RUN,
    QUANTIZE,
    TRAIN,
    assert_ok,
    assert_same_csv,
    csv_rows,
    epochs_logged,
    output,
    results,
    run_cli,
)

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it

# Both runs last 3 epochs of 16 batches. mid_epoch loses 6 batches of epoch 1 (resumes from
# epoch 0's last.ckpt); boundary dies as epoch 2 starts (resumes from epoch 1's).
KILL_POINTS = {"mid_epoch": {"epoch": 1, "batch": 5}, "boundary": {"epoch": 2}}
RESTORED = "Restored all states from the checkpoint"


def kill_then_resume(module: str, overrides: list[str], run_dir: Path, kill_at: str) -> str:
    """Run until SigkillAt fires, check what the kill left, resume; return the resumed output."""
    point = KILL_POINTS[kill_at]
    killer = fault_overrides("killer", SigkillAt, **point)
    killed = run_cli(module, *overrides, *killer, run_dir=run_dir)
    assert killed.returncode == -signal.SIGKILL, output(killed)[-3000:]
    assert not (run_dir / "results.json").exists()
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    assert last["epoch"] == point["epoch"] - 1  # the last finished epoch, nothing later

    resumed = run_cli(module, *overrides, "resume=true", run_dir=run_dir)
    assert_ok(resumed)
    assert RESTORED in output(resumed)  # a rerun from scratch would match the numbers too
    return output(resumed)


def compare(reference: Path, run_dir: Path, keys: tuple[str, ...], label: str) -> None:
    want, got = results(reference), results(run_dir)
    print(f"\n{label}: uninterrupted {[want[k] for k in keys]} / resumed {[got[k] for k in keys]}")
    for key in keys:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    rows = csv_rows(run_dir)
    assert epochs_logged(rows) == [0, 1, 2]  # every epoch exactly once, none lost to the kill
    assert_same_csv(csv_rows(reference), rows)
    assert (run_dir / "loss_accuracy.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", sorted(KILL_POINTS))
def test_fp32_run_killed_and_resumed_ends_like_an_uninterrupted_run(
    fp32_reference: Path, tmp_path: Path, kill_at: str
) -> None:
    run_dir = tmp_path / "run"
    kill_then_resume(TRAIN, FP32_RUN, run_dir, kill_at)
    compare(fp32_reference, run_dir, FP32_METRICS, f"FP32 {kill_at}")
    want = torch.load(fp32_reference / "model_fp32_state_dict.pt")
    got = torch.load(run_dir / "model_fp32_state_dict.pt")
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)


def _int8_tensors(state_dict: dict) -> dict[str, torch.Tensor]:
    """Integer values of every tensor, packed (linear weight, bias) pairs included."""
    flat: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        values = value if isinstance(value, tuple) else (value,)
        for i, item in enumerate(values):
            if isinstance(item, torch.Tensor):
                flat[f"{key}.{i}"] = item.int_repr() if item.is_quantized else item
    return flat


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", sorted(KILL_POINTS))
def test_qat_run_killed_and_resumed_ends_like_an_uninterrupted_run(
    qat_reference: Path, fp32_checkpoint: str, tmp_path: Path, kill_at: str
) -> None:
    run_dir = tmp_path / "run"
    kill_then_resume(QUANTIZE, [*QAT_RUN, fp32_checkpoint], run_dir, kill_at)
    compare(qat_reference, run_dir, QAT_METRICS, f"QAT {kill_at}")
    want = _int8_tensors(torch.load(qat_reference / "model_int8_state_dict.pt"))
    got = _int8_tensors(torch.load(run_dir / "model_int8_state_dict.pt"))
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name  # the same int8 model, bit for bit


def test_val_acc_best_survives_a_restore() -> None:
    """The best validation accuracy so far comes back from a checkpoint's state_dict, and a
    checkpoint from before it was saved still loads (strictly), starting it afresh."""
    from labquant.lit.module import ClassifierModule

    def module() -> ClassifierModule:
        return ClassifierModule(net=torch.nn.Linear(2, 10), optimizer=torch.optim.SGD)

    trained = module()
    trained.val_acc_best(torch.tensor(0.7))
    checkpoint = {"state_dict": trained.state_dict()}
    restored = module()
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])
    restored.on_train_start()
    assert float(restored.val_acc_best.compute()) == pytest.approx(0.7)

    old = {"state_dict": {k: v for k, v in trained.state_dict().items() if "acc_best" not in k}}
    older = module()
    older.on_load_checkpoint(old)
    older.load_state_dict(old["state_dict"])
    assert float(older.val_acc_best.compute()) == float("-inf")


def _program_tensors(path: Path) -> dict[str, torch.Tensor]:
    from labquant.quant.pt2e.backend import load_pt2

    program = load_pt2(path)
    return {**program.state_dict, **program.constants}


@pytest.mark.slow
def test_pt2e_qat_run_killed_and_resumed_ends_like_an_uninterrupted_run(
    pt2e_qat_reference: Path, fp32_checkpoint: str, tmp_path: Path
) -> None:
    """The exported graph's observers, fake-quant switches and frozen BatchNorm come back from
    last.ckpt: the resumed run converts to the same int8 program, tensor for tensor."""
    run_dir = tmp_path / "run"
    kill_then_resume(QUANTIZE, [*PT2E_QAT_RUN, fp32_checkpoint], run_dir, "mid_epoch")
    compare(pt2e_qat_reference, run_dir, QAT_METRICS, "pt2e QAT mid_epoch")
    want = _program_tensors(pt2e_qat_reference / "model_int8.pt2")
    got = _program_tensors(run_dir / "model_int8.pt2")
    assert got.keys() == want.keys() and want
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name


# qconfig.learn_scales: every fake-quantizer's log2 threshold is a parameter; they start from 2
# calibration batches and move until quant.freeze_observer_epoch (2 of 3 epochs here).
LEARNED = ["qconfig=pot_w4a4", "qconfig.learn_scales=true", "quant.scale_lr=0.05",
           "quant.calibration_batches=2"]  # fmt: skip


def _thresholds(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if "log2_threshold" in k}


@pytest.mark.slow
def test_learned_exponent_qat_killed_and_resumed_ends_like_an_uninterrupted_run(
    fp32_checkpoint: str, tmp_path: Path
) -> None:
    """The thresholds, their frozen copies and their optimizer state come back from
    last.ckpt: the resumed run ends with the same thresholds and the same int8 model."""
    reference = tmp_path / "reference"
    assert_ok(run_cli(QUANTIZE, *QAT_RUN, *LEARNED, fp32_checkpoint, run_dir=reference))
    run_dir = tmp_path / "run"
    kill_then_resume(QUANTIZE, [*QAT_RUN, *LEARNED, fp32_checkpoint], run_dir, "mid_epoch")
    compare(reference, run_dir, QAT_METRICS, "learned-exponent QAT mid_epoch")
    want, got = _thresholds(reference), _thresholds(run_dir)
    assert want and got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
    want = _int8_tensors(torch.load(reference / "model_int8_state_dict.pt"))
    got = _int8_tensors(torch.load(run_dir / "model_int8_state_dict.pt"))
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
