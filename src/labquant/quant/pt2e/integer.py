"""A converted PT2E power-of-two program (the `.pt2` a stage ships) as the integer program of
hw/program.py, and the program's own codes per op, to measure bit-exactness against.

The walk reads the Q/DQ graph as torchao's convert leaves it, op by op: every
`quantize_per_tensor` ends one integer op, named after the module it came from
(`nn_module_stack`), so the names are the eager export's: `quant`, `conv1`, `layer1.0.conv1`,
`layer1.0.skip_add`, `avgpool`, `fc`.

- quantize(<graph input>): the input quantization;
- quantize([relu](conv2d | linear(dequantize(q_in), dequantize(int8 weight), dequantize(int32
  bias)))): a conv / linear op (the bias is already on its accumulator grid);
- quantize([relu](add(dequantize(a), dequantize(b)))): the residual add;
- quantize(adaptive_avg_pool2d(dequantize(q), [1, 1])): the global average pool;
- quantize(flatten(dequantize(q))) with q's qparams: nothing (linear flattens its input).

Per-channel weight dequantization with one scale for every channel (how the pot quantizer
writes per-tensor weights, for Inductor's lowering) is one shift; genuinely per-channel scales
(granularity=per_channel) are one shift per output channel, their float bias snapped to each
channel's grid. A narrowed activation range (quant_min / quant_max of the quantize, through
the clamp widths.py inserts) is the op's `out_range`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Node

from labquant.errors import ConfigError
from labquant.hw.builder import Conv, ProgramBuilder, narrowed
from labquant.hw.program import Codes, IntegerProgram
from labquant.quant.pot import FIX_EXPORT, bits_of, shift_of, shifts_of
from labquant.quant.pt2e.inspect import ADDS, RELUS, Recorder, getattr_path, module_name
from labquant.quant.pt2e.widths import unclamped

aten = torch.ops.aten
_decomposed = torch.ops.quantized_decomposed
Q = _decomposed.quantize_per_tensor.default
DQ = _decomposed.dequantize_per_tensor.default
DQ_PER_CHANNEL = _decomposed.dequantize_per_channel.default
CONV, LINEAR = aten.conv2d.default, aten.linear.default
POOLS = (aten.adaptive_avg_pool2d.default, aten.mean.dim)
FLATTENS = (aten.flatten.using_ints, aten.view.default, aten.reshape.default)


class _Reader:
    """Reads the Q/DQ graph op by op into the program builder."""

    def __init__(self, gm: GraphModule, clamp: dict[str, Any]) -> None:
        self.gm = gm
        self.build = ProgramBuilder(clamp)
        self.sources: dict[Node, Codes] = {}  # quantize node -> the op whose codes it holds
        self.op_nodes: dict[str, Node] = {}  # op output name -> its quantize node

    def const(self, node: Any) -> Any:
        return getattr_path(self.gm, node.target) if isinstance(node, Node) else node

    def source(self, dq: Any, where: str) -> Codes:
        """The op whose codes a dequantize node reads."""
        if not (isinstance(dq, Node) and dq.target is DQ and dq.args[0] in self.sources):
            raise ConfigError(f"{where}: an input that is not a uint8 tensor of the program")
        return self.sources[dq.args[0]]

    def emit(self, quantize: Node, codes: Codes) -> None:
        self.sources[quantize] = codes
        self.op_nodes[codes[0]] = quantize

    def qparams(self, quantize: Node, name: str) -> tuple[int, int]:
        return shift_of(float(quantize.args[1]), name), int(quantize.args[2])

    @staticmethod
    def out_range(quantize: Node) -> list[int] | None:
        """The op's code range where the quantize narrows it below 0..255."""
        return narrowed(quantize.args[3:5])

    def quantize_input(self, quantize: Node) -> None:
        out = self.qparams(quantize, "quant")
        self.emit(quantize, self.build.quantize("quant", out, self.out_range(quantize)))

    def weight(self, dq: Any, name: str) -> tuple[np.ndarray, int | list[int], int]:
        """The int8 codes, the shift (or one per output channel) and the width of a weight."""
        if not (isinstance(dq, Node) and dq.target in (DQ, DQ_PER_CHANNEL)):
            raise ConfigError(f"{name}: its weight is not an int8 tensor of the program")
        codes = self.const(dq.args[0])
        scale, zero_point = self.const(dq.args[1]), self.const(dq.args[2])
        if torch.as_tensor(zero_point).any():
            raise ConfigError(f"{name} has weight zero points; {FIX_EXPORT}")
        qmin, qmax = (dq.args[4], dq.args[5]) if dq.target is DQ_PER_CHANNEL else dq.args[3:5]
        shift = shifts_of(scale, f"{name}.weight")
        return codes.detach().cpu().numpy(), shift, bits_of(qmin, qmax)

    def bias(self, node: Any, name: str) -> tuple[np.ndarray | None, int | None]:
        """The bias: int32 codes and their shift (a dequantized int32 tensor), or a float bias
        and None (the builder snaps it onto each channel's accumulator grid), or none."""
        if node is None:
            return None, None
        if isinstance(node, Node) and node.target is DQ:
            shift = shift_of(float(node.args[1]), f"{name}.bias")
            return self.const(node.args[0]).detach().cpu().numpy(), shift
        return self.const(node).detach().cpu().numpy(), None

    def matmul(self, quantize: Node, node: Node, relu: bool) -> None:
        name = module_name(node) or node.name
        source = self.source(node.args[0], name)
        weight, w_shift, w_bits = self.weight(node.args[1], name)
        out = self.qparams(quantize, name)
        bias, bias_shift = self.bias(node.args[2] if len(node.args) > 2 else None, name)
        conv = None
        if node.target is CONV:
            stride, padding, dilation, groups = (list(node.args[3:7]) + [None] * 4)[:4]
            conv = Conv(stride or [1, 1], padding or [0, 0], groups or 1, dilation or [1, 1])
        codes = self.build.matmul(
            name, source, weight, w_shift, w_bits, out, relu=relu, bias=bias,
            bias_shift=bias_shift, conv=conv, out_range=self.out_range(quantize),
        )  # fmt: skip
        self.emit(quantize, codes)

    def add(self, quantize: Node, node: Node, relu: bool) -> None:
        block = module_name(node)
        name = f"{block}.skip_add" if block else node.name
        a, b = (self.source(arg, name) for arg in node.args[:2])
        out = self.qparams(quantize, name)
        self.emit(quantize, self.build.add(name, a, b, out, relu, self.out_range(quantize)))

    def avgpool(self, quantize: Node, node: Node) -> None:
        name = module_name(node) or "avgpool"
        source = self.source(node.args[0], name)
        if self.qparams(quantize, name) != source[1:]:
            raise ConfigError(f"{name}: the pooled output is requantized (other qparams)")
        value = node.args[0].meta.get("val")
        if value is None:
            raise ConfigError(f"{name}: the program does not record its input shape")
        window = int(value.shape[-1]) * int(value.shape[-2])
        self.emit(quantize, self.build.avgpool(name, source, window, self.out_range(quantize)))

    def visit(self, quantize: Node) -> None:
        node = unclamped(quantize.args[0])
        if node.op == "placeholder":
            return self.quantize_input(quantize)
        relu = node.target in RELUS
        inner = node.args[0] if relu else node
        if inner.target in (CONV, LINEAR):
            return self.matmul(quantize, inner, relu)
        if inner.target in ADDS:
            return self.add(quantize, inner, relu)
        if not relu and node.target in POOLS:
            return self.avgpool(quantize, node)
        if not relu and node.target in FLATTENS:
            source = self.source(node.args[0], node.name)
            if self.qparams(quantize, node.name) != source[1:]:
                raise ConfigError(f"{node.name}: a reshape that requantizes")
            self.sources[quantize] = source  # the same codes, another shape
            return None
        raise ConfigError(f"{module_name(node) or node.name}: {node.target} is not supported")


