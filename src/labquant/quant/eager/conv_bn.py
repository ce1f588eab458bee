"""torch's fused conv-BN QAT fold with the forward unchanged and a cheaper backward.

torch's `_ConvBnNd._forward_approximate` computes `bn(conv(x, fq(w * k)) / k + b)` with
`k = gamma / running_std`. While BN normalises with batch statistics, dividing a channel by a
positive `k` before it changes nothing but the role of `eps`: the division's gradient with
respect to `k` is the normalised output times `-gamma * eps / (var + eps)`, about 1e-5 of the
gradient through the weights. torch still computes it over the whole activation (a product,
a negation and a reduction per conv): 55 ms of a 512 ms QAT step (small model, batch 128, 2 AMX
cores). Here the division reads a detached `k` in that case only:

- the forward is bit for bit torch's (outputs, running statistics, the folded weights);
- the weights' gradients are torch's exactly; gamma's differs by the eps term above;
- with BatchNorm's running statistics (frozen at `quant.freeze_bn_epoch`, and in eval) the
  division is not scale-free (there it cancels the `k` inside the weights), and torch's own
  fold runs unchanged.

`install` binds it to every fused conv-BN of a prepared network (the modules keep torch's
classes, which torch's convert and `freeze_bn_stats` check by exact type).
"""

from __future__ import annotations

import types

import torch
from torch import Tensor, nn
from torch.ao.nn.intrinsic.qat.modules.conv_fused import _ConvBnNd


def scale_free_fold(self: _ConvBnNd, input: Tensor) -> Tensor:
    """`_ConvBnNd._forward_approximate` (torch 2.5-2.15), the division detached while BN uses
    batch statistics."""
    bn = self.bn
    if bn.running_var is None:
        raise AssertionError("a fused conv-BN needs BatchNorm running statistics")
    running_std = torch.sqrt(bn.running_var + bn.eps)
    scale_factor = bn.weight / running_std
    weight_shape = [1] * self.weight.dim()
    weight_shape[0] = -1
    bias_shape = [1] * self.weight.dim()
    bias_shape[1] = -1
    scaled_weight = self.weight_fake_quant(self.weight * scale_factor.reshape(weight_shape))
    # The conv's own bias is added after the fold.
    zero_bias = torch.zeros(self.out_channels, device=scaled_weight.device, dtype=input.dtype)
    conv = self._conv_forward(input, scaled_weight, zero_bias)
    divisor = scale_factor.detach() if bn.training else scale_factor
    conv_orig = conv / divisor.reshape(bias_shape)
    if self.bias is not None:
        conv_orig = conv_orig + self.bias.reshape(bias_shape)
    return bn(conv_orig)


def install(prepared: nn.Module) -> int:
    """Every fused conv-BN of `prepared` folds with `scale_free_fold`; returns how many."""
    count = 0
    for module in prepared.modules():
        if isinstance(module, _ConvBnNd):
            # An instance attribute over the class's method: a deep copy rebinds it to the copy.
            module._forward_approximate = types.MethodType(scale_free_fold, module)
            count += 1
    return count
