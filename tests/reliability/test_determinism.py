"""The same config and seed on the CPU give the same run, to the last bit of every metric."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.reliability.runs import (
    FP32_METRICS,
    FP32_RUN,
    TRAIN,
    assert_ok,
    csv_rows,
    results,
    run_cli,
)

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it


@pytest.mark.slow
def test_same_config_and_seed_give_identical_metrics(fp32_reference: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "again"
    assert_ok(run_cli(TRAIN, *FP32_RUN, run_dir=run_dir))
    first, second = results(fp32_reference), results(run_dir)
    print(
        f"\nfirst {[first[k] for k in FP32_METRICS]} / second {[second[k] for k in FP32_METRICS]}"
    )
    for key in FP32_METRICS:
        assert second[key] == first[key], key  # exactly, not approximately
    assert csv_rows(run_dir) == csv_rows(fp32_reference)  # every epoch's loss and accuracy
    val_acc = [row["val/acc"] for row in csv_rows(run_dir) if row["val/acc"]]
    assert len(set(val_acc)) > 1  # the runs really trained, they did not just both stall
    want = torch.load(fp32_reference / "model_fp32_state_dict.pt")
    got = torch.load(run_dir / "model_fp32_state_dict.pt")
    assert all(torch.equal(got[name], tensor) for name, tensor in want.items())
