"""A converted eager power-of-two int8 model as an integer program (hw/program.py), the torch
int8 model's own codes per layer (to measure bit-exactness), and bias snapping.

The walk follows labquant's ResNets (quant -> stem conv -> blocks with `skip_add.add_relu` ->
global avgpool -> fc), duck-typed: quant/ does not import models/.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
from torch import Tensor, nn

from labquant.errors import ConfigError
from labquant.hw.builder import Conv, ProgramBuilder, narrowed
from labquant.hw.program import Codes, IntegerProgram
from labquant.quant.pot import FIX_EXPORT, shift_of, shifts_of

_QUANTIZED_MATMUL = (nnq.Conv2d, nnq.Linear)


_PER_TENSOR = (torch.per_tensor_affine, torch.per_tensor_symmetric)


def weight_shifts(weight: Tensor, name: str) -> int | list[int]:
    """The weight's shift, or one per output channel (granularity=per_channel); its zero
    points must be 0 (symmetric)."""
    if weight.qscheme() in _PER_TENSOR:
        if int(weight.q_zero_point()) != 0:
            raise ConfigError(f"{name}.weight has a zero point; {FIX_EXPORT}")
        return shift_of(weight.q_scale(), f"{name}.weight")
    if bool(weight.q_per_channel_zero_points().any()):
        raise ConfigError(f"{name}.weight has zero points; {FIX_EXPORT}")
    return shifts_of(weight.q_per_channel_scales(), f"{name}.weight")


class _Reader:
    """Reads each converted module's weights and qparams into the program builder."""

    def __init__(
        self,
        clamp: dict[str, Any],
        ranges: dict[str, tuple[int, int]],
        weight_bits: Callable[[str], int],
    ) -> None:
        self.build = ProgramBuilder(clamp)
        self.ranges, self.weight_bits = ranges, weight_bits

    def out_range(self, name: str) -> list[int] | None:
        return narrowed(self.ranges.get(name))

    @staticmethod
    def qparams(name: str, module: nn.Module) -> tuple[int, int]:
        return shift_of(float(module.scale), name), int(module.zero_point)

    def quantize(self, name: str, module: nn.Module) -> Codes:
        return self.build.quantize(name, self.qparams(name, module), self.out_range(name))

    def matmul(self, name: str, module: nn.Module, source: Codes) -> Codes:
        if not isinstance(module, _QUANTIZED_MATMUL):
            raise ConfigError(f"{name} is {type(module).__name__}, not a quantized conv/linear")
        weight = module.weight()
        w_shift = weight_shifts(weight, name)
        out = self.qparams(name, module)
        bias = module.bias()
        conv = None
        if isinstance(module, nnq.Conv2d):
            conv = Conv(module.stride, module.padding, module.groups, module.dilation)
        return self.build.matmul(
            name, source, weight.int_repr().numpy(), w_shift, self.weight_bits(name), out,
            relu=isinstance(module, (nniq.ConvReLU2d, nniq.LinearReLU)),
            bias=None if bias is None else bias.detach().numpy(), conv=conv,
            out_range=self.out_range(name),
        )  # fmt: skip

    def add(self, name: str, module: nn.Module, a: Codes, b: Codes, relu: bool) -> Codes:
        out = self.qparams(name, module)
        return self.build.add(name, a, b, out, relu, self.out_range(name))

    def avgpool(self, name: str, source: Codes, window: int) -> Codes:
        codes = self.ranges.get(source[0])
        if codes is not None:
            self.ranges[name] = codes  # the mean of codes stays inside their range
        return self.build.avgpool(name, source, window, self.out_range(name))


