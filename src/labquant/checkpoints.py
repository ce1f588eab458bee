"""Reading checkpoints given on the command line, with one-line errors instead of tracebacks
from deep inside torch.load or Lightning's restore.

Every checkpoint labquant reads is unpickled with `weights_only=True`: a `.ckpt` is a pickle,
and a full unpickler calls whatever function the file names (`os.system`, `exec`, ...), so a
checkpoint downloaded from someone else could run code the moment it is opened. torch's
weights-only unpickler builds tensors, plain containers and scalars only, plus the globals
allow-listed with `torch.serialization.safe_globals`; anything else is refused before it runs.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labquant.errors import ConfigError

# The non-tensor globals a labquant Lightning checkpoint needs beyond torch's built-in
# weights-only allow-list (tensors, OrderedDict, dict / list / tuple / set, str / bytes / int /
# float / bool / None, torch dtypes and devices). Found by loading real checkpoints with
# weights_only=True: FP32 runs (SGD with StepLR or WarmupCosineAnnealingLR, ModelCheckpoint,
# LearningRateMonitor, RichProgressBar, EpochTimer, NonFiniteLossGuard, TensorBoard and CSV
# loggers, 32-true and bf16-mixed), resumed with Lightning's restore, and QAT runs (fake-quant
# modules and observers are buffers: tensors). None needs one: Lightning stores callback, loop,
# optimizer and scheduler state as state_dicts of plain values, hyper_parameters are the
# module's scalar arguments (save_hyperparameters ignores the net and the optimizer / scheduler
# partials) and labquant_arch is a dict of str / int / list. Add a global here only for a type
# a labquant checkpoint really holds, never a callable: every entry is something an attacker's
# file may construct.
CHECKPOINT_SAFE_GLOBALS: list[Any] = []

# What torch's weights-only unpickler says (pickle.UnpicklingError, torch 2.14's wording, which
# torch.load's own hints key on too) when a file needs a global it refuses: an unknown GLOBAL, a
# blocked module (os, sys, posix, nt), a call, NEWOBJ or BUILD of a type not allow-listed. A
# truncated or corrupt file fails otherwise (RuntimeError, EOFError, "Unsupported operand").
_REFUSED = re.compile(
    r"not an allowed global|is blocked|unrecognized function|allowlisted|add_safe_globals"
)
_GLOBAL = re.compile(r"GLOBAL (\S+)")


@contextmanager
def safe_checkpoint_globals() -> Iterator[None]:
    """Allow `CHECKPOINT_SAFE_GLOBALS` in `torch.load(..., weights_only=True)` while inside.

    Wrap Lightning's own restore in it, with `weights_only=True` passed explicitly:

        with safe_checkpoint_globals():
            trainer.fit(module, datamodule=dm, ckpt_path=path, weights_only=True)

    (likewise `trainer.validate` / `trainer.test`). Lightning 2.6 hands `weights_only` down to
    `torch.load` (checkpoint connector -> strategy -> `TorchCheckpointIO` ->
    `lightning.fabric.utilities.cloud_io._load`) in the calling thread, so the allow-list set
    here applies. Passing it explicitly matters: left at None, the environment variable
    `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` turns torch.load's default back to full unpickling.

    `torch.serialization.safe_globals` edits one process-wide set (not per thread), and on exit
    removes its entries even where `add_safe_globals` had added them before.
    """
    with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
        yield


def _refused_global(error: BaseException) -> str | None:
    """The refused global's name when `error` is the weights-only unpickler refusing one ("" if
    it names none); None for any other failure (truncated, corrupt, not a torch file)."""
    if not isinstance(error, pickle.UnpicklingError) or not _REFUSED.search(str(error)):
        return None
    found = _GLOBAL.search(str(error))
    # The name comes from the file: keep it printable and short.
    return re.sub(r"[^\w.<>-]", "?", found.group(1))[:80] if found else ""


def load_checkpoint(
    path: str | Path | None, fix: str, setting: str = "ckpt_path", mmap: bool = False
) -> dict[str, Any]:
    """The checkpoint dict at `path`; `fix` ends every error message.

    Unpickled with `weights_only=True` (see the module docstring): a file that would need
    anything beyond tensors, plain containers and `CHECKPOINT_SAFE_GLOBALS` is refused, with
    nothing of it run.

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
        with safe_checkpoint_globals():
            checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        refused = _refused_global(error)
        if refused is not None:
            what = f" ({refused})" if refused else ""
            raise ConfigError(
                f"{setting}={file} was refused: it holds objects other than weights{what}, "
                "which could run code when loaded; labquant loads checkpoints of plain tensors "
                f"only (re-save it that way if you trust its source); {fix}"
            ) from None
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
