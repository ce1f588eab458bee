"""A `QConfigSpec` as eager-mode torch.ao objects: the QConfig, and the engine whose int8
kernels run it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.ao.quantization import (
    FusedMovingAvgObsFakeQuantize,
    QConfig,
    get_default_qat_qconfig,
    get_default_qconfig,
)

from labquant.errors import ConfigError
from labquant.quant.eager.observers import (
    EagerLearnedPotFakeQuantize,
    EagerPotChannelObserver,
    EagerPotFakeQuantize,
    EagerPotObserver,
    MemoryOrderFakeQuantize,
)
from labquant.quant.eager.workflow import RELU_FUSED
from labquant.quant.pot import memory_order_constructor
from labquant.quant.qconfigs import QConfigSpec


def _method(spec: QConfigSpec) -> dict[str, Any]:
    return {
        "max_shift_amount": spec.max_shift_amount,
        "exponent": spec.exponent,
        "range_method": spec.range_method,
        "percentile": spec.percentile,
    }


def _observer(observer: type, qat: bool, learned: bool = False, **kwargs: Any) -> Any:
    """The observer constructor for PTQ, or a fake-quant over it for QAT (same arguments);
    `learned`: one whose exponent is a parameter (qconfig.learn_scales)."""
    if qat:
        fake_quant = EagerLearnedPotFakeQuantize if learned else EagerPotFakeQuantize
        return fake_quant.with_args(observer=observer, **kwargs)
    return observer.with_args(**kwargs)


def activation_observer(spec: QConfigSpec, qat: bool, unsigned: bool = False) -> Any:
    qmin, qmax = spec.activation_range
    qscheme = torch.per_tensor_affine if unsigned else torch.per_tensor_symmetric
    return _observer(
        EagerPotObserver, qat, spec.learn_scales, dtype=torch.quint8, qscheme=qscheme,
        quant_min=qmin, quant_max=qmax, unsigned=unsigned, **_method(spec),
    )  # fmt: skip


def weight_observer(spec: QConfigSpec, qat: bool) -> Any:
    qmin, qmax = spec.weight_range
    common = {"dtype": torch.qint8, "quant_min": qmin, "quant_max": qmax, "weights": True}
    if spec.per_channel:
        return _observer(
            EagerPotChannelObserver, qat, spec.learn_scales,
            qscheme=torch.per_channel_symmetric, ch_axis=0, **common, **_method(spec),
        )  # fmt: skip
    return _observer(
        EagerPotObserver, qat, spec.learn_scales, qscheme=torch.per_tensor_symmetric,
        **common, **_method(spec),
    )  # fmt: skip


def pot_qconfig(spec: QConfigSpec, qat: bool) -> QConfig:
    """Weights and activations with 2**-n scales at the spec's widths and rules.

    QAT uses EagerPotFakeQuantize (a plain FakeQuantize without per-step host syncs), not
    torch's default FusedMovingAvgObsFakeQuantize: the fused C++ kernel computes its own scale
    and never calls the observer's calculate_qparams, so training would see non-power-of-two
    scales while `convert` used power-of-two ones.
    """
    return QConfig(activation=activation_observer(spec, qat), weight=weight_observer(spec, qat))


def relu_output_qconfig(spec: QConfigSpec, qat: bool) -> QConfig | None:
    """The qconfig of post-ReLU outputs when it differs from `eager_qconfig` (pot_unsigned:
    quint8 0..2**b-1, zero point 0, scale 2**-n; see workflow.set_relu_qconfig), else None."""
    if spec.power_of_two and spec.activations == "unsigned":
        return QConfig(
            activation=activation_observer(spec, qat, unsigned=True),
            weight=weight_observer(spec, qat),
        )
    return None


def layer_qconfig_of(spec: QConfigSpec, qat: bool) -> Any:
    """`qconfig.layer_bits` as workflow.set_layer_qconfigs' callback: each conv / linear a
    layer_bits entry matches gets the qconfig of its own widths (None: no entries)."""
    if not spec.layer_bits:
        return None

    def layer_qconfig(name: str, module: nn.Module) -> QConfig | None:
        layer = spec.for_layer(name)
        if (layer.weight_bits, layer.activation_bits) == (spec.weight_bits, spec.activation_bits):
            return None
        relu = isinstance(module, RELU_FUSED) and relu_output_qconfig(layer, qat)
        return relu or eager_qconfig(layer, qat)

    return layer_qconfig


def eager_qconfig(spec: QConfigSpec, qat: bool) -> QConfig:
    """The torch.ao QConfig for `spec`: power-of-two observers, or the engine's defaults."""
    if spec.power_of_two:
        return pot_qconfig(spec, qat)
    if not qat:
        return get_default_qconfig(spec.engine)
    return memory_order_activations(get_default_qat_qconfig(spec.engine))


def memory_order_activations(qconfig: QConfig) -> QConfig:
    """torch's QAT qconfig with its fused activation fake-quant reading channels_last
    activations in memory order (MemoryOrderFakeQuantize: the same arguments, the same
    numbers)."""
    activation = memory_order_constructor(
        qconfig.activation, FusedMovingAvgObsFakeQuantize, MemoryOrderFakeQuantize
    )
    return QConfig(activation=activation, weight=qconfig.weight)


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
