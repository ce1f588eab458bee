"""Bad input at the command line: one clear line naming the setting and the fix, exit 2,
nothing written (Hydra's own .hydra/ and log file aside)."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY
from tests.reliability.runs import assert_one_line_error

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it

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


@pytest.mark.parametrize("batches", [0, -3])
def test_quantize_with_calibration_batches_below_one(
    tmp_path: Path, tiny_fp32_run, batches: int
) -> None:
    fp32, run = tiny_fp32_run
    run_dir = tmp_path / "run"
    result = run_cli(
        *TINY,
        f"ckpt_path={run / fp32['checkpoint']}",
        f"quant.calibration_batches={batches}",
        run_dir=run_dir,
        prog=QUANTIZE,
    )
    assert_one_line_error(result, f"quant.calibration_batches={batches}", ">= 1", prog=QUANTIZE)
    assert_nothing_written(run_dir)


@pytest.mark.parametrize(
    ("override", "saved", "configured"),
    [
        ("model.base_width=16", "checkpoint: base_width=8;", "config: base_width=16"),
        ("model.num_classes=100", "checkpoint: num_classes=10;", "config: num_classes=100"),
    ],
)
def test_quantize_checkpoint_of_another_network(
    tmp_path: Path, tiny_fp32_run, override: str, saved: str, configured: str
) -> None:
    """Another architecture or another class count: the error names both sides."""
    fp32, run = tiny_fp32_run
    run_dir = tmp_path / "run"
    result = run_cli(
        *TINY, override, f"ckpt_path={run / fp32['checkpoint']}", run_dir=run_dir, prog=QUANTIZE
    )
    assert_one_line_error(result, "ckpt_path=", saved, configured, prog=QUANTIZE)
    assert_nothing_written(run_dir)


def test_train_from_a_checkpoint_of_another_class_count(tmp_path: Path, tiny_fp32_run) -> None:
    fp32, run = tiny_fp32_run
    run_dir = tmp_path / "run"
    checkpoint = run / fp32["checkpoint"]
    result = run_cli(*TINY, "model.num_classes=100", f"ckpt_path={checkpoint}", run_dir=run_dir)
    assert_one_line_error(result, f"ckpt_path={checkpoint}", "num_classes=100", "model=")
    assert_nothing_written(run_dir)


# --- damaged checkpoint files


def damaged_checkpoint(tmp_path: Path, source: Path, damage: str) -> Path:
    """A copy of a real checkpoint cut in half (a kill mid-copy), or a file that is no
    checkpoint at all."""
    path = tmp_path / f"{damage}.ckpt"
    if damage == "truncated":
        path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    else:
        path.write_text("not a checkpoint\n")
    return path


@pytest.mark.parametrize(
    ("prog", "damage"),
    [("labquant-train", "truncated"), (QUANTIZE, "truncated"), (QUANTIZE, "garbage")],
)
def test_damaged_checkpoint_file(tmp_path: Path, tiny_fp32_run, prog: str, damage: str) -> None:
    fp32, run = tiny_fp32_run
    checkpoint = damaged_checkpoint(tmp_path, run / fp32["checkpoint"], damage)
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, f"ckpt_path={checkpoint}", run_dir=run_dir, prog=prog)
    assert_one_line_error(result, f"ckpt_path={checkpoint}", "unreadable or truncated", prog=prog)
    assert_nothing_written(run_dir)


def test_resume_with_a_truncated_last_checkpoint(tmp_path: Path, tiny_fp32_run) -> None:
    fp32, run = tiny_fp32_run
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    shutil.move(damaged_checkpoint(tmp_path, run / fp32["checkpoint"], "truncated"), last)
    before = last.read_bytes()
    result = run_cli(*TINY, "resume=true", run_dir=run_dir)
    assert_one_line_error(result, "resume=true", str(last), "truncated", f"delete {last}")
    assert last.read_bytes() == before  # left for the user to inspect
    assert not (run_dir / "results.json").exists()


# --- settings out of range


def test_quantize_max_shift_amount_above_31(tmp_path: Path, tiny_fp32_run) -> None:
    fp32, run = tiny_fp32_run
    run_dir = tmp_path / "run"
    result = run_cli(
        *TINY,
        f"ckpt_path={run / fp32['checkpoint']}",
        "qconfig.max_shift_amount=32",
        run_dir=run_dir,
        prog=QUANTIZE,
    )
    assert_one_line_error(result, "qconfig.max_shift_amount=32", "0..31", prog=QUANTIZE)
    assert_nothing_written(run_dir)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("qconfig.weight_bits=1", "qconfig.weight_bits=1 must be an integer in 2..8"),
        ("qconfig.granularity=per_channel", "applies to power-of-two qconfigs only"),
        ("qconfig.learn_scales=true", "which quant=ptq does not do; use quant=qat"),
        ("quant.scale_lr=0", "quant.scale_lr=0"),
        ("quant.scale_optimizer=sgd", "quant.scale_optimizer=sgd"),
    ],
)
def test_quantize_design_space_settings_are_checked_before_any_work(
    tmp_path: Path, tiny_fp32_run, override: str, needle: str
) -> None:
    fp32, run = tiny_fp32_run
    run_dir = tmp_path / "run"
    qconfig = ["qconfig=x86"] if "granularity" in override else []
    qconfig += ["quant=qat"] if override.startswith("quant.scale_") else []
    result = run_cli(
        *TINY,
        f"ckpt_path={run / fp32['checkpoint']}",
        *qconfig,
        override,
        run_dir=run_dir,
        prog=QUANTIZE,
    )
    assert_one_line_error(result, override, needle, prog=QUANTIZE)
    assert_nothing_written(run_dir)


def test_lab_max_shift_amount_below_0(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, "qconfig.max_shift_amount=-1", run_dir=run_dir, prog="labquant-lab")
    assert_one_line_error(result, "qconfig.max_shift_amount=-1", "0..31", prog="labquant-lab")
    assert not (run_dir / "fp32").exists()  # refused before the first stage


def test_synthetic_batch_larger_than_the_training_set(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, "data.batch_size=1001", run_dir=run_dir)  # 1200 - 200 held out
    assert_one_line_error(result, "data.batch_size=1001", "1000 images", "at most 1000")
    assert_nothing_written(run_dir)


def test_cifar10_batch_larger_than_the_training_set(tmp_path: Path) -> None:
    write_cifar_folder(tmp_path / "data")  # 5 files x 20 images, 10 held out
    run_dir = tmp_path / "run"
    result = run_cli(
        "data=cifar10",
        f"data.root={tmp_path / 'data'}",
        "data.val_size=10",
        "data.batch_size=128",
        run_dir=run_dir,
    )
    assert_one_line_error(result, "data.batch_size=128", "90 images", "at most 90")
    assert_nothing_written(run_dir)


def test_unknown_experiment_lists_choices(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("experiment=nope", run_dir=run_dir)
    assert_one_line_error(result, "experiment=nope", "quick", "lab")
    assert not run_dir.exists()


# --- the run folder


def test_read_only_run_folder(tmp_path: Path) -> None:
    parent = tmp_path / "read_only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as root: chmod 555 does not stop writes (see the /sys test)")
        result = run_cli(*TINY, "trainer.max_epochs=1", run_dir=parent / "run")
    finally:
        parent.chmod(0o755)
    assert_one_line_error(result, f"hydra.run.dir={parent / 'run'}", "Permission denied", "chmod")
    assert not (parent / "run").exists()


def test_unwritable_run_folder_even_for_root(tmp_path: Path) -> None:
    """sysfs takes no new files from anyone, root included: the same check without chmod."""
    sysfs = Path("/sys")
    if sys.platform != "linux" or not sysfs.is_dir():
        pytest.skip("no Linux sysfs here")
    result = run_cli(*TINY, "trainer.max_epochs=1", run_dir=sysfs / "labquant-run")
    assert_one_line_error(result, "hydra.run.dir=/sys/labquant-run", "cannot write to /sys")


# --- the settings schema and Hydra's instantiate: one line, before any work


@pytest.mark.parametrize(
    ("prog", "override", "needles"),
    [
        ("labquant-train", "data.batch_size=abc", ["data.batch_size=abc is not an integer"]),
        ("labquant-train", "model.layers=[2,0]", ["model.layers=[2,0]", "integers >= 1"]),
        ("labquant-lab", "lab.qconfigs=[]", ["lab.qconfigs=[] needs at least one item"]),
        ("labquant-lab", "backend=nope", ["backend=nope", "pt2e"]),
        ("labquant-lab", "lab.backends=[eager,nope]", ["lab.backends", "nope"]),
        # a pair the backend cannot realise: refused before the FP32 stage trains
        ("labquant-lab", ["lab.backends=[pt2e]", "lab.qconfigs=[qnnpack]"], ["pt2e", "qnnpack"]),
        # a key no config declares (today's main: Hydra's 7 lines, or with "+" a run that dies
        # in Lightning's setup): refused on the command line, naming the closest declared key
        (
            "labquant-train",
            "optimizer.lrr=0.1",
            ["optimizer.lrr is not a setting; did you mean optimizer.lr?"],
        ),
        (
            "labquant-train",
            "+optimizer.lrr=0.1",
            ["optimizer.lrr is not a setting; did you mean optimizer.lr?"],
        ),
        ("labquant-lab", "qconfig.max_shift_amout=6", ["did you mean qconfig.max_shift_amount?"]),
        # not an argument of model=small's factory (small_resnet): refused the same way
        ("labquant-train", "+model.width=3", ["model.width is not a setting"]),
    ],
)
def test_bad_setting_is_one_line_before_any_work(
    tmp_path: Path, prog: str, override: str | list[str], needles: list[str]
) -> None:
    run_dir = tmp_path / "run"
    overrides = override if isinstance(override, list) else [override]
    result = run_cli(*TINY, *overrides, run_dir=run_dir, prog=prog)
    assert_one_line_error(result, *needles, prog=prog)
    assert_nothing_written(run_dir)
    assert not (run_dir / "fp32").exists()


# --- checkpoints that would run code when unpickled


class _CreatesFile:
    """Unpickling this calls Path.touch: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("prog", ["labquant-train", QUANTIZE])
def test_checkpoint_that_would_run_code_is_refused(tmp_path: Path, prog: str) -> None:
    import torch

    pwned = tmp_path / "pwned"
    checkpoint = tmp_path / "downloaded.ckpt"
    torch.save({"state_dict": {}, "payload": _CreatesFile(pwned)}, checkpoint)
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, f"ckpt_path={checkpoint}", run_dir=run_dir, prog=prog)
    assert_one_line_error(result, f"ckpt_path={checkpoint}", "was refused", prog=prog)
    assert not pwned.exists()
    assert_nothing_written(run_dir)
