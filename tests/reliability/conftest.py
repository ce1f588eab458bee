"""One uninterrupted reference run per scenario, shared by the resume and determinism tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.runs import (
    FP32_RUN,
    PT2E_QAT_RUN,
    QAT_RUN,
    QUANTIZE,
    TRAIN,
    assert_ok,
    run_cli,
)


@pytest.fixture(scope="session")
def fp32_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FP32 run of FP32_RUN, straight through; its folder."""
    run_dir = tmp_path_factory.mktemp("fp32_reference") / "run"
    assert_ok(run_cli(TRAIN, *FP32_RUN, run_dir=run_dir))
    return run_dir


@pytest.fixture(scope="session")
def fp32_checkpoint(fp32_reference: Path) -> str:
    """The override that quantizes the reference FP32 run's best checkpoint."""
    return f"ckpt_path={fp32_reference / 'checkpoints' / 'best.ckpt'}"


@pytest.fixture(scope="session")
def qat_reference(tmp_path_factory: pytest.TempPathFactory, fp32_checkpoint: str) -> Path:
    """The QAT run of QAT_RUN on the reference checkpoint, straight through; its folder."""
    run_dir = tmp_path_factory.mktemp("qat_reference") / "run"
    assert_ok(run_cli(QUANTIZE, *QAT_RUN, fp32_checkpoint, run_dir=run_dir))
    return run_dir


@pytest.fixture(scope="session")
def pt2e_qat_reference(tmp_path_factory: pytest.TempPathFactory, fp32_checkpoint: str) -> Path:
    """PT2E_QAT_RUN on the reference checkpoint, straight through; its folder."""
    run_dir = tmp_path_factory.mktemp("pt2e_qat_reference") / "run"
    assert_ok(run_cli(QUANTIZE, *PT2E_QAT_RUN, fp32_checkpoint, run_dir=run_dir))
    return run_dir
