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
from labquant.quant.plan import LayerPlan, QuantPlan, TensorPlan, plan_of
from labquant.quant.pot import memory_order_constructor
from labquant.quant.qconfigs import QConfigSpec


def _method(tensor: TensorPlan) -> dict[str, Any]:
    return {
        "max_shift_amount": tensor.scheme.max_shift_amount,
        "exponent": tensor.exponent,
        "range_method": tensor.range_method,
        "percentile": tensor.percentile,
        "scheme": tensor.scheme,
    }


def _observer(observer: type, qat: bool, learned: bool = False, **kwargs: Any) -> Any:
    """The observer constructor for PTQ, or a fake-quant over it for QAT (same arguments);
    `learned`: one whose exponent is a parameter (qconfig.learn_scales)."""
    if qat:
        fake_quant = EagerLearnedPotFakeQuantize if learned else EagerPotFakeQuantize
        return fake_quant.with_args(observer=observer, **kwargs)
    return observer.with_args(**kwargs)


def activation_observer(tensor: TensorPlan, qat: bool) -> Any:
    qscheme = torch.per_tensor_affine if tensor.unsigned else torch.per_tensor_symmetric
    return _observer(
        EagerPotObserver, qat, tensor.learned, dtype=torch.quint8, qscheme=qscheme,
        quant_min=tensor.quant_min, quant_max=tensor.quant_max, unsigned=tensor.unsigned,
        **_method(tensor),
    )  # fmt: skip


def weight_observer(tensor: TensorPlan, qat: bool) -> Any:
    common = {
        "dtype": torch.qint8, "quant_min": tensor.quant_min, "quant_max": tensor.quant_max,
        "weights": True,
    }  # fmt: skip
    if tensor.per_channel:
        return _observer(
            EagerPotChannelObserver, qat, tensor.learned,
            qscheme=torch.per_channel_symmetric, ch_axis=tensor.axis, **common, **_method(tensor),
        )  # fmt: skip
    return _observer(
        EagerPotObserver, qat, tensor.learned, qscheme=torch.per_tensor_symmetric,
        **common, **_method(tensor),
    )  # fmt: skip


def pot_qconfig(layer: LayerPlan, qat: bool, relu: bool = False) -> QConfig:
    """Weights and activations with 2**-n scales at the layer plan's widths and rules (`relu`:
    the output after a ReLU).

    QAT uses EagerPotFakeQuantize (a plain FakeQuantize without per-step host syncs), not
    torch's default FusedMovingAvgObsFakeQuantize: the fused C++ kernel computes its own scale
    and never calls the observer's calculate_qparams, so training would see non-power-of-two
    scales while `convert` used power-of-two ones.
    """
    output = layer.relu_output if relu else layer.output
    return QConfig(
        activation=activation_observer(output, qat), weight=weight_observer(layer.weight, qat)
    )


def relu_output_qconfig(plan: QuantPlan | QConfigSpec, qat: bool) -> QConfig | None:
    """The qconfig of post-ReLU outputs when it differs from `eager_qconfig` (pot_unsigned:
    quint8 0..2**b-1, zero point 0, scale 2**-n; see workflow.set_relu_qconfig), else None."""
    plan = plan_of(plan)
    layer = plan.default
    if plan.scheme.widths and layer.relu_output != layer.output:
        return pot_qconfig(layer, qat, relu=True)
    return None


def layer_qconfig_of(plan: QuantPlan | QConfigSpec, qat: bool) -> Any:
    """The plan's per-layer widths as workflow.set_layer_qconfigs' callback: each conv /
    linear whose widths differ from the qconfig's gets the qconfig of its own widths (None:
    no layer has its own)."""
    plan = plan_of(plan)
    if not plan.has_layer_widths:
        return None

    def layer_qconfig(name: str, module: nn.Module) -> QConfig | None:
        if not plan.layer_differs(name):
            return None
        layer = plan.layer(name)
        relu = isinstance(module, RELU_FUSED) and layer.relu_output != layer.output
        return pot_qconfig(layer, qat, relu=relu)

    return layer_qconfig


def eager_qconfig(plan: QuantPlan | QConfigSpec, qat: bool) -> QConfig:
    """The torch.ao QConfig of the plan's default layer: power-of-two observers, or the
    engine's defaults for float scales."""
    plan = plan_of(plan)
    if plan.scheme.widths:
        return pot_qconfig(plan.default, qat)
    if not qat:
        return get_default_qconfig(plan.engine)
    return memory_order_activations(get_default_qat_qconfig(plan.engine))


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


def engine_for(spec: QConfigSpec | QuantPlan) -> str:
    """The torch.backends.quantized.engine whose kernels match the spec's observers."""
    supported = _supported_engines()
    if spec.engine not in supported:
        name = spec.qconfig if isinstance(spec, QuantPlan) else spec.name
        raise ConfigError(
            f"qconfig={name} needs the quantized engine {spec.engine!r}, which this torch "
            f"build lacks (it has {supported}); pick another qconfig"
        )
    return spec.engine
