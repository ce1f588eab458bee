"""PT2E QAT with the folded conv-BN bias fake-quantized on its accumulator grid (pot qconfigs
with snap_bias), the counterpart of quant/eager/bias_quant.py.

torchao's QAT conv-BN pattern is `batch_norm(conv2d(fq(x), fq(w * k), None) / k)` with
`k = gamma / sqrt(running_var + eps)`. The conv has no bias for a DerivedQuantizationSpec to
quantize: the bias only appears when convert folds BN, `B = beta - running_mean * k`
(inspect.snap_biases then snaps it). So after every such batch_norm node a `FoldedBiasSnap`
node adds `round_half_even(B / g) * g - B` (detached: a straight-through estimator) with
`g = s_in * s_w`, read from the two fake-quants the conv reads. It is active when BN uses its
running statistics (frozen, or eval) and passes through while BN normalises with batch
statistics, where no single folded bias exists; graph.py switches it with the BN mode.
convert removes the nodes first (`remove`), so the int8 program carries none of it.
The linear's own bias already has a derived fake-quant in torchao's QAT graph.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e import FakeQuantizeBase

from labquant.quant.pot import folded_bias, snap_correction
from labquant.quant.pt2e.conv_bn import conv_bn_folds

_PREFIX = "labquant_bias_snap_"


class FoldedBiasSnap(nn.Module):
    """Adds the snap correction of a conv-BN's folded bias to the BN output, when active."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False

    def forward(
        self,
        out: Tensor,
        gamma: Tensor,
        beta: Tensor,
        mean: Tensor,
        var: Tensor,
        in_scale: Tensor,
        w_scale: Tensor,
        eps: float,
    ) -> Tensor:
        if not self.active:
            return out
        bias = folded_bias(gamma, beta, mean, var, eps, conv_bias=None)
        correction = snap_correction(bias, in_scale * w_scale)
        return out + correction.reshape(1, -1, *([1] * (out.dim() - 2)))


def _fake_quant_of(gm: GraphModule, node: object) -> str | None:
    is_module = isinstance(node, Node) and node.op == "call_module"
    if is_module and isinstance(gm.get_submodule(str(node.target)), FakeQuantizeBase):
        return str(node.target)
    return None


def install(gm: GraphModule) -> int:
    """Insert a FoldedBiasSnap after every `conv2d(fq, fq, None) / k -> batch_norm`; returns
    how many."""
    count = 0
    for fold in conv_bn_folds(gm):
        bn, conv = fold.batch_norm, fold.conv
        if bn.args[0] is not fold.division or conv.args[2] is not None:
            continue  # a conv bias of its own: no such fold in labquant's networks
        sources = [_fake_quant_of(gm, conv.args[0]), _fake_quant_of(gm, conv.args[1])]
        if None in sources:
            continue
        name = f"{_PREFIX}{count}"
        gm.add_module(name, FoldedBiasSnap())
        scales = []
        anchor = bn
        for source in sources:
            with gm.graph.inserting_after(anchor):
                anchor = gm.graph.get_attr(f"{source}.scale")
            scales.append(anchor)
        _x, gamma, beta, mean, var = bn.args[:5]
        eps = bn.args[7] if len(bn.args) > 7 else 1e-5
        with gm.graph.inserting_after(anchor):
            snap = gm.graph.call_module(name, (bn, gamma, beta, mean, var, *scales, eps))
        for user in [user for user in bn.users if user is not snap]:
            user.replace_input_with(bn, snap)
        count += 1
    gm.recompile()
    return count


def set_active(gm: nn.Module, active: bool) -> None:
    for module in gm.modules():
        if isinstance(module, FoldedBiasSnap):
            module.active = active


def remove(gm: GraphModule) -> int:
    """Take the snap nodes out (before convert): each one's users read the BN output again."""
    removed = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith(_PREFIX):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            for scale in node.args[5:7]:
                if isinstance(scale, Node) and not scale.users:
                    gm.graph.erase_node(scale)
            delattr(gm, str(node.target))
            removed += 1
    if removed:
        gm.recompile()
    return removed