def integer_program(
    gm: GraphModule, clamp: dict[str, Any] | None = None
) -> tuple[IntegerProgram, dict[str, Node]]:
    """The integer program of a converted (unlifted) PT2E graph, and each op's quantize node."""
    read = _Reader(gm, clamp or {})
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is Q:
            read.visit(node)
    program = read.build.program()
    if not program.ops or program.ops[-1]["op"] != "linear":
        raise ConfigError(f"the program does not end in a quantized linear layer; {FIX_EXPORT}")
    return program, read.op_nodes


class PT2EIntegerExport:
    """A stage's converted program, its integer program, and its own codes per op: the Q/DQ
    graph run as it is (dequantize, float op, quantize), and each runtime's logits codes."""

    engine = "pt2e Q/DQ graph"

    def __init__(self, gm: GraphModule, program: IntegerProgram, nodes: dict[str, Node],
                 runtimes: dict[str, Any]) -> None:  # fmt: skip
        self.gm, self.program, self.nodes, self.runtimes = gm, program, nodes, runtimes

    @torch.inference_mode()
    def layer_codes(self, x: Tensor) -> dict[str, np.ndarray]:
        run = Recorder(self.gm, {node: name for name, node in self.nodes.items()})
        run.run(x.detach().cpu())
        return {name: codes.cpu().numpy() for name, codes in run.values.items()}

    def runtime_codes(self, x: Tensor) -> dict[str, np.ndarray]:
        """Each runtime's logits as uint8 codes (its float output is a dequantized uint8)."""
        last = self.program.ops[-1]
        scale, zero_point = 2.0 ** -last["out_shift"], last["out_zero_point"]
        codes = {}
        for name, run in self.runtimes.items():
            with torch.inference_mode():
                logits = run(x).detach().cpu().double()
            codes[name] = (torch.round(logits / scale) + zero_point).clamp(0, 255).numpy()
        return codes


def integer_export(module: nn.Module, clamp: dict[str, Any], runtimes: dict[str, Any]):
    if not isinstance(module, GraphModule):
        raise ConfigError(f"the stage's int8 file holds no graph; {FIX_EXPORT}")
    program, nodes = integer_program(module, clamp)
    return PT2EIntegerExport(module, program, nodes, runtimes)
