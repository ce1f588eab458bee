"""What a PT2E int8 graph is made of: per-layer qparams, power-of-two clamp hits and SQNR
(the eager layer table's columns), fake-quant scales for logs, and bias snapping.

Layers are the converted graph's conv / linear nodes, named by the module they came from
(`nn_module_stack`), so the names match the eager backend's and the FP32 model's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Interpreter, Node
from torchao.quantization.pt2e import FakeQuantizeBase, ObserverBase

from labquant.quant.layers import LayerRow, measure, observer_status

aten = torch.ops.aten
# The op groups every pt2e graph pass matches (quantizer, integer export, inspection).
ADDS = (aten.add.Tensor, aten.add_.Tensor)
RELUS = (aten.relu.default, aten.relu_.default)
MATMULS = (aten.conv2d.default, aten.linear.default)
QUANTIZE = "quantize_per_tensor"
DEQUANTIZE = "dequantize_per"


def module_name(node: Node) -> str | None:
    """The FQN of the module a node was traced from (`layer1.0.conv1`), if recorded."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    fqn = list(stack.values())[-1][0]
    return fqn.replace("L['self'].", "").replace("L__self___", "") or None


def _is(node: Any, fragment: str) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and fragment in str(node.target)


def _const(gm: GraphModule, node: Any) -> Any:
    """A get_attr node's tensor (per-channel scales), anything else as it is."""
    if isinstance(node, Node) and node.op == "get_attr":
        return getattr_path(gm, node.target)
    return node


def getattr_path(gm: nn.Module, target: str) -> Any:
    owner = gm
    for part in target.split("."):
        owner = getattr(owner, part)
    return owner


def _output_quantize(node: Node) -> Node | None:
    """The quantize node that ends a conv / linear's fused chain (conv -> [relu] -> quantize);
    None for a conv fused into a residual add (backend=pt2e_fused): its output is never
    quantized, and the add's quantize is the add's own."""
    current = node
    for _ in range(4):
        users = list(current.users)
        if len(users) != 1 or users[0].target in ADDS:
            return None
        current = users[0]
        if _is(current, QUANTIZE):
            return current
    return None


def _matmuls(gm: GraphModule) -> list[tuple[str, Node]]:
    seen: dict[str, int] = {}
    found = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in MATMULS:
            name = module_name(node) or node.name
            seen[name] = seen.get(name, 0) + 1
            found.append((name if seen[name] == 1 else f"{name}#{seen[name]}", node))
    return found


def _qparams(gm: GraphModule, dq: Any) -> tuple[Any, Any]:
    """(scale, zero point) of a dequantize node, as Python numbers or lists."""
    if not _is(dq, DEQUANTIZE):
        return None, None
    scale, zero_point = _const(gm, dq.args[1]), _const(gm, dq.args[2])
    if isinstance(scale, Tensor):
        scale = scale.detach().flatten().tolist()
        scale = scale[0] if len(set(scale)) == 1 else scale
    if isinstance(zero_point, Tensor):
        zero_point = zero_point.detach().flatten().tolist()
        zero_point = zero_point[0] if len(set(zero_point)) == 1 else zero_point
    return scale, zero_point


def snap_biases(gm: GraphModule) -> int:
    """Put every float bias on its accumulator grid, round(b / (s_in * s_w)) * s_in * s_w:
    the int32 bias a shift-only accelerator adds, per channel where the weight shifts are (QAT
    biases come from BN folding at convert, after annotation, and per-channel shifts have one
    grid per channel, so no DerivedQuantizationSpec quantizes them). Returns how many values
    moved."""
    moved = 0
    for _, node in _matmuls(gm):
        bias = node.args[2] if len(node.args) > 2 else None
        if not (isinstance(bias, Node) and bias.op == "get_attr"):
            continue
        s_in, _ = _qparams(gm, node.args[0])
        s_w, _ = _qparams(gm, node.args[1])
        if not isinstance(s_in, float) or s_w is None:
            continue
        grid = s_in * torch.as_tensor(s_w, dtype=torch.float64)  # one, or one per channel
        value = getattr_path(gm, bias.target)
        snapped = (torch.round(value.detach().double() / grid) * grid).to(value.dtype)
        moved += int((snapped != value).sum())
        with torch.no_grad():
            value.copy_(snapped)
    return moved


def _input_name(node: Node, layers: dict[Node, str]) -> str:
    """What a fake-quant's input is called: the module that computed it (`layer1.0.relu1`),
    the conv / linear it comes from through BN-fold and bias-snap nodes (`layer1.0.conv2`),
    the parameter (`fc.weight`) or the graph input (`x`)."""
    source: Any = node
    for _ in range(8):
        if not isinstance(source, Node):
            break
        if source in layers:
            return layers[source]
        if source.op == "placeholder":
            return source.name
        if source.op == "get_attr":
            return str(source.target)
        if source.op == "call_function" and (name := module_name(source)):
            return name
        source = source.args[0] if source.args else None
    return node.name