def integer_program(
    int8: nn.Module,
    input_hw: tuple[int, int],
    clamp: dict | None = None,
    ranges: dict[str, tuple[int, int]] | None = None,
    weight_bits: Callable[[str], int] = lambda _name: 8,
):
    """The program of a converted eager ResNet; `input_hw` fixes the avgpool window size,
    `ranges` the narrowed activation codes (widths.activation_ranges), `weight_bits` each
    layer's weight width."""
    read = _Reader(clamp or {}, dict(ranges or {}), weight_bits)
    x = read.quantize("quant", int8.quant)
    x = read.matmul("conv1", int8.conv1, x)
    if not isinstance(getattr(int8, "maxpool", nn.Identity()), nn.Identity):
        raise ConfigError("the integer export supports model.stem=cifar only (no max-pool stem)")
    downsampling = 0
    for stage in int8.stage_names:
        for i, block in enumerate(getattr(int8, stage)):
            prefix = f"{stage}.{i}"
            out = read.matmul(f"{prefix}.conv1", block.conv1, x)
            out = read.matmul(f"{prefix}.conv2", block.conv2, out)
            if hasattr(block, "conv3"):
                out = read.matmul(f"{prefix}.conv3", block.conv3, out)
            identity = x
            if block.downsample is not None:
                conv = block.downsample[0]
                downsampling += int(conv.stride[0]) > 1
                identity = read.matmul(f"{prefix}.downsample.0", conv, x)
            x = read.add(f"{prefix}.skip_add", block.skip_add, out, identity, relu=True)
    height, width = input_hw
    for _ in range(downsampling):
        height, width = (height + 1) // 2, (width + 1) // 2
    x = read.avgpool("avgpool", x, height * width)
    read.matmul("fc", int8.fc, x)
    return read.build.program()


def _capture_points(int8: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """Module whose forward output is each layer's output (add_relu: QFunctional's
    activation_post_process, an Identity it calls on its result)."""
    modules = dict(int8.named_modules())
    return {
        name: modules[f"{name}.activation_post_process"]
        if isinstance(modules[name], nnq.QFunctional)
        else modules[name]
        for name in names
    }


@torch.inference_mode()
def torch_layer_codes(int8: nn.Module, x: Tensor, names: list[str]) -> dict[str, np.ndarray]:
    """The torch int8 model's output codes of every named layer for the float input `x`."""
    found: dict[str, np.ndarray] = {}

    def hook(name: str) -> Any:
        def record(_m: nn.Module, _i: Any, out: Tensor) -> None:
            found[name] = out.int_repr().numpy().copy()

        return record

    handles = [
        m.register_forward_hook(hook(name)) for name, m in _capture_points(int8, names).items()
    ]
    try:
        int8.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return found


@contextmanager
def _input_scales(int8: nn.Module) -> Iterator[dict[str, float]]:
    scales: dict[str, float] = {}

    def record(name: str) -> Any:
        def pre(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
            scales[name] = float(args[0].q_scale())

        return pre

    handles = [
        m.register_forward_pre_hook(record(name))
        for name, m in int8.named_modules()
        if isinstance(m, _QUANTIZED_MATMUL)
    ]
    try:
        yield scales
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def snap_biases(int8: nn.Module, example: Tensor) -> int:
    """Put every conv / linear bias on its accumulator grid, `round(b / (s_in * s_w)) * s_in *
    s_w`, so torch's float32 bias add equals the hardware's int32 one; returns how many moved.

    The input scale of a layer is a property of the tensor it receives, so one example forward
    reads them. With power-of-two scales the snapped bias is exact in float32.
    """
    with _input_scales(int8) as scales:
        int8.eval()(example[:1])
    moved = 0
    for name, m in int8.named_modules():
        if name not in scales or m.bias() is None:
            continue
        weight, bias = m.weight(), m.bias().detach()
        if weight.qscheme() in _PER_TENSOR:
            grid = scales[name] * weight.q_scale()
        else:  # one accumulator grid per output channel
            grid = scales[name] * weight.q_per_channel_scales().double()
        snapped = (torch.round(bias.double() / grid) * grid).float()
        moved += int((snapped != bias).sum())
        m.set_weight_bias(weight, snapped)
    return moved


class IntegerExport:
    """A stage's converted int8 module, its integer program, and torch's codes per layer."""

    def __init__(self, module: nn.Module, program: IntegerProgram, engine: str) -> None:
        self.module, self.program, self.engine = module, program, engine

    def layer_codes(self, x: Tensor) -> dict[str, np.ndarray]:
        torch.backends.quantized.engine = self.engine
        names = [op["output"] for op in self.program.ops]
        return torch_layer_codes(self.module, x, names)

    def runtime_codes(self, x: Tensor) -> dict[str, np.ndarray]:
        """Other runtimes' logits codes: none (layer_codes are the int8 module TorchScript
        runs)."""
        return {}
