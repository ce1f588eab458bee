"""One row per quantized layer, the same for every backend: what results.json's `layers` holds.

Each backend's inspect.py finds its layers and their qparams (eager: converted modules; pt2e:
Q/DQ nodes) and hands them here as a `LayerRow`; everything measured against the FP32 network
is computed here, once: the FP32 reference (fused as eager fuses it: conv+bn+relu in one
module, so each layer's output is the tensor its int8 layer approximates), output SQNR, weight
SQNR against the folded FP32 weight, the share of values clipped at the top of the code range,
and the bits a hardware memory holds (`packed_bytes`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from labquant.errors import ConfigError
from labquant.quant.pot import bits_of, shifts_of
from labquant.quant.scheme import Scheme

SQNR_CAP_DB = 200.0  # identical outputs: a finite number keeps results.json valid JSON


def quantizable_layers(net: nn.Module) -> list[str]:
    """The conv / linear modules of an FP32 network, by name: the layers every backend
    quantizes and names its rows after (what `qconfig.layer_bits` may name)."""
    return [name for name, m in net.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def sqnr_db(reference: Tensor, test: Tensor) -> float:
    """Signal-to-quantization-noise ratio, 10 log10(|ref|^2 / |ref - test|^2), in dB."""
    reference, test = reference.float(), test.float().reshape(reference.shape)
    noise = (reference - test).pow(2).sum().item()
    signal = reference.pow(2).sum().item()
    if noise == 0.0:
        return SQNR_CAP_DB
    return min(SQNR_CAP_DB, 10.0 * math.log10(max(signal, 1e-30) / noise))


def observer_status(observer: Any) -> str | None:
    """The power-of-two clamp status of an observer or fake quant (None: no shift clamp)."""
    observer = getattr(observer, "activation_post_process", observer)  # FakeQuantize -> observer
    return getattr(observer, "clamp_status", None)


def fp32_reference(fp32_net: nn.Module) -> nn.Module:
    """A CPU, eval-mode copy of the FP32 network fused as the int8 layers are."""
    reference = copy.deepcopy(fp32_net).cpu().eval()
    if hasattr(reference, "fuse_model"):
        reference.fuse_model(is_qat=False)
    return reference


def module_outputs(model: nn.Module, names: Iterable[str], batch: Tensor) -> dict[str, Tensor]:
    """Each named module's output (dequantized) when `model` runs `batch`."""
    outputs: dict[str, Tensor] = {}
    modules = dict(model.named_modules())
    handles = []
    for name in names:
        if name not in modules:
            continue

        def hook(_m: nn.Module, _i: Any, out: Tensor, name: str = name) -> None:
            outputs[name] = (out.dequantize() if out.is_quantized else out).detach()

        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def fused_weight(reference: nn.Module, name: str) -> Tensor | None:
    """The folded FP32 weight of a layer of `fp32_reference` (fused modules hold the conv
    first)."""
    try:
        module = reference.get_submodule(name)
    except AttributeError:
        return None
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor):
        weight = getattr(next(iter(module.children()), None), "weight", None)
    return weight.detach().float() if isinstance(weight, Tensor) else None


def _channel_view(scales: Any, weight: Tensor) -> Tensor:
    scale = torch.as_tensor(scales, dtype=torch.float32).reshape(-1)
    return scale.reshape(-1, *([1] * (weight.dim() - 1))) if scale.numel() > 1 else scale


def clipped_share(values: Tensor, scale: Any, zero_point: int, quant_max: int) -> float:
    """The share of values above the top of the code range: round(x / s) + zp > quant_max."""
    codes = torch.round(values.float() / _channel_view(scale, values)) + zero_point
    return round(float((codes > quant_max).float().mean()), 6) if values.numel() else 0.0


