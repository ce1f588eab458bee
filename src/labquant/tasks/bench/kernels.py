"""The machine's own int8 / FP32 kernel ratio: one large 3x3 convolution in int8 against the
same convolution in FP32, each in its fastest form on this CPU.

A network's own limit is lower than that one conv's where its layers are small: a 20-channel
CIFAR layer cannot keep a matrix unit as busy as a 256-channel one. `model_kernel_ratio` times
every convolution shape of a model alone, in int8 and in FP32 at the batch sizes the bench times,
and sums them: `inference.<model>.kernel.int8_over_fp32`, the limit that model's `of_kernel` is
judged against.

An int8 speedup means little on its own: on an AVX2 CPU without VNNI the int8 kernels sum
u8 x s8 pairs in int16 and the best conv runs about 1.5x its FP32 twin; with AVX-512 VNNI or
AMX the ratio is several times higher. Every int8 speedup of the `inference` section is also
reported as a fraction of this ratio: what a network-level int8 path achieves of what the
kernels themselves allow.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.ao.nn.quantized import Conv2d as QuantizedConv2d

from labquant.speed import interleaved_best_seconds, ratio

# The engines whose int8 convolutions the int8 contenders use: x86 (fbgemm below it, as eager
# TorchScript runs) and onednn (what Inductor lowers pt2e's Q/DQ convolutions to).
INT8_ENGINES = ("x86", "onednn")
KERNEL_REPEATS = 10  # rounds of each timing, the CPU's one conv and each model's limit alike


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch warns that quantized tensors are deprecated; this measurement needs them."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*quantized tensor creation", category=UserWarning
        )
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def int8_conv(fp32: nn.Conv2d, engine: str) -> QuantizedConv2d:
    """The same convolution as a quantized module, weights int8 per output channel, prepacked
    for `engine` (prepacking happens at construction, under that engine)."""
    with quantized_engine(engine), quiet():
        q = QuantizedConv2d(**conv_arguments(fp32))
        weight = fp32.weight.detach()
        scales = weight.abs().amax(dim=(1, 2, 3)).clamp_min(1e-8) / 127
        qweight = torch.quantize_per_channel(
            weight, scales, torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8
        )
        q.set_weight_bias(qweight, fp32.bias.detach())
        q.scale, q.zero_point = 0.05, 0
    return q


def _run(fn: Callable[[], object], engine: str | None = None) -> Callable[[], object]:
    if engine is None:
        return fn

    def run() -> object:
        torch.backends.quantized.engine = engine  # weights are prepacked per engine
        return fn()

    return run


def bench_kernel_ratio(
    channels: int = 256, size: int = 28, batch: int = 4, repeats: int = KERNEL_REPEATS
) -> dict[str, Any]:
    """`int8_over_fp32`: the best int8 conv's throughput over the best FP32 conv's, same shape,
    timed round-robin; with the per-form milliseconds and the shape."""
    torch.manual_seed(0)
    shape = ConvShape(channels, channels, (3, 3), (1, 1), (1, 1), 1, (batch, channels, size, size))
    previous = torch.backends.quantized.engine
    try:
        with torch.inference_mode():
            seconds = interleaved_best_seconds(_conv_forms(shape), repeats, warmup=2)
    finally:
        torch.backends.quantized.engine = previous
    ms = {name: round(s * 1e3, 3) for name, s in seconds.items()}
    fp32_best = min((n for n in ms if n.startswith("fp32")), key=lambda n: seconds[n])
    int8_best = min((n for n in ms if n.startswith("int8")), key=lambda n: seconds[n])
    return {
        "shape": f"conv3x3 {channels}->{channels}, {batch}x{channels}x{size}x{size}",
        "ms": ms,
        "fp32_best": fp32_best,
        "int8_best": int8_best,
        "int8_over_fp32": ratio(seconds[fp32_best], seconds[int8_best]),
    }


# What makes two convolutions the same kernel call (nn.Conv2d's and QuantizedConv2d's names).
CONV_ARGUMENTS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "groups")


def conv_arguments(conv: Any) -> dict[str, Any]:
    """The constructor arguments of a conv (an nn.Conv2d or a ConvShape), by name."""
    return {name: getattr(conv, name) for name in CONV_ARGUMENTS}


@dataclass(frozen=True)
class ConvShape:
    """One convolution of a network as it runs at some batch size."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    groups: int
    input_size: tuple[int, ...]  # (N, C, H, W)


def conv_shapes(net: nn.Module, batch: Tensor) -> Counter[ConvShape]:
    """Every nn.Conv2d call of `net` on `batch`, counted by shape (forward hooks, eval mode)."""
    shapes: Counter[ConvShape] = Counter()

    def record(module: nn.Conv2d, inputs: tuple[Tensor, ...], _: Tensor) -> None:
        shapes[ConvShape(**conv_arguments(module), input_size=tuple(inputs[0].shape))] += 1

    handles = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.inference_mode():
            net.eval()(batch)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _conv_forms(shape: ConvShape) -> dict[str, Callable[[], object]]:
    """The FP32 (contiguous, channels_last) and int8 (per engine) forms of one conv shape."""
    conv = nn.Conv2d(**conv_arguments(shape)).eval()
    nhwc = copy.deepcopy(conv).to(memory_format=torch.channels_last)
    x = torch.rand(shape.input_size)  # post-ReLU activations: non-negative
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    with quiet():
        qx = torch.quantize_per_tensor(x_nhwc, 1 / 255, 0, torch.quint8)
    runs: dict[str, Callable[[], object]] = {
        "fp32_contiguous": _run(lambda: conv(x)),
        "fp32_channels_last": _run(lambda: nhwc(x_nhwc)),
    }
    for engine in (e for e in INT8_ENGINES if e in torch.backends.quantized.supported_engines):
        q = int8_conv(conv, engine)
        runs[f"int8_{engine}"] = _run(lambda q=q: q(qx), engine)
    return runs


def model_kernel_ratio(
    net: nn.Module, batch_sizes: tuple[int, ...], repeats: int = KERNEL_REPEATS
) -> dict[str, Any]:
    """`b<N>`: every conv shape of `net` at batch N timed alone in each form (round-robin, as
    bench_kernel_ratio), the forms' summed times over the network's calls, and the best int8
    sum over the best FP32 sum (`int8_over_fp32`); the top level repeats the largest batch's.
    The same threads as the rest of the bench (torch's setting)."""
    torch.manual_seed(0)
    result: dict[str, Any] = {}
    previous = torch.backends.quantized.engine
    try:
        for size in batch_sizes:
            shapes = conv_shapes(net, torch.randn(size, 3, 32, 32))
            totals: dict[str, float] = {}
            for shape, calls in shapes.items():
                with torch.inference_mode():
                    seconds = interleaved_best_seconds(_conv_forms(shape), repeats, warmup=2)
                for form, s in seconds.items():
                    totals[form] = totals.get(form, 0.0) + calls * s
            fp32_best = min((f for f in totals if f.startswith("fp32")), key=totals.__getitem__)
            int8_best = min((f for f in totals if f.startswith("int8")), key=totals.__getitem__)
            result[f"b{size}"] = {
                "convs": sum(shapes.values()),
                "shapes": len(shapes),
                "ms": {form: round(s * 1e3, 3) for form, s in totals.items()},
                "fp32_best": fp32_best,
                "int8_best": int8_best,
                "int8_over_fp32": ratio(totals[fp32_best], totals[int8_best]),
            }
    finally:
        torch.backends.quantized.engine = previous
    result["int8_over_fp32"] = result[f"b{max(batch_sizes)}"]["int8_over_fp32"]
    return result
