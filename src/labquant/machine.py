"""Which CPU a speed figure comes from: int8 / FP32 ratios differ threefold between an AVX2 CPU
and one with AVX-512 VNNI, so every report names the ISA beside its CPU figures."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

# /proc/cpuinfo flags that change int8 kernels, strongest first.
_INT8_FLAGS = (("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"))


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine(), set()
    name = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return name or platform.machine(), set(flags)


def cpu_isa() -> str:
    """torch's CPU capability (AVX2, AVX512, ...) plus the int8 extensions the CPU has."""
    _, flags = _cpuinfo()
    extras = [label for flag, label in _INT8_FLAGS if flag in flags]
    capability = torch.backends.cpu.get_cpu_capability()
    return " + ".join([capability, *extras]) if extras else f"{capability}, no VNNI"


def cpu() -> dict[str, str]:
    """{"name": model name, "isa": cpu_isa()} for results.json and reports."""
    return {"name": _cpuinfo()[0], "isa": cpu_isa()}


def has_vnni() -> bool:
    """int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX): without them x86 int8
    kernels sum u8 x s8 pairs in int16 with saturation, so 8-bit activations can overflow and
    torch's x86 qconfigs use 7 (`reduce_range`)."""
    _, flags = _cpuinfo()
    return any(flag in flags for flag, _ in _INT8_FLAGS)


def has_amx_bf16() -> bool:
    """AMX tiles for bf16 matmuls and convolutions (Intel Sapphire Rapids and later): where
    oneDNN runs bf16 training several times faster than fp32, so CPU training defaults to
    bf16-mixed (config/resolvers.default_precision)."""
    _, flags = _cpuinfo()
    return "amx_bf16" in flags
