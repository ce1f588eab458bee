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

import torch
from torch.fx import GraphModule, Node

_aten = torch.ops.aten
_TRAINING_ARG = 5  # aten.batch_norm(input, weight, bias, mean, var, training, momentum, eps, ...)


def _batch_norm_after(division: Node) -> Node | None:
    """The batch_norm node the fold's division feeds (directly, or through the conv bias add)."""
    for user in division.users:
        if user.target is _aten.batch_norm.default and user.args[0] is division:
            return user
        if user.target is _aten.add.Tensor and len(user.users) == 1:
            (after,) = user.users
            if after.target is _aten.batch_norm.default and after.args[0] is user:
                return after
    return None


def _fold_divisions(gm: GraphModule) -> list[tuple[Node, Node]]:
    """(division, batch_norm) for every `conv / reshape(k)` that feeds a batch_norm."""
    found = []
    for node in gm.graph.nodes:
        if node.target is not _aten.div.Tensor or len(node.args) != 2:
            continue
        numerator, divisor = node.args
        if not isinstance(numerator, Node) or numerator.target is not _aten.conv2d.default:
            continue
        if not isinstance(divisor, Node):
            continue
        live = divisor.args[0] if divisor.target is _aten.detach.default else divisor
        if not isinstance(live, Node) or live.target is not _aten.reshape.default:
            continue
        batch_norm = _batch_norm_after(node)
        if batch_norm is not None:
            found.append((node, batch_norm))
    return found


def sync_fold_divisors(gm: GraphModule, detach: bool = True) -> int:
    """Detach each fold's divisor where its batch_norm trains, re-attach it elsewhere (and
    everywhere with `detach=False`: what convert must see, torchao's own pattern); returns how
    many divisions are detached now."""
    changed, detached = False, 0
    for division, batch_norm in _fold_divisions(gm):
        numerator, divisor = division.args
        is_detached = divisor.target is _aten.detach.default
        if detach and batch_norm.args[_TRAINING_ARG] is True:
            detached += 1
            if not is_detached:
                with gm.graph.inserting_before(division):
                    detach = gm.graph.call_function(_aten.detach.default, (divisor,))
                detach.meta = dict(divisor.meta)
                division.args = (numerator, detach)
                changed = True
        elif is_detached:
            division.args = (numerator, divisor.args[0])
            gm.graph.erase_node(divisor)
            changed = True
    if changed:
        gm.recompile()
    return detached
