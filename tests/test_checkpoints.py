"""Checkpoints are unpickled with weights_only=True: a real labquant Lightning checkpoint loads
(through `load_checkpoint` and through Lightning's own restore), and a file whose unpickling
would run code is refused with one line before any of it runs."""

from __future__ import annotations

import builtins
import functools
import os
import pathlib
import pickle
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from labquant.checkpoints import (
    CHECKPOINT_SAFE_GLOBALS,
    check_same_network,
    load_checkpoint,
    net_state,
    safe_checkpoint_globals,
)
from labquant.config.instantiate import instantiate
from labquant.config.paths import CONF_DIR
from labquant.errors import ConfigError
from labquant.lit.module import ClassifierModule
from labquant.lit.schedulers import WarmupCosineAnnealingLR
from labquant.models.resnet import small_resnet

FIX = "pass ckpt_path=<run>/checkpoints/last.ckpt"


def _loader(seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def _module() -> ClassifierModule:
    return ClassifierModule(
        small_resnet(layers=[1], base_width=8),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        scheduler=functools.partial(WarmupCosineAnnealingLR, warmup_epochs=0, max_epochs=2),
        scheduler_interval="step",
    )


def run_callbacks(root: Path) -> list[pl.Callback]:
    """The checkpoint, LR and timing callbacks of a labquant run, from
    conf/callbacks/default.yaml itself (its progress bar left out: these runs show none)."""
    callbacks = OmegaConf.load(CONF_DIR / "callbacks" / "default.yaml")
    cfg = OmegaConf.create({"paths": {"output_dir": str(root)}, "callbacks": callbacks})
    return [
        instantiate(node, f"callbacks.{name}")
        for name, node in cfg.callbacks.items()
        if name != "progress_bar"
    ]


def _trainer(root: Path, max_epochs: int) -> pl.Trainer:
    """The callbacks and logger of a labquant run, on the CPU."""
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        default_root_dir=root,
        callbacks=run_callbacks(root),
        logger=CSVLogger(root, name="csv"),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def test_last_ckpt_follows_every_epoch_even_without_a_new_best(tmp_path: Path) -> None:
    """resume=true restarts from last.ckpt: it must be the latest epoch even when val/acc did
    not improve (Lightning 2.6's save_last=true alone skips such epochs)."""
    module = _module()
    # Nothing may change between epochs, so val/acc never improves after epoch 0: no step
    # (lr 0) and no BatchNorm statistics update (momentum 0 keeps the running values exactly).
    module.optimizer_factory = functools.partial(torch.optim.SGD, lr=0.0)
    for layer in module.net.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = 0.0
    pl.seed_everything(0)
    _trainer(tmp_path, max_epochs=3).fit(module, _loader(0), _loader(1))
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert load_checkpoint(checkpoints / "last.ckpt", FIX)["epoch"] == 2
    assert load_checkpoint(checkpoints / "best.ckpt", FIX)["epoch"] == 0


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of a real ClassifierModule run; its checkpoints are under checkpoints/."""
    root = tmp_path_factory.mktemp("lightning_run")
    pl.seed_everything(0)
    _trainer(root, max_epochs=1).fit(_module(), _loader(0), _loader(1))
    return root / "checkpoints"


@pytest.mark.parametrize("name", ["best.ckpt", "last.ckpt"])
@pytest.mark.parametrize("mmap", [False, True])
def test_lightning_checkpoint_loads_weights_only(
    lightning_run: Path, name: str, mmap: bool
) -> None:
    checkpoint = load_checkpoint(lightning_run / name, FIX, mmap=mmap)
    net = small_resnet(layers=[1], base_width=8)
    assert checkpoint["labquant_arch"] == net.arch
    assert checkpoint["hyper_parameters"]["scheduler_interval"] == "step"
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"]
    check_same_network(net, checkpoint, f"ckpt_path={lightning_run / name}")
    net.load_state_dict(net_state(checkpoint))


def test_lightning_restore_with_weights_only(lightning_run: Path, tmp_path: Path) -> None:
    """How the pipelines resume: Lightning's own restore, weights_only=True, allow-list on."""
    before = torch.serialization.get_safe_globals()
    trainer = _trainer(tmp_path, max_epochs=2)
    with safe_checkpoint_globals():
        assert set(CHECKPOINT_SAFE_GLOBALS) <= set(torch.serialization.get_safe_globals())
        trainer.fit(
            _module(),
            _loader(0),
            _loader(1),
            ckpt_path=lightning_run / "last.ckpt",
            weights_only=True,
        )
    assert torch.serialization.get_safe_globals() == before
    assert trainer.current_epoch == 2
    assert trainer.global_step == 4  # 2 restored + 2 new: the loops' state came back


# --- checkpoints whose unpickling would run code


class _ShellTouch:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (os.system, (f"touch {shlex.quote(str(self.target))}",))


class _PathTouch(_ShellTouch):
    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (pathlib.Path.touch, (self.target,))


class _Exec(_ShellTouch):
    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (builtins.exec, (f"open({str(self.target)!r}, 'w').close()",))


class _Partial(_ShellTouch):
    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (functools.partial(os.system, f"touch {shlex.quote(str(self.target))}"), ())


PAYLOADS = {"os.system": _ShellTouch, "Path.touch": _PathTouch, "exec": _Exec, "partial": _Partial}


def _malicious(tmp_path: Path, payload: str, legacy: bool = False) -> tuple[Path, Path]:
    """A checkpoint-shaped file that creates `pwned` when unpickled, and that path."""
    pwned = tmp_path / "pwned"
    path = tmp_path / f"evil-{payload}.ckpt"
    evil = PAYLOADS[payload](pwned)
    checkpoint = {"state_dict": {"net.w": torch.ones(2)}, "epoch": 0, "evil": evil}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path, pwned


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_payload_is_real(tmp_path: Path, payload: str) -> None:
    """Control: full unpickling of these files does create the file."""
    path, pwned = _malicious(tmp_path, payload)
    torch.load(path, weights_only=False)  # what weights_only=True must prevent
    assert pwned.exists()


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("mmap", [False, True])
def test_load_checkpoint_refuses_code(tmp_path: Path, payload: str, mmap: bool) -> None:
    path, pwned = _malicious(tmp_path, payload)
    with pytest.raises(ConfigError) as error:
        load_checkpoint(path, FIX, setting="ckpt_path", mmap=mmap)
    message = str(error.value)
    assert not pwned.exists()
    assert len(message.splitlines()) == 1
    assert message.startswith(f"ckpt_path={path} was refused: it holds objects other than weights")
    assert "could run code" in message
    assert message.endswith(FIX)
    assert "unreadable" not in message


def test_load_checkpoint_refuses_code_in_legacy_format(tmp_path: Path) -> None:
    path, pwned = _malicious(tmp_path, "os.system", legacy=True)
    with pytest.raises(ConfigError, match="was refused"):
        load_checkpoint(path, FIX)
    assert not pwned.exists()


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_lightning_restore_refuses_code(tmp_path: Path, payload: str) -> None:
    path, pwned = _malicious(tmp_path, payload)
    trainer = _trainer(tmp_path / "run", max_epochs=1)
    with safe_checkpoint_globals(), pytest.raises(pickle.UnpicklingError):
        trainer.fit(_module(), _loader(0), _loader(1), ckpt_path=path, weights_only=True)
    assert not pwned.exists()


# --- the other failures keep their messages


def test_truncated_is_not_called_malicious(lightning_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.ckpt"
    data = (lightning_run / "last.ckpt").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError) as error:
        load_checkpoint(path, FIX)
    message = str(error.value)
    assert re.fullmatch(
        rf"ckpt_path={re.escape(str(path))} is unreadable or truncated \(\w+\); .*", message
    )
    assert "refused" not in message


def test_garbage_is_not_called_malicious(tmp_path: Path) -> None:
    path = tmp_path / "garbage.ckpt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(ConfigError, match=r"is unreadable or truncated \(UnpicklingError\)"):
        load_checkpoint(path, FIX)


def test_missing_and_wrong_kind(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^ckpt_path is missing; {re.escape(FIX)}$"):
        load_checkpoint(None, FIX)
    with pytest.raises(
        ConfigError, match=f"^resume=true={re.escape(str(tmp_path / 'no.ckpt'))} does not exist"
    ):
        load_checkpoint(tmp_path / "no.ckpt", FIX, setting="resume=true")
    with pytest.raises(ConfigError, match="is not a file"):
        load_checkpoint(tmp_path, FIX)
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, weights)
    with pytest.raises(ConfigError, match="is not a Lightning checkpoint"):
        load_checkpoint(weights, FIX)