@dataclass
class LayerRow:
    """A quantized conv / linear as results.json records it.

    `scale` / `zero_point` / `quant_range`: its output activation; `weight_scale`: one value or
    one per output channel; `weight_range`: the weight codes' (quant_min, quant_max);
    `weight_int8`: its dequantized int8 weight (not recorded, used for the weight SQNR).
    """

    name: str
    type: str
    scale: float | None
    zero_point: int | None
    weight_scale: float | list[float] | None
    clamp: dict[str, str | None]
    quant_range: tuple[int, int] | None = None
    weight_range: tuple[int, int] | None = None
    input_range: tuple[int, int] | None = None  # the codes of the activation it reads
    weight_int8: Tensor | None = field(default=None, repr=False)
    sqnr_db: float = float("nan")
    macs: int | None = None  # multiply-accumulates per image
    weight_sqnr_db: float | None = None
    clip_fraction: float | None = None
    weight_clip_fraction: float | None = None

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row.pop("weight_int8")
        quant_range, weight_range = row.pop("quant_range"), row.pop("weight_range")
        input_range = row.pop("input_range")
        row["bits"] = {
            "weight": bits_of(*weight_range) if weight_range else None,
            "activation": bits_of(*quant_range) if quant_range else None,
        }
        input_bits = bits_of(*input_range) if input_range else None
        row["input_bits"] = input_bits
        weight_bits = row["bits"]["weight"]
        # BitOps (AIMET's cost measure): multiply-accumulates x weight bits x input bits.
        known = None not in (self.macs, weight_bits, input_bits)
        row["bitops"] = self.macs * weight_bits * input_bits if known else None
        row["shift"] = {"weight": _shifts(self.weight_scale), "activation": _shifts(self.scale)}
        weight = self.weight_int8
        row["weights"] = int(weight.numel()) if weight is not None else None
        row["out_channels"] = int(weight.shape[0]) if weight is not None else None
        row["sqnr_db"] = round(self.sqnr_db, 3)
        if self.weight_sqnr_db is not None:
            row["weight_sqnr_db"] = round(self.weight_sqnr_db, 3)
        return row


def _shifts(scale: Any) -> int | list[int] | None:
    """n of each scale 2**-n (None where a scale is not a power of two: engine qconfigs)."""
    if scale is None:
        return None
    try:
        return shifts_of(scale, "a layer")
    except ConfigError:
        return None


def measure(
    rows: list[LayerRow], fp32_net: nn.Module, batch: Tensor, int8_outputs: dict[str, Tensor]
) -> list[dict[str, Any]]:
    """Complete the rows against the FP32 network and return them as results.json's `layers`:
    output SQNR and clipped share (of the FP32 layer outputs on `batch`), weight SQNR and
    clipped share (of the folded FP32 weight)."""
    reference = fp32_reference(fp32_net)
    names = [row.name for row in rows]
    fp32_outputs = module_outputs(reference, names, batch.cpu())
    for row in rows:
        ours, theirs = int8_outputs.get(row.name), fp32_outputs.get(row.name)
        weight = fused_weight(reference, row.name)
        if theirs is not None and weight is not None:
            per_channel = theirs[0].numel() // weight.shape[0]  # output positions per channel
            row.macs = int(per_channel * weight.numel())
        if ours is not None and theirs is not None:
            row.sqnr_db = sqnr_db(theirs, ours)
            if row.scale is not None and row.quant_range is not None:
                row.clip_fraction = clipped_share(
                    theirs, row.scale, row.zero_point or 0, row.quant_range[1]
                )
        if weight is not None and row.weight_int8 is not None:
            row.weight_sqnr_db = sqnr_db(weight, row.weight_int8)
            if row.weight_scale is not None and row.weight_range is not None:
                row.weight_clip_fraction = clipped_share(
                    weight, row.weight_scale, 0, row.weight_range[1]
                )
    return [row.as_dict() for row in rows]


def packed_bytes(row: dict[str, Any], scheme: Scheme, per_channel: bool) -> int:
    """What a hardware memory holds for one layer: its weights at their declared width (packed,
    rounded up to a byte), an int32 bias per output channel, and its scales as the scheme
    stores them (power of two: a one-byte shift per weight tensor or output channel, plus the
    output's shift and zero point; float scales: a float32 scale and an int32 zero point)."""
    weights, channels = row.get("weights"), row.get("out_channels")
    bits = (row.get("bits") or {}).get("weight") or 8
    if not weights or not channels:
        return 0
    scales = row.get("weight_scale")
    weight_scales = channels if per_channel or isinstance(scales, list) else 1
    return scheme.packed_bytes(weights, bits, channels, weight_scales)


def total_bitops(layers: list[dict[str, Any]]) -> int | None:
    """BitOps per image of the network (None where a layer's are unknown)."""
    values = [row.get("bitops") for row in layers]
    return None if not values or None in values else int(sum(values))


def packed_size_mib(layers: list[dict[str, Any]], scheme: Scheme, per_channel: bool) -> float:
    """`packed_bytes` over every quantized layer, in MiB."""
    total = sum(packed_bytes(row, scheme, per_channel) for row in layers)
    return round(total / 2**20, 6)
