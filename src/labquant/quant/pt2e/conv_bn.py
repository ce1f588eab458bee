"""torchao's conv-BN QAT fold in an exported graph, with the division's scale-free gradient
skipped while BatchNorm uses batch statistics (the eager twin: quant/eager/conv_bn.py).

`prepare_qat_pt2e` rewrites each conv -> batch_norm into
`batch_norm(conv(x, fq(w * k)) / k [+ b])`, `k = gamma / sqrt(running_var + eps)`. While the
batch_norm node has `training=True` (batch statistics) the division by a positive per-channel
`k` changes its output only through eps, so its gradient with respect to `k` is about 1e-5 of
gamma's; autograd still computes it over every activation. `sync_fold_divisors` makes each such
division read `detach(k)` exactly while its batch_norm node trains and `k` itself otherwise
(frozen statistics, where the division cancels the `k` in the weights, and eval). It is
called whenever the graph's BatchNorm mode changes (quant/pt2e/graph.py), so the graph's state
decides, and nothing else is stored; convert re-attaches every divisor first, so torchao's fold
finds its own pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

_aten = torch.ops.aten
BATCH_NORM = _aten.batch_norm.default
TRAINING_ARG = 5  # aten.batch_norm(input, weight, bias, mean, var, training, momentum, eps, ...)


@dataclass(frozen=True)
class ConvBnFold:
    """One `batch_norm(conv / k [+ b])` of torchao's QAT rewrite (`b`: the conv's own bias)."""

    batch_norm: Node
    division: Node
    conv: Node


def conv_bn_folds(gm: GraphModule) -> list[ConvBnFold]:
    """Every conv-BN fold of a PT2E QAT graph (bias_quant.py snaps their folded biases)."""
    folds = []
    for node in gm.graph.nodes:
        if node.target is not BATCH_NORM:
            continue
        division = node.args[0]
        if isinstance(division, Node) and division.target is _aten.add.Tensor:
            division = division.args[0]
        if not (isinstance(division, Node) and division.target is _aten.div.Tensor):
            continue
        conv = division.args[0]
        if isinstance(conv, Node) and conv.target is _aten.conv2d.default:
            folds.append(ConvBnFold(node, division, conv))
    return folds


def sync_fold_divisors(gm: GraphModule, detach: bool = True) -> int:
    """Detach each fold's divisor where its batch_norm trains, re-attach it elsewhere (and
    everywhere with `detach=False`: what convert must see, torchao's own pattern); returns how
    many divisions are detached now."""
    changed, detached = False, 0
    for fold in conv_bn_folds(gm):
        numerator, divisor = fold.division.args
        is_detached = isinstance(divisor, Node) and divisor.target is _aten.detach.default
        if detach and fold.batch_norm.args[TRAINING_ARG] is True:
            detached += 1
            if not is_detached:
                with gm.graph.inserting_before(fold.division):
                    detach_node = gm.graph.call_function(_aten.detach.default, (divisor,))
                detach_node.meta = dict(divisor.meta)
                fold.division.args = (numerator, detach_node)
                changed = True
        elif is_detached:
            fold.division.args = (numerator, divisor.args[0])
            gm.graph.erase_node(divisor)
            changed = True
    if changed:
        gm.recompile()
    return detached
