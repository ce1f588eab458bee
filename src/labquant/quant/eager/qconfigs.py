"""Named qconfigs: torch's per-backend defaults plus `pot`, the power-of-two one."""

from __future__ import annotations

import torch
from torch.ao.quantization import (
    QConfig,
    get_default_qat_qconfig,
    get_default_qconfig,
)

from labquant.errors import ConfigError
from labquant.quant.observers import CusQuantObserver, PotFakeQuantize, check_max_shift_amount

QCONFIG_NAMES = ("x86", "fbgemm", "qnnpack", "pot")

# pot's int8 kernels run on the x86 engine: the scales are plain floats that happen to be 2**-n.
_ENGINES = {"x86": "x86", "fbgemm": "fbgemm", "qnnpack": "qnnpack", "pot": "x86"}


def _check_name(name: str) -> None:
    if name not in QCONFIG_NAMES:
        raise ConfigError(f"qconfig must be one of {list(QCONFIG_NAMES)}, got {name!r}")


def _pot_qconfig(qat: bool, max_shift_amount: int) -> QConfig:
    """Both weights and activations symmetric per-tensor with 2**-n scales.

    QAT uses a plain FakeQuantize (PotFakeQuantize: the same, without per-step host syncs),
    not torch's default FusedMovingAvgObsFakeQuantize: the fused C++ kernel computes its own
    scale and never calls the observer's calculate_qparams, so training would see
    non-power-of-two scales while `convert` used power-of-two ones.
    """
    common = {"qscheme": torch.per_tensor_symmetric, "max_shift_amount": max_shift_amount}
    act = {"dtype": torch.quint8, **common}
    wgt = {"dtype": torch.qint8, **common}
    if not qat:
        return QConfig(
            activation=CusQuantObserver.with_args(**act),
            weight=CusQuantObserver.with_args(**wgt),
        )
    return QConfig(
        activation=PotFakeQuantize.with_args(
            observer=CusQuantObserver, quant_min=0, quant_max=255, **act
        ),
        weight=PotFakeQuantize.with_args(
            observer=CusQuantObserver, quant_min=-128, quant_max=127, **wgt
        ),
    )


def get_qconfig(name: str, qat: bool, max_shift_amount: int | None = 8) -> QConfig:
    """QConfig for `name`; other names ignore `max_shift_amount` (their configs set it null)."""
    _check_name(name)
    if name == "pot":
        return _pot_qconfig(qat, check_max_shift_amount(max_shift_amount))
    return get_default_qat_qconfig(name) if qat else get_default_qconfig(name)


def _supported_engines() -> list[str]:
    """Split out so tests can fake a torch build without some engine."""
    return list(torch.backends.quantized.supported_engines)


def backend_for(name: str) -> str:
    """The torch.backends.quantized.engine whose kernels match the qconfig's observers."""
    _check_name(name)
    engine = _ENGINES[name]
    supported = _supported_engines()
    if engine not in supported:
        raise ConfigError(
            f"qconfig={name} needs the quantized engine {engine!r}, which this torch build "
            f"lacks (it has {supported}); pick another qconfig"
        )
    return engine
