"""A `QConfigSpec` as eager-mode torch.ao objects: the QConfig, and the engine whose int8
kernels run it."""

from __future__ import annotations

import torch
from torch.ao.quantization import QConfig, get_default_qat_qconfig, get_default_qconfig

from labquant.config.schema import check_max_shift_amount
from labquant.errors import ConfigError
from labquant.quant.eager.observers import CusQuantObserver, PotFakeQuantize
from labquant.quant.qconfigs import QConfigSpec


def pot_qconfig(qat: bool, max_shift_amount: int) -> QConfig:
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


def unsigned_relu_qconfig(qat: bool, max_shift_amount: int) -> QConfig:
    """pot, but the activation (the module's output) is unsigned: quint8 0..255, zero point 0,
    scale 2**-n. Only for modules whose output follows a ReLU (see workflow.set_relu_qconfig)."""
    base = pot_qconfig(qat, max_shift_amount)
    act = {
        "dtype": torch.quint8,
        "qscheme": torch.per_tensor_affine,
        "max_shift_amount": max_shift_amount,
        "unsigned": True,
    }
    if not qat:
        return QConfig(activation=CusQuantObserver.with_args(**act), weight=base.weight)
    activation = PotFakeQuantize.with_args(
        observer=CusQuantObserver, quant_min=0, quant_max=255, **act
    )
    return QConfig(activation=activation, weight=base.weight)


def relu_output_qconfig(spec: QConfigSpec, qat: bool) -> QConfig | None:
    """The qconfig of post-ReLU outputs when it differs from `eager_qconfig`, else None."""
    if spec.power_of_two and spec.activations == "unsigned":
        return unsigned_relu_qconfig(qat, check_max_shift_amount(spec.max_shift_amount))
    return None


def eager_qconfig(spec: QConfigSpec, qat: bool) -> QConfig:
    """The torch.ao QConfig for `spec`: power-of-two observers, or the engine's defaults."""
    if spec.power_of_two:
        return pot_qconfig(qat, check_max_shift_amount(spec.max_shift_amount))
    return get_default_qat_qconfig(spec.engine) if qat else get_default_qconfig(spec.engine)


def _supported_engines() -> list[str]:
    """Split out so tests can fake a torch build without some engine."""
    return list(torch.backends.quantized.supported_engines)


def engine_for(spec: QConfigSpec) -> str:
    """The torch.backends.quantized.engine whose kernels match the spec's observers."""
    supported = _supported_engines()
    if spec.engine not in supported:
        raise ConfigError(
            f"qconfig={spec.name} needs the quantized engine {spec.engine!r}, which this torch "
            f"build lacks (it has {supported}); pick another qconfig"
        )
    return spec.engine
