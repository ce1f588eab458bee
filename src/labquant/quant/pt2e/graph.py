"""Exported-graph plumbing: capture, train / eval switching, BN freezing, unused-state pruning.

An exported GraphModule has no real `.train()` / `.eval()`: its batch norm and dropout ops are
baked into the graph. torchao's move helpers rewrite those ops between their train and eval
patterns; `allow_train_eval` makes `.train()` / `.eval()` (what Lightning calls) run them, and
keeps frozen BatchNorm statistics frozen across the switch (see `freeze_batch_norm_stats`).
"""

from __future__ import annotations

import types

import torch
from torch import Tensor, nn
from torch.fx import GraphModule
from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

from labquant.quant.pt2e import bias_quant, conv_bn
from labquant.quant.pt2e.conv_bn import BATCH_NORM, TRAINING_ARG

BN_FROZEN = "_labquant_bn_frozen"


def capture(net: nn.Module, example: Tensor) -> GraphModule:
    """torch.export of `net` in its current mode, the batch dimension dynamic (example batch of
    at least two: a batch of one would specialize it)."""
    device = next(net.parameters()).device
    example = example[:2].detach().to(device)
    if len(example) < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = {0: torch.export.Dim.DYNAMIC}
    return torch.export.export(net, (example,), dynamic_shapes=(batch,)).module()


def freeze_batch_norm_stats(gm: GraphModule) -> None:
    """BatchNorm in a training graph normalizes with the batch's statistics and updates the
    running ones; frozen, it normalizes with the running statistics and updates nothing, the
    same as eager's `freeze_bn_stats` on a fused ConvBn (and torch's PT2E QAT recipe: set the
    `training` argument of every batch_norm node to False). Sticky across `.train()`."""
    setattr(gm, BN_FROZEN, True)
    _set_batch_norm_training(gm, False)
    bias_quant.set_active(gm, True)
    conv_bn.sync_fold_divisors(gm)  # the division's gradient matters again


def _set_batch_norm_training(gm: GraphModule, training: bool) -> None:
    changed = False
    for node in gm.graph.nodes:
        if node.target is BATCH_NORM and node.args[TRAINING_ARG] is not training:
            args = list(node.args)
            args[TRAINING_ARG] = training
            node.args = tuple(args)
            changed = True
    if changed:
        gm.recompile()


def _train(self: GraphModule, mode: bool = True) -> GraphModule:
    frozen = getattr(self, BN_FROZEN, False)
    if mode:
        move_exported_model_to_train(self)
        if frozen:
            _set_batch_norm_training(self, False)
    else:
        move_exported_model_to_eval(self)
    # The folded-bias fake-quant is on exactly when BN uses its running statistics.
    bias_quant.set_active(self, frozen or not mode)
    conv_bn.sync_fold_divisors(self)  # QAT's conv-BN fold: scale-free while BN trains
    return self


def _eval(self: GraphModule) -> GraphModule:
    return self.train(False)


def allow_train_eval(gm: GraphModule) -> GraphModule:
    """torchao's `allow_exported_model_train_eval`, plus sticky BN freezing."""
    gm.train = types.MethodType(_train, gm)  # type: ignore[method-assign]
    gm.eval = types.MethodType(_eval, gm)  # type: ignore[method-assign]
    return gm


def drop_unused_state(gm: GraphModule) -> GraphModule:
    """Remove parameters / buffers no node reads (after convert, the FP32 weights that the int8
    constants replaced), so a re-export does not carry them into the .pt2 file."""
    gm.graph.eliminate_dead_code()
    used = {node.target for node in gm.graph.nodes if node.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name in used:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        delattr(owner, attr)
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
