"""Bad input at the command line: one clear line naming the setting, exit 2, nothing written."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY

BIN = Path(sys.executable).parent


def write_cifar_folder(root: Path, images_per_file: int = 20) -> Path:
    """A valid, tiny cifar-10-batches-py folder (random pixels, labels 0..9)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, images_per_file)],
            b"data": rng.integers(0, 256, (images_per_file, 3072), dtype=np.uint8),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder


def run_cli(
    *args: str, run_dir: Path, module: bool = False, prog: str = "labquant-train"
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "labquant.train"] if module else [str(BIN / prog)]
    return subprocess.run(
        [*command, *args, f"hydra.run.dir={run_dir}", "callbacks.progress_bar=null"],
        capture_output=True,
        text=True,
        timeout=240,
    )


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], *needles: str, prog: str = "labquant-train"
) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-2000:]
    line = errors[0]
    assert line.startswith(f"{prog}: error: ")
    for needle in needles:
        assert needle in line, line
    return line


def assert_nothing_written(run_dir: Path) -> None:
    assert not (run_dir / "results.json").exists()
    assert not (run_dir / "checkpoints").exists()
    assert not list(run_dir.glob("*.pt"))


def test_missing_data_root(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("data=cifar10", f"data.root={tmp_path / 'nowhere'}", run_dir=run_dir)
    assert_one_line_error(result, "data.root", "data.download=true")
    assert_nothing_written(run_dir)


def test_truncated_batch_file_is_named(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path / "data")
    victim = folder / "data_batch_3"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    run_dir = tmp_path / "run"
    result = run_cli("data=cifar10", f"data.root={tmp_path / 'data'}", run_dir=run_dir)
    assert_one_line_error(result, "data_batch_3")
    assert_nothing_written(run_dir)


def test_unknown_model_lists_choices(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("model=resnet19", run_dir=run_dir)
    assert_one_line_error(result, "model=resnet19", "resnet18", "small")
    assert not run_dir.exists()  # refused before Hydra made the run folder


def test_negative_learning_rate(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("data=synthetic", "optimizer.lr=-0.1", run_dir=run_dir, module=True)
    assert_one_line_error(result, "optimizer.lr=-0.1")
    assert_nothing_written(run_dir)


@pytest.mark.parametrize("warmup", [5, 8])
def test_warmup_not_below_max_epochs(tmp_path: Path, warmup: int) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        "data=synthetic",
        "trainer.max_epochs=5",
        f"scheduler.warmup_epochs={warmup}",
        run_dir=run_dir,
    )
    assert_one_line_error(result, f"scheduler.warmup_epochs={warmup}", "trainer.max_epochs")
    assert_nothing_written(run_dir)


# --- labquant-quantize

QUANTIZE = "labquant-quantize"


def test_quantize_without_ckpt_path(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("data=synthetic", run_dir=run_dir, prog=QUANTIZE)
    assert_one_line_error(result, "ckpt_path", "labquant-train", prog=QUANTIZE)
    assert_nothing_written(run_dir)


def test_quantize_with_zero_calibration_batches(tmp_path: Path, tiny_fp32_run) -> None:
    fp32, run = tiny_fp32_run
    run_dir = tmp_path / "run"
    result = run_cli(
        *TINY,
        f"ckpt_path={run / fp32['checkpoint']}",
        "quant.calibration_batches=0",
        run_dir=run_dir,
        prog=QUANTIZE,
    )
    assert_one_line_error(result, "quant.calibration_batches=0", prog=QUANTIZE)
    assert_nothing_written(run_dir)


def test_quantize_checkpoint_of_another_architecture(tmp_path: Path, tiny_fp32_run) -> None:
    fp32, run = tiny_fp32_run
    run_dir = tmp_path / "run"
    result = run_cli(
        *TINY,
        "model.base_width=16",
        f"ckpt_path={run / fp32['checkpoint']}",
        run_dir=run_dir,
        prog=QUANTIZE,
    )
    assert_one_line_error(result, "ckpt_path=", "base_width=8", "base_width=16", prog=QUANTIZE)
    assert_nothing_written(run_dir)


def test_diverging_learning_rate_stops_with_epoch_step_and_lr(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, "trainer.max_epochs=3", "optimizer.lr=1e4", run_dir=run_dir)
    line = assert_one_line_error(result, "training diverged", "epoch 0", "optimizer.lr")
    assert " step " in line
    assert not (run_dir / "results.json").exists()
    assert not (run_dir / "checkpoints").exists()  # stopped before the first epoch ended
