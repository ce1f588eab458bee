"""QAT with the folded bias fake-quantized on its accumulator grid (pot qconfigs, snap_bias).

Shift hardware adds an int32 bias at scale `s_in * s_w`; convert snaps every bias to that grid
(integer.snap_biases). This module makes QAT train against the same bias, so fine-tuning can
compensate the rounding instead of meeting it only at convert.

Where the bias is:
- Fused conv-BN (torch's `_ConvBnNd`, approximate forward) computes
  `bn(conv(x, fq(w * k)) / k + b)` with `k = gamma / running_std`. Once BN uses its running
  statistics (frozen at `quant.freeze_bn_epoch`, and in every eval pass) that is
  `conv(x, fq(w * k)) + B` with the folded bias `B = beta + (b - running_mean) * k`, the one
  convert ships. A forward hook on the module's `bn` child adds `round_half_even(B / g) * g - B`
  (detached: a straight-through estimator, B keeps its gradient) with `g = s_in * s_w`. While BN
  still normalises with batch statistics there is no single bias to quantize, so nothing is
  added then.
- `fc` (a QAT Linear) adds its own bias: a forward hook adds the same correction.

`s_in` is the scale of the fake-quant that produced the layer's input. The walk follows
labquant's ResNets as integer.integer_program does (quant -> stem -> blocks -> avgpool -> fc;
max-pool and global avgpool keep their input's scale in the int8 model), duck-typed.
Everything stays on the device: no host sync per step.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.ao.quantization import FakeQuantizeBase

from labquant.quant.pot import folded_bias, snap_correction

_MARK = "labquant_bias_fake_quant"  # on each hook function, so a converted copy can drop them


def input_fake_quants(prepared: nn.Module) -> dict[str, FakeQuantizeBase]:
    """For every conv / linear of a QAT-prepared labquant ResNet, the fake-quant module whose
    output it reads (its input scale), by module name."""

    def app(module: nn.Module) -> FakeQuantizeBase:
        return module.activation_post_process

    sources: dict[str, FakeQuantizeBase] = {"conv1": app(prepared.quant)}
    x = app(prepared.conv1)
    for stage in prepared.stage_names:
        for i, block in enumerate(getattr(prepared, stage)):
            prefix = f"{stage}.{i}"
            sources[f"{prefix}.conv1"] = x
            sources[f"{prefix}.conv2"] = app(block.conv1)
            if hasattr(block, "conv3"):
                sources[f"{prefix}.conv3"] = app(block.conv2)
            if block.downsample is not None:
                sources[f"{prefix}.downsample.0"] = x
            x = app(block.skip_add)
    sources["fc"] = x
    return sources


_SOURCE = "_labquant_bias_source"  # on a conv-BN / linear: the fake-quant of its input
_OWNER = "_labquant_bias_owner"  # on a fused module's bn: the module it belongs to


def _link(holder: nn.Module, name: str, target: nn.Module) -> None:
    """A plain attribute, not a submodule (no second path in state_dict / modules()); a
    deep copy of the model maps it to the copy's module, so the hooks follow the copy."""
    object.__setattr__(holder, name, target)


def _grid(module: nn.Module) -> Tensor:
    return getattr(module, _SOURCE).scale * module.weight_fake_quant.scale


def _conv_bn_hook(bn: nn.Module, _inputs: Any, out: Tensor) -> Tensor | None:
    if bn.training:  # batch statistics: no folded bias yet
        return None
    module = getattr(bn, _OWNER)
    bias = folded_bias(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, module.bias)
    correction = snap_correction(bias, _grid(module))
    return out + correction.reshape(1, -1, *([1] * (out.dim() - 2)))


def _linear_hook(linear: nn.Module, _inputs: Any, out: Tensor) -> Tensor | None:
    if linear.bias is None or out.is_quantized:
        return None
    return out + snap_correction(linear.bias, _grid(linear))


setattr(_conv_bn_hook, _MARK, True)
setattr(_linear_hook, _MARK, True)


def install(prepared: nn.Module) -> int:
    """Hook the bias fake-quant into every conv-BN / linear of a QAT-prepared labquant ResNet;
    returns how many layers."""
    modules = dict(prepared.named_modules())
    count = 0
    for name, source in input_fake_quants(prepared).items():
        module = modules[name]
        if not isinstance(getattr(module, "weight_fake_quant", None), FakeQuantizeBase):
            continue
        _link(module, _SOURCE, source)
        if hasattr(module, "bn"):
            _link(module.bn, _OWNER, module)
            module.bn.register_forward_hook(_conv_bn_hook)
        else:
            module.register_forward_hook(_linear_hook)
        count += 1
    return count


def remove(model: nn.Module) -> int:
    """Drop the hooks from a (converted, deep-copied) model: torch's convert carries forward
    hooks over to the int8 modules, which already hold the snapped bias."""
    removed = 0
    for module in model.modules():
        for key, fn in list(module._forward_hooks.items()):
            if getattr(fn, _MARK, False):
                del module._forward_hooks[key]
                removed += 1
    return removed
