"""Lightning callbacks: epoch timing, a NaN guard, and the quantization stages' prepare (in
`setup`) and QAT schedule, both through the backend protocols (quant/backend.py).

Preparing in `setup` matters: it runs before a checkpoint is restored and before the optimizer
exists, so a killed QAT run resumes into the same fake-quantized module tree (the Lightning 1.x
QAT callback prepared in `on_fit_start`, too late for that, and was removed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from labquant.errors import TrainingDiverged
from labquant.quant.backend import (
    QATQuantizer,
    Quantizer,
    learned_thresholds,
    start_learned_scales,
)
from labquant.quant.qconfigs import QConfigSpec


class EpochTimer(pl.Callback):
    """Logs each training epoch's wall time and throughput (`perf/epoch_s`, `perf/train_img_s`).

    Counts images from the labels' length (a host-side int: no device sync in the hot loop).
    `epoch_seconds` keeps every epoch's time for the benchmark.
    """

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._images = 0
        self._started = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._images += len(batch[1])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = time.perf_counter() - self._started
        self.epoch_seconds.append(seconds)
        # Under DDP: the slowest rank's epoch, and the images of every rank per second.
        pl_module.log("perf/epoch_s", seconds, sync_dist=True, reduce_fx="max")
        pl_module.log("perf/train_img_s", self._images / seconds, sync_dist=True, reduce_fx="sum")


class NonFiniteLossGuard(pl.Callback):
    """Stop training within one step of a NaN / inf loss, with an error that names the epoch,
    the step and the learning rate.

    Each step's loss is copied to the host without blocking and checked at the next step, so
    the GPU never waits for it (on the CPU the copy is immediate anyway).
    """

    def __init__(self) -> None:
        self._pending: tuple[torch.Tensor, torch.cuda.Event | None, int, int] | None = None

    def _check_pending(self, trainer: pl.Trainer) -> None:
        if self._pending is None:
            return
        loss, copied, epoch, step = self._pending
        self._pending = None
        if copied is not None:
            copied.synchronize()  # waits for that one copy, a step ago: done by now
        if not torch.isfinite(loss).item():
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
            raise TrainingDiverged(
                f"training diverged: loss is {loss.item()} at epoch {epoch}, step {step}; the "
                f"learning rate is the likely cause: lower optimizer.lr (now {lr:g})"
            )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._check_pending(trainer)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            host = loss.detach().to("cpu", non_blocking=True)
            copied = None
            if loss.is_cuda:  # a non-blocking copy is only safe to read after its event
                copied = torch.cuda.Event()
                copied.record()
            self._pending = (host, copied, trainer.current_epoch, trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_pending(trainer)


class PrepareQuantization(pl.Callback):
    """Hand `pl_module.net` to the backend for PTQ (observers) or QAT (fake quantization) and
    put the prepared model it returns in its place.

    Idempotent, so a second `fit` / `validate` does not prepare twice.
    """

    def __init__(
        self,
        backend: Quantizer,
        qconfig: QConfigSpec,
        qat: bool,
        example_input: Tensor,
        calibration: Callable[[], Iterable[Tensor]] | None = None,
    ) -> None:
        self.backend = backend
        self.qconfig = qconfig
        self.qat = qat
        self.example_input = example_input
        # qconfig.learn_scales: the batches the observers see before the thresholds learn.
        # The same on every DDP rank and before the optimizer, DDP and a resumed checkpoint
        # (which then overwrites the thresholds): every rank starts from the same exponents.
        self.calibration = calibration

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        net = pl_module.net
        if self.backend.is_prepared(net):
            return
        example = self.example_input.to(trainer.strategy.root_device)
        if self.qat:  # quantize.load_inputs checked that the backend offers QAT (check_mode)
            assert isinstance(self.backend, QATQuantizer)
            pl_module.net = self.backend.prepare_qat(net, self.qconfig, example)
            if self.qconfig.learn_scales:  # thresholds that never start would not learn
                if self.calibration is None:
                    raise ValueError("qconfig.learn_scales needs the calibration batches")
                start_learned_scales(pl_module.net, self.calibration())
        else:
            pl_module.net = self.backend.prepare_ptq(net, self.qconfig, example)


class QATSchedule(pl.Callback):
    """Observer and BatchNorm freezing by epoch, as in torchvision's QAT reference.

    The state is set from `current_epoch` at every epoch start, so a resumed run lands in the
    same state; validation never moves the observers.
    """

    def __init__(
        self, backend: QATQuantizer, freeze_observer_epoch: int = 4, freeze_bn_epoch: int = 3
    ) -> None:
        self.backend = backend
        self.freeze_observer_epoch = freeze_observer_epoch
        self.freeze_bn_epoch = freeze_bn_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        self.backend.set_observers(pl_module.net, enabled=epoch < self.freeze_observer_epoch)
        if epoch >= self.freeze_bn_epoch:
            self.backend.freeze_bn_stats(pl_module.net)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.backend.set_observers(pl_module.net, enabled=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scales = self.backend.fake_quant_scales(pl_module.net)
        # DDP broadcasts rank 0's buffers (observer ranges, scales) before every forward, so
        # the scales are the same on every rank; sync_dist states that (a mean of equal values).
        pl_module.log_dict(
            {f"qat_scale/{name}": value for name, value in scales.items()}, sync_dist=True
        )
        thresholds = learned_thresholds(self.backend, pl_module.net)
        if thresholds:  # qconfig.learn_scales: DDP averages their gradients, equal on all ranks
            pl_module.log_dict(
                {f"qat_log2_threshold/{name}": value for name, value in thresholds.items()},
                sync_dist=True,
            )