def named_fake_quants(gm: nn.Module) -> list[tuple[str, FakeQuantizeBase]]:
    """Every fake-quant module, named by the tensor it quantizes (unique names): `<layer>.weight`
    for a conv / linear weight (QAT's BN-folded ones included), else `_input_name`'s."""
    targets: dict[str, str] = {}
    if isinstance(gm, GraphModule):
        matmuls = _matmuls(gm)
        for layer, node in matmuls:
            weight = node.args[1]
            if isinstance(weight, Node) and weight.op == "call_module":
                targets[str(weight.target)] = f"{layer}.weight"
        layers = {node: layer for layer, node in matmuls}
        for node in gm.graph.nodes:
            if node.op == "call_module" and str(node.target) not in targets and node.args:
                targets[str(node.target)] = _input_name(node.args[0], layers)
    named, seen = [], set()
    for name, m in gm.named_modules():
        if isinstance(m, FakeQuantizeBase):
            label = targets.get(name, name)
            label = label if label not in seen else f"{label}#{name}"
            seen.add(label)
            named.append((label, m))
    return named


def fake_quant_scales(gm: nn.Module) -> dict[str, float]:
    """Every fake-quant scale by `named_fake_quants`' names (per channel: the largest)."""
    scales: dict[str, float] = {}
    for name, m in named_fake_quants(gm):
        scale = getattr(m, "scale", None)
        if isinstance(scale, Tensor) and scale.numel():
            scales[name] = float(scale.max())
    return scales


def _observer_after(node: Node, gm: GraphModule) -> Any:
    current = node
    for _ in range(5):
        users = list(current.users)
        if not users:
            return None
        current = users[0]
        if current.op == "call_module":
            return gm.get_submodule(current.target)
    return None


def clamp_hits(prepared: nn.Module) -> dict[str, dict[str, str | None]]:
    """Per layer of the prepared graph: did the power-of-two clamp trigger (None: no clamp)."""
    hits: dict[str, dict[str, str | None]] = {}
    if not isinstance(prepared, GraphModule):
        return hits
    for name, node in _matmuls(prepared):
        weight = node.args[1]
        weight_obs = (
            prepared.get_submodule(weight.target)
            if isinstance(weight, Node) and weight.op == "call_module"
            else None
        )
        out = _observer_after(node, prepared)
        if isinstance(out, (ObserverBase, FakeQuantizeBase)) or out is None:
            hits[name] = {"activation": observer_status(out), "weight": observer_status(weight_obs)}
    return hits


class Recorder(Interpreter):
    """Runs a graph as it is and keeps the outputs of the wanted nodes, by name."""

    def __init__(self, gm: GraphModule, wanted: dict[Node, str]) -> None:
        super().__init__(gm)
        self.wanted, self.values = wanted, {}

    def run_node(self, n: Node) -> Any:
        out = super().run_node(n)
        if n in self.wanted:
            self.values[self.wanted[n]] = out.detach()
        return out


def _weight_codes(gm: GraphModule, dq: Any) -> tuple[tuple[int, int] | None, Tensor | None]:
    """A weight dequantize's code range and its dequantized value."""
    if not (_is(dq, DEQUANTIZE) and isinstance(dq.args[0], Node)):
        return None, None
    codes, scale = _const(gm, dq.args[0]), _const(gm, dq.args[1])
    per_channel = "per_channel" in str(dq.target)
    qmin, qmax = (dq.args[4], dq.args[5]) if per_channel else (dq.args[3], dq.args[4])
    scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    if scale.numel() > 1:
        scale = scale.reshape(-1, *([1] * (codes.dim() - 1)))
    return (int(qmin), int(qmax)), codes.float() * scale


def layer_table(
    fp32_net: nn.Module, prepared: nn.Module, int8: nn.Module, batch: Tensor
) -> list[dict[str, Any]]:
    """results.json's `layers` for a PT2E int8 graph (quant/layers.py rows, as eager's)."""
    gm = int8
    clamps = clamp_hits(prepared)
    outputs: dict[Node, str] = {}
    rows = []
    for name, node in _matmuls(gm):
        quantize = _output_quantize(node)
        dequantize = next(iter(quantize.users), None) if quantize is not None else None
        if dequantize is not None:
            outputs[dequantize] = name
        weight_scale, _ = _qparams(gm, node.args[1])
        weight_range, weight = _weight_codes(gm, node.args[1])
        source = node.args[0]
        input_range = (
            (int(source.args[3]), int(source.args[4])) if _is(source, DEQUANTIZE) else None
        )
        rows.append(
            LayerRow(
                name=name,
                type="Conv2d" if node.target == aten.conv2d.default else "Linear",
                scale=float(quantize.args[1]) if quantize is not None else None,
                zero_point=int(quantize.args[2]) if quantize is not None else None,
                weight_scale=weight_scale,
                clamp=clamps.get(name, {"activation": None, "weight": None}),
                quant_range=(int(quantize.args[3]), int(quantize.args[4]))
                if quantize is not None
                else None,
                weight_range=weight_range,
                input_range=input_range,
                weight_int8=weight,
            )
        )
    recorder = Recorder(gm, outputs)
    with torch.inference_mode():
        recorder.run(batch.cpu())
    return measure(rows, fp32_net, batch, recorder.values)


def layer_weights(prepared: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """The float weight of each named conv / linear of a prepared graph: the parameter its
    weight input is traced back to (through observers, fake quants and QAT's BN-fold scaling)."""
    weights: dict[str, Tensor] = {}
    if not isinstance(prepared, GraphModule):
        return weights
    wanted = set(names)
    for name, node in _matmuls(prepared):
        source = node.args[1] if len(node.args) > 1 else None
        for _ in range(6):
            if not isinstance(source, Node) or source.op == "get_attr" or not source.args:
                break
            source = source.args[0]
        if name in wanted and isinstance(source, Node) and source.op == "get_attr":
            weights[name] = getattr_path(prepared, source.target).detach().float().cpu()
    return weights
