"""OmegaConf resolvers used by the configs (`${lq.*}`).

Registered by `register_resolvers()`, which every entry point and the task functions call (worker
processes of parallel launchers import the task function, never the CLI module)."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from labquant.machine import has_amx_bf16


def step_epoch(step: int, max_epochs: int, reference_epochs: int = 40) -> int:
    """The StepLR epoch, kept where it is when it falls inside the budget, else scaled.

    The lab steps at epoch 20 of 40; with a shorter budget (say 10 epochs) the drop would never
    happen, so it moves to the same fraction of the budget: round(10 * 20 / 40) = 5.
    """
    if step < max_epochs:
        return step
    return max(1, round(max_epochs * step / reference_epochs))


def warmup_epochs(warmup: int, max_epochs: int) -> int:
    """The default warmup, capped at half the budget so short runs (tests, sweeps with
    trainer.max_epochs=2) still have a cosine phase; an explicit value is never changed."""
    return min(warmup, max_epochs // 2)


def default_precision(accelerator: str) -> str:
    """`bf16-mixed` where FP32 training will run on a GPU with bf16 support or on a CPU with
    AMX-BF16, else `32-true`.

    bf16 keeps fp32's exponent range (no loss scaling). On tensor cores it roughly doubles
    convolution throughput; on a CPU with AMX-BF16 the quick recipe's epoch took 4.1 s against
    6.4 s in fp32 at the same test accuracy (docs/performance.md). bf16 training without AMX
    was not measured faster, so other CPUs stay in fp32. QAT always trains in fp32
    (labquant-quantize sets it): fake quantization needs fp32 rounding.
    """
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if has_amx_bf16() else "32-true"


RESOLVERS = {
    "lq.step_epoch": step_epoch,
    "lq.warmup_epochs": warmup_epochs,
    "lq.default_precision": default_precision,
}


def register_resolvers() -> None:
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
