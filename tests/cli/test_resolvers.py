"""The config resolvers: precision default (GPU and CPU ISA), StepLR epoch, warmup cap."""

from __future__ import annotations

import pytest
import torch

from labquant import machine
from labquant.config import resolvers


@pytest.mark.parametrize(
    ("accelerator", "cuda", "bf16", "amx", "expected"),
    [
        ("auto", True, True, False, "bf16-mixed"),
        ("gpu", True, True, False, "bf16-mixed"),
        ("cuda", True, True, False, "bf16-mixed"),
        ("auto", True, False, True, "32-true"),  # e.g. a V100: no bf16 tensor cores
        ("cpu", True, True, False, "32-true"),  # trainer.accelerator=cpu on a GPU machine
        ("auto", False, False, False, "32-true"),  # AVX2 or AVX-512 without AMX
        ("auto", False, False, True, "bf16-mixed"),  # a CPU with AMX-BF16
        ("cpu", True, True, True, "bf16-mixed"),
    ],
)
def test_fp32_training_defaults_to_bf16_mixed_on_a_bf16_gpu_or_an_amx_cpu(
    monkeypatch, accelerator, cuda, bf16, amx, expected
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    flags = {"avx2", "amx_bf16", "amx_int8"} if amx else {"avx2", "avx512_vnni"}
    monkeypatch.setattr(machine, "_cpuinfo", lambda: ("a faked CPU", flags))
    assert resolvers.default_precision(accelerator) == expected


def test_composed_train_config_resolves_the_precision(compose_train, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(machine, "_cpuinfo", lambda: ("a faked AVX2 CPU", {"avx2"}))
    assert compose_train().trainer.precision == "32-true"
    assert compose_train("trainer.precision=16-mixed").trainer.precision == "16-mixed"
    monkeypatch.setattr(machine, "_cpuinfo", lambda: ("a faked AMX CPU", {"amx_bf16"}))
    assert compose_train().trainer.precision == "bf16-mixed"


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
