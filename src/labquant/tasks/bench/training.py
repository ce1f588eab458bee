"""`train_step` (a Lightning epoch against a plain PyTorch loop) and `qat_step` (a fake-quant
training step against the FP32 one)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labquant.data.augment import crop_params, normalize, pad_crop_flip
from labquant.data.tensors import TensorImageDataModule
from labquant.lit.callbacks import EpochTimer, NonFiniteLossGuard
from labquant.lit.module import ClassifierModule, FrozenTeacher, distillation_loss
from labquant.quant.backend import QATQuantizer
from labquant.quant.qconfigs import QConfigSpec
from labquant.speed import interleaved_best_seconds, rate, ratio
from labquant.tasks.bench.common import SGD, build_model, normalized_batch, synthetic_data


def lightning_epochs(
    net: nn.Module,
    dm: TensorImageDataModule,
    epochs: int,
    channels_last: bool = True,
    compile: bool = False,
    **trainer_kwargs: Any,
) -> list[float]:
    """Seconds per training epoch through labquant's own LightningModule and callbacks
    (no validation, checkpoints or loggers: they are per-epoch costs, not the hot loop)."""
    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=epochs,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer, NonFiniteLossGuard()],
        **trainer_kwargs,
    )
    module = ClassifierModule(net, optimizer=SGD, channels_last=channels_last)
    trainer.fit(torch.compile(module) if compile else module, datamodule=dm)
    return timer.epoch_seconds


def plain_epochs(net: nn.Module, dm: TensorImageDataModule, epochs: int) -> list[float]:
    """The same work as a hand-written loop: same batches, augmentation, layout and optimizer."""
    net = net.to(memory_format=torch.channels_last).train()
    optimizer = SGD(net.parameters())
    loader = dm.train_dataloader()
    seconds = []
    n = len(dm.arrays("train")[1])
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        start = time.perf_counter()
        # As the DataModule does: every image's crop drawn once per epoch, looked up by index.
        top, left, flip = crop_params(n, generator=torch.Generator().manual_seed(epoch))
        for x, y, idx in loader:
            x = normalize(pad_crop_flip(x, top[idx], left[idx], flip[idx]))
            loss = F.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def bench_train_step(
    model: str, images: int, batch_size: int, epochs: int, rounds: int = 1
) -> dict[str, Any]:
    """Lightning img/s over plain-loop img/s, each the best epoch after the first (warm-up).

    The two alternate `rounds` times so that a slow spell of the machine hits both.
    """
    dm = synthetic_data(images, batch_size=batch_size)
    net = build_model(model)
    lightning_s, plain_s = [], []
    for _ in range(rounds):
        lightning_s += lightning_epochs(copy.deepcopy(net), dm, epochs, accelerator="cpu")[1:]
        plain_s += plain_epochs(copy.deepcopy(net), dm, epochs)[1:]
    n = len(dm.arrays("train")[1])
    return {
        "model": model,
        "images": n,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "lightning_img_s": rate(n, min(lightning_s)),
        "plain_img_s": rate(n, min(plain_s)),
        "ratio": ratio(min(plain_s), min(lightning_s)),
    }


def training_step(
    net: nn.Module, batch: tuple[Tensor, Tensor], teacher: nn.Module | None = None
) -> Callable[[], None]:
    """One forward + backward + SGD step in channels_last, as labquant trains FP32 and QAT;
    with a `teacher`, QAT's distillation loss against its (no-grad) forward, as in
    `ClassifierModule.training_step`."""
    net = net.to(memory_format=torch.channels_last).train()
    x, y = batch[0].contiguous(memory_format=torch.channels_last), batch[1]
    optimizer = SGD(net.parameters())
    frozen = FrozenTeacher(teacher.to(memory_format=torch.channels_last)) if teacher else None

    def step() -> None:
        logits = net(x)
        loss = (
            F.cross_entropy(logits, y)
            if frozen is None
            else distillation_loss(logits, frozen(x), temperature=1.0)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_qat_step(
    model: str,
    batch_size: int,
    steps: int,
    backend: QATQuantizer,
    qconfigs: dict[str, QConfigSpec],
) -> dict[str, Any]:
    """Each QAT step over the FP32 step, both as labquant trains them (channels_last, fp32),
    same model and batch; `ratio` is the worst qconfig's. `distilled_*`: the same QAT step with
    the FP32 teacher's forward and the distillation loss (QAT's default), what a QAT epoch pays."""
    net = build_model(model)
    batch = normalized_batch(batch_size)
    contenders = {"fp32": training_step(copy.deepcopy(net), batch)}
    for name, spec in qconfigs.items():
        qat_net = backend.prepare_qat(copy.deepcopy(net).train(), spec, batch[0][:2])
        contenders[name] = training_step(qat_net, batch)
        distilled = backend.prepare_qat(copy.deepcopy(net).train(), spec, batch[0][:2])
        contenders[f"{name}+distill"] = training_step(distilled, batch, copy.deepcopy(net))
    # Two warm-up steps: allocator, oneDNN kernels, the observers' first ranges.
    seconds = interleaved_best_seconds(contenders, steps, warmup=2)
    fp32_s = seconds["fp32"]
    result: dict[str, Any] = {
        "model": model,
        "batch_size": batch_size,
        "fp32_step_ms": round(1000 * fp32_s, 2),
    }
    for name in qconfigs:
        result[name] = {
            "step_ms": round(1000 * seconds[name], 2),
            "ratio": ratio(seconds[name], fp32_s),
            "distilled_step_ms": round(1000 * seconds[f"{name}+distill"], 2),
            "distilled_ratio": ratio(seconds[f"{name}+distill"], fp32_s),
        }
    result["ratio"] = max(result[name]["ratio"] for name in qconfigs)
    result["img_s_fp32"] = rate(batch_size, fp32_s)
    return result
