"""What the eager int8 model is made of: each quantized layer's qparams, widths and power-of-two
clamp hits, as quant/layers.py rows (which measure SQNR and clipping against the FP32 model on
the same batch: the "which layer hurts" view).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from labquant.quant.eager import bias_quant
from labquant.quant.eager.workflow import quantized_layers
from labquant.quant.layers import LayerRow, measure, module_outputs, observer_status


def _weight_scales(module: nn.Module) -> float | list[float]:
    weight = module.weight()
    if weight.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return float(weight.q_scale())
    return [float(s) for s in weight.q_per_channel_scales()]


def _float_weight(module: nn.Module) -> Tensor | None:
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor):
        return weight
    first = next(iter(module.children()), None)  # fused ConvReLU2d & co. hold the conv first
    return getattr(first, "weight", None) if first is not None else None


def clamp_hits(prepared_net: nn.Module, names: list[str]) -> dict[str, dict[str, str | None]]:
    """Per layer: did the power-of-two shift clamp trigger for its activations / weights?

    None where the qconfig has no shift clamp (x86, fbgemm, qnnpack).
    """
    hits: dict[str, dict[str, str | None]] = {}
    for name in names:
        module = prepared_net.get_submodule(name)
        activation = observer_status(getattr(module, "activation_post_process", None))
        weight_observer = getattr(module, "weight_fake_quant", None)
        if weight_observer is None and getattr(module, "qconfig", None) is not None:
            weight = _float_weight(module)
            if weight is not None:
                weight_observer = module.qconfig.weight()
                weight_observer(weight.detach().cpu())
                weight_observer.calculate_qparams()
        hits[name] = {"activation": activation, "weight": observer_status(weight_observer)}
    return hits


def _code_range(observer: Any) -> tuple[int, int] | None:
    observer = getattr(observer, "activation_post_process", observer)
    if observer is None or not hasattr(observer, "quant_min"):
        return None
    return int(observer.quant_min), int(observer.quant_max)


def _weight_observer(module: nn.Module) -> Any:
    """The weight's fake quant (QAT) or a fresh instance of its qconfig's observer (PTQ)."""
    found = getattr(module, "weight_fake_quant", None)
    qconfig = getattr(module, "qconfig", None)
    return found if found is not None or qconfig is None else qconfig.weight()


def layer_table(
    fp32_net: nn.Module, prepared_net: nn.Module, int8_net: nn.Module, batch: Tensor
) -> list[dict[str, Any]]:
    """results.json's `layers` (quant/layers.py): per quantized layer its qparams, widths,
    clamp status, SQNR and clipped shares."""
    layers = quantized_layers(int8_net)
    names = [name for name, _ in layers]
    clamps = clamp_hits(prepared_net, names)
    try:  # the walk follows labquant's ResNets (duck-typed)
        sources = bias_quant.input_fake_quants(prepared_net)
    except AttributeError:
        sources = {}
    rows = []
    for name, module in layers:
        prepared = prepared_net.get_submodule(name)
        rows.append(
            LayerRow(
                name=name,
                type=type(module).__name__,
                scale=float(module.scale),
                zero_point=int(module.zero_point),
                weight_scale=_weight_scales(module),
                clamp=clamps[name],
                quant_range=_code_range(getattr(prepared, "activation_post_process", None)),
                weight_range=_code_range(_weight_observer(prepared)),
                input_range=_code_range(sources.get(name)),
                weight_int8=module.weight().dequantize(),
            )
        )
    return measure(rows, fp32_net, batch, module_outputs(int8_net, names, batch.cpu()))


def layer_weights(net: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The float weights of the named layers of a prepared (or converted) eager model."""
    weights = {}
    for name in names:
        try:
            module = net.get_submodule(name)
        except AttributeError:
            continue
        weight = getattr(module, "weight", None)
        if weight is None:  # fused ConvReLU2d & co. (PTQ) hold the conv as their first child
            weight = getattr(next(iter(module.children()), None), "weight", None)
        weight = weight() if callable(weight) else weight  # int8 modules: weight()
        if isinstance(weight, torch.Tensor):
            weight = weight.dequantize() if weight.is_quantized else weight
            weights[name] = weight.detach().float().cpu()
    return weights
