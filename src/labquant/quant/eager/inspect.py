"""What the int8 model is made of: per-layer qparams, power-of-two clamp hits, and SQNR of each
quantized layer's output against the FP32 model on the same batch (the "which layer hurts" view).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from labquant.quant.eager.workflow import quantized_layers

SQNR_CAP_DB = 200.0  # identical outputs: a finite number keeps results.json valid JSON


def sqnr_db(reference: Tensor, test: Tensor) -> float:
    """Signal-to-quantization-noise ratio, 10 log10(|ref|^2 / |ref - test|^2), in dB."""
    reference, test = reference.float(), test.float()
    noise = (reference - test).pow(2).sum().item()
    signal = reference.pow(2).sum().item()
    if noise == 0.0:
        return SQNR_CAP_DB
    return min(SQNR_CAP_DB, 10.0 * math.log10(max(signal, 1e-30) / noise))


@contextmanager
def _capture(model: nn.Module, names: list[str]) -> Iterator[dict[str, Tensor]]:
    outputs: dict[str, Tensor] = {}
    handles = []
    for name in names:
        module = model.get_submodule(name)

        def hook(_m: nn.Module, _i: Any, out: Tensor, name: str = name) -> None:
            outputs[name] = out.dequantize() if out.is_quantized else out.detach()

        handles.append(module.register_forward_hook(hook))
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def layer_sqnr(fp32_net: nn.Module, int8_net: nn.Module, batch: Tensor) -> dict[str, float]:
    """SQNR of every quantized layer's output; the FP32 side is fused (eval) so names match."""
    reference = copy.deepcopy(fp32_net).cpu().eval()
    reference.fuse_model(is_qat=False)
    names = [name for name, _ in quantized_layers(int8_net)]
    with _capture(reference, names) as ref_out, _capture(int8_net, names) as q_out:
        reference(batch)
        int8_net(batch)
    return {name: sqnr_db(ref_out[name], q_out[name]) for name in names if name in ref_out}


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


def _observer_status(observer: Any) -> str | None:
    observer = getattr(observer, "activation_post_process", observer)  # FakeQuantize -> observer
    return getattr(observer, "clamp_status", None)


def clamp_hits(prepared_net: nn.Module, names: list[str]) -> dict[str, dict[str, str | None]]:
    """Per layer: did the power-of-two shift clamp trigger for its activations / weights?

    None where the qconfig has no shift clamp (x86, fbgemm, qnnpack).
    """
    hits: dict[str, dict[str, str | None]] = {}
    for name in names:
        module = prepared_net.get_submodule(name)
        activation = _observer_status(getattr(module, "activation_post_process", None))
        weight_observer = getattr(module, "weight_fake_quant", None)
        if weight_observer is None and getattr(module, "qconfig", None) is not None:
            weight = _float_weight(module)
            if weight is not None:
                weight_observer = module.qconfig.weight()
                weight_observer(weight.detach().cpu())
                weight_observer.calculate_qparams()
        hits[name] = {"activation": activation, "weight": _observer_status(weight_observer)}
    return hits


def layer_table(
    fp32_net: nn.Module, prepared_net: nn.Module, int8_net: nn.Module, batch: Tensor
) -> list[dict[str, Any]]:
    """results.json's `layers`: name, activation scale / zero point, weight scales, clamp, SQNR."""
    sqnr = layer_sqnr(fp32_net, int8_net, batch)
    layers = quantized_layers(int8_net)
    clamps = clamp_hits(prepared_net, [name for name, _ in layers])
    return [
        {
            "name": name,
            "type": type(module).__name__,
            "scale": float(module.scale),
            "zero_point": int(module.zero_point),
            "weight_scale": _weight_scales(module),
            "clamp": clamps[name],
            "sqnr_db": round(sqnr.get(name, float("nan")), 3),
        }
        for name, module in layers
    ]


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
