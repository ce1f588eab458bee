"""The FP32 and QAT hot loops read nothing back to the host per step (each read would stall a
GPU); proven on the CPU by recording every tensor-to-Python conversion during training steps."""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from labquant.data.synthetic import SyntheticDataModule
from labquant.lit.callbacks import EpochTimer, NonFiniteLossGuard, PrepareQuantization
from labquant.lit.module import ClassifierModule
from labquant.lit.schedulers import WarmupCosineAnnealingLR
from labquant.models.resnet import small_resnet
from labquant.quant.eager import EagerBackend
from labquant.tasks.bench.common import SGD
from tests.conftest import qconfig_spec
from tests.sync_spy import HostReads


class SpyOnSteps(pl.Callback):
    """Records host reads from each batch's start to its end (forward, backward, optimizer,
    metrics, logging), skipping the first step (Lightning sets itself up there)."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.steps = 0
        self._spy: HostReads | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step > 0:
            self._spy = HostReads().__enter__()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._spy is not None:
            self._spy.__exit__(None, None, None)
            self.reads += self._spy.reads
            self.steps += 1
            self._spy = None


@pytest.mark.parametrize("qconfig", [None, "pot"])
def test_training_steps_make_no_host_reads(qconfig: str | None) -> None:
    """QAT as labquant runs it: fake quant and distillation from the FP32 teacher."""
    from functools import partial

    spy = SpyOnSteps()
    callbacks: list[pl.Callback] = [spy, EpochTimer(), NonFiniteLossGuard()]
    if qconfig:
        example = torch.zeros(2, 3, 32, 32)
        callbacks.append(
            PrepareQuantization(
                EagerBackend(), qconfig_spec(qconfig), qat=True, example_input=example
            )
        )
    net = small_resnet(layers=[1, 1], base_width=8)
    module = ClassifierModule(
        net,
        optimizer=SGD,
        scheduler=partial(WarmupCosineAnnealingLR, warmup_epochs=1, max_epochs=2),
        scheduler_interval="step",
        channels_last=True,
        teacher=copy.deepcopy(net) if qconfig else None,
        distill_weight=0.5,
    )
    dm = SyntheticDataModule(num_train=200, num_test=20, val_size=8, batch_size=32)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=dm)
    assert spy.steps >= 10
    assert spy.reads == []
