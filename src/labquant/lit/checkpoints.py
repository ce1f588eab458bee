"""Reading checkpoints given on the command line, with one-line errors instead of tracebacks
from deep inside torch.load or Lightning's restore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from labquant.errors import ConfigError


def load_checkpoint(
    path: str | Path | None, fix: str, setting: str = "ckpt_path", mmap: bool = False
) -> dict[str, Any]:
    """The checkpoint dict at `path`; `fix` ends every error message.

    mmap=True only maps the tensors (a cheap readability check for a checkpoint that Lightning
    loads itself later); a truncated file fails either way, its zip directory being at the end.
    """
    if not path:
        raise ConfigError(f"{setting} is missing; {fix}")
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"{setting}={file} does not exist; {fix}")
    if not file.is_file():
        raise ConfigError(f"{setting}={file} is not a file; {fix}")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as error:
        raise ConfigError(
            f"{setting}={file} is unreadable or truncated ({type(error).__name__}); {fix}"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{setting}={file} is not a Lightning checkpoint; {fix}")
    return checkpoint


def _describe(arch: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={arch.get(k)}" for k in keys)


def net_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The network's weights in a ClassifierModule checkpoint (keys without the `net.` prefix)."""
    state = checkpoint["state_dict"]
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


def check_same_network(net: nn.Module, checkpoint: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint of another architecture or class count before anything loads it.

    Compares the recorded constructor arguments (`labquant_arch`) when the checkpoint has them,
    else the weights' names and shapes, which a foreign checkpoint also fails.
    """
    mismatch = f"{where} holds a different network than model= builds"
    fix = "pass the model=/experiment= overrides the checkpoint was trained with"
    saved_arch = checkpoint.get("labquant_arch")
    built_arch = getattr(net, "arch", None)
    if saved_arch and built_arch and saved_arch != built_arch:
        keys = sorted(
            k for k in {*saved_arch, *built_arch} if saved_arch.get(k) != built_arch.get(k)
        )
        details = (
            f"checkpoint: {_describe(saved_arch, keys)}; config: {_describe(built_arch, keys)}"
        )
        raise ConfigError(f"{mismatch} ({details}); {fix}")
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in net_state(checkpoint).items()}
    if expected != found:
        raise ConfigError(f"{mismatch}; {fix}")
