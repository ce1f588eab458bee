"""The config resolvers: GPU precision default, StepLR epoch, warmup cap."""

from __future__ import annotations

import pytest
import torch

from labquant.config import resolvers


@pytest.mark.parametrize(
    ("accelerator", "cuda", "bf16", "expected"),
    [
        ("auto", True, True, "bf16-mixed"),
        ("gpu", True, True, "bf16-mixed"),
        ("cuda", True, True, "bf16-mixed"),
        ("auto", True, False, "32-true"),  # e.g. a V100: no bf16 tensor cores
        ("cpu", True, True, "32-true"),  # trainer.accelerator=cpu on a GPU machine
        ("auto", False, False, "32-true"),
    ],
)
def test_fp32_training_defaults_to_bf16_mixed_only_on_a_bf16_gpu(
    monkeypatch, accelerator, cuda, bf16, expected
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert resolvers.default_precision(accelerator) == expected


def test_composed_train_config_resolves_the_precision(compose_train, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compose_train().trainer.precision == "32-true"
    assert compose_train("trainer.precision=16-mixed").trainer.precision == "16-mixed"


def test_step_epoch_and_warmup_cap() -> None:
    assert resolvers.step_epoch(20, 40) == 20
    assert resolvers.step_epoch(20, 10) == 5
    assert resolvers.warmup_epochs(2, 40) == 2
    assert resolvers.warmup_epochs(2, 2) == 1


def test_qat_stays_fp32_where_fp32_training_would_be_bf16(tmp_path, monkeypatch) -> None:
    from labquant.tasks.quantize import qat_config
    from tests.conftest import compose_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cfg = compose_config("quantize", ["quant=qat"], tmp_path)
    assert cfg.trainer.precision == "bf16-mixed"
    assert qat_config(cfg).trainer.precision == "32-true"
