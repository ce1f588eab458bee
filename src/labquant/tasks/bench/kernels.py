"""The machine's own int8 / FP32 kernel ratio: one large 3x3 convolution in int8 against the
same convolution in FP32, each in its fastest form on this CPU.

An int8 speedup means little on its own: on an AVX2 CPU without VNNI the int8 kernels sum
u8 x s8 pairs in int16 and the best conv runs about 1.5x its FP32 twin; with AVX-512 VNNI or
AMX the ratio is several times higher. Every int8 speedup of the `inference` section is also
reported as a fraction of this ratio: what a network-level int8 path achieves of what the
kernels themselves allow.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.ao.nn.quantized import Conv2d as QuantizedConv2d

from labquant.tasks.bench.timing import interleaved_best_seconds, ratio

# The engines whose int8 convolutions the int8 contenders use: x86 (fbgemm below it, as eager
# TorchScript runs) and onednn (what Inductor lowers pt2e's Q/DQ convolutions to).
INT8_ENGINES = ("x86", "onednn")


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
        q = QuantizedConv2d(
            fp32.in_channels, fp32.out_channels, fp32.kernel_size, padding=fp32.padding
        )
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
    channels: int = 256, size: int = 28, batch: int = 4, repeats: int = 10
) -> dict[str, Any]:
    """`int8_over_fp32`: the best int8 conv's throughput over the best FP32 conv's, same shape,
    timed round-robin; with the per-form milliseconds and the shape."""
    torch.manual_seed(0)
    fp32 = nn.Conv2d(channels, channels, 3, padding=1).eval()
    nhwc = nn.Conv2d(channels, channels, 3, padding=1).eval()
    nhwc.load_state_dict(fp32.state_dict())
    nhwc = nhwc.to(memory_format=torch.channels_last)
    x = torch.rand(batch, channels, size, size)  # post-ReLU activations: non-negative
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    with quiet():
        qx = torch.quantize_per_tensor(x_nhwc, 1 / 255, 0, torch.quint8)
    runs: dict[str, Callable[[], object]] = {
        "fp32_contiguous": _run(lambda: fp32(x)),
        "fp32_channels_last": _run(lambda: nhwc(x_nhwc)),
    }
    previous = torch.backends.quantized.engine
    supported = torch.backends.quantized.supported_engines
    for engine in (e for e in INT8_ENGINES if e in supported):
        q = int8_conv(fp32, engine)
        runs[f"int8_{engine}"] = _run(lambda q=q: q(qx), engine)
    try:
        with torch.inference_mode():
            seconds = interleaved_best_seconds(runs, repeats, warmup=2)
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
