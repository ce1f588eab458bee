"""LightningModule for image classification: loss, SGD + schedule, accuracy metrics."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MaxMetric, MeanMetric, Metric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from labquant.lit.optimizers import CompositeOptimizer
from labquant.quant.backend import LEARNED_THRESHOLD

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., LRScheduler]


class FrozenTeacher:
    """The FP32 network a QAT student distils from, kept OUTSIDE the LightningModule's module
    tree on purpose: it is not in the checkpoint (a resumed run rebuilds it from the FP32
    checkpoint), not in the optimizer, not wrapped by DDP, and `.train()` never reaches it (its
    BatchNorm must keep the FP32 model's statistics)."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net.eval().requires_grad_(False)

    def to(self, device: torch.device, channels_last: bool = False) -> None:
        self.net.to(device)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        return self.net(x)


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Hinton's KD term: KL(teacher || student) on temperature-softened outputs, times T^2 so
    its gradient scale does not depend on T."""
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student / t, dim=1),
            F.log_softmax(teacher / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )


class ClassifierModule(pl.LightningModule):
    """Wraps a (quantizable) network; optimizer and scheduler arrive as Hydra partials.

    With a `teacher` (QAT), the training loss is `(1 - w) * cross-entropy + w * KD` against
    the FP32 network's outputs on the same augmented batch, `w = distill_weight`: the student
    is pulled toward the function it must reproduce in int8 rather than toward the training
    labels it would otherwise overfit on a small dataset.

    Metrics are accumulated on the device and logged per epoch (`on_step=False`), and their
    per-step input checks are off (`validate_args=False`: torch.unique on the labels, which
    syncs), so the hot loop never waits for the host. Losses and accuracies are torchmetrics
    objects (sums and counts): under DDP every logged epoch value is the all-rank value, exact
    even when ranks saw different numbers of images (evaluation is not padded).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "step",
        num_classes: int = 10,
        channels_last: bool = False,
        teacher: nn.Module | None = None,
        distill_weight: float = 0.0,
        distill_temperature: float = 1.0,
        scale_lr: float | None = None,
        scale_optimizer: str = "adam",
    ) -> None:
        super().__init__()
        # logger=False: the run logs the whole Hydra config (with final metrics) itself.
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler", "teacher"])
        self.net = net
        self.teacher = FrozenTeacher(teacher) if teacher is not None and distill_weight else None
        self.distill_weight = distill_weight
        self.distill_temperature = distill_temperature
        self.optimizer_factory = optimizer
        self.scale_lr = scale_lr
        self.scale_optimizer = scale_optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.channels_last = channels_last
        self.train_acc, self.val_acc, self.test_acc = (
            PercentAccuracy(num_classes, average="micro", validate_args=False) for _ in range(3)
        )
        # nan_strategy="disable": its NaN check reads the loss back every step (NonFiniteLossGuard
        # catches a NaN loss a step later without stalling the device).
        self.train_loss, self.val_loss, self.test_loss = (
            MeanMetric(nan_strategy="disable") for _ in range(3)
        )
        self.train_distill_loss = MeanMetric(nan_strategy="disable")
        self.test_images = SumMetric(nan_strategy="disable")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints: a resumed run keeps its best so far

    def setup(self, stage: str) -> None:
        # One process after a DDP stage in the same process (the lab's PTQ stage on rank 0): the
        # process group still exists, but no other rank is there to sync the metrics with.
        syncing = self.trainer.world_size > 1
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.sync_on_compute = metric._to_sync = syncing
        # NHWC convolutions are faster with cuDNN and oneDNN alike (1.2-1.4x on 2 CPU cores).
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def on_fit_start(self) -> None:
        if self.teacher is not None:  # outside the module tree: Lightning does not move it
            self.teacher.to(self.device, self.channels_last)

    def _layout(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self._layout(x))

    def _step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y), logits.argmax(dim=1), y

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        x = self._layout(x)
        logits = self.net(x)
        cross_entropy = F.cross_entropy(logits, y)
        loss = cross_entropy
        if self.teacher is not None:
            kd = distillation_loss(logits, self.teacher(x), self.distill_temperature)
            w = self.distill_weight
            loss = kd if w == 1 else (1 - w) * cross_entropy + w * kd
            self.train_distill_loss(kd.detach(), len(y))
            self.log("train/distill_loss", self.train_distill_loss, on_step=False, on_epoch=True)
        # train/loss stays the cross-entropy, comparable with val/loss in every plot.
        self.train_acc(logits.argmax(dim=1), y)
        self.train_loss(cross_entropy.detach(), len(y))
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, preds, y = self._step(batch)
        self.val_acc(preds, y)
        self.val_loss(loss, len(y))
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # an untrained model's numbers never count as the best
            return
        self.val_acc_best(self.val_acc.compute())  # compute() is already the all-rank value
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=False, sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        # In fp32 whatever the training precision (bf16-mixed on an AMX CPU or a GPU): the test
        # accuracy is the FP32 model's, the reference every int8 drop is measured against.
        with torch.autocast(self.device.type, enabled=False):
            loss, preds, y = self._step(batch)
        self.test_acc(preds, y)
        self.test_loss(loss, len(y))
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.test_images(len(y))  # over all ranks: proves each image was tested exactly once
        self.log("test/images", self.test_images, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def _steps_per_epoch(self) -> int:
        total = self.trainer.estimated_stepping_batches
        epochs = max(1, self.trainer.max_epochs or 1)
        if not math.isfinite(total):
            raise ValueError("a per-step schedule needs a finite trainer.max_epochs")
        return max(1, math.ceil(total / epochs))

    def parameter_groups(self) -> tuple[list[Tensor], list[Tensor]]:
        """The network's weights, and (qconfig.learn_scales) the learned log2 thresholds."""
        weights, thresholds = [], []
        for name, parameter in self.named_parameters():
            learned = name.rsplit(".", 1)[-1] == LEARNED_THRESHOLD
            (thresholds if learned else weights).append(parameter)
        return weights, thresholds

    def build_optimizer(self) -> Optimizer:
        """The recipe's optimizer for the weights. Learned thresholds are a group of their own:
        `quant.scale_lr` (unset: the optimizer's lr) and no weight decay, which would pull every
        threshold toward 1 and the ranges toward clipping; `quant.scale_optimizer=adam` steps
        them with Adam (TQT's choice, lit/optimizers.py), `recipe` with the recipe's optimizer."""
        weights, thresholds = self.parameter_groups()
        optimizer = self.optimizer_factory(params=[{"params": weights}])
        if not thresholds:
            return optimizer
        group: dict[str, Any] = {"params": thresholds, "weight_decay": 0.0}
        group["lr"] = self.scale_lr if self.scale_lr is not None else optimizer.defaults["lr"]
        if self.scale_optimizer == "recipe":
            optimizer.add_param_group(group)
            return optimizer
        return CompositeOptimizer([optimizer, torch.optim.Adam([group])])

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer()
        if self.scheduler_factory is None:
            return optimizer
        kwargs = (
            {"steps_per_epoch": self._steps_per_epoch()}
            if self.scheduler_interval == "step"
            else {}
        )
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        return {
            "optimizer": optimizer,
            # Its name is the learning-rate monitor's tag: beside train/loss, not `lr-SGD`.
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.scheduler_interval,
                "name": "train/lr",
            },
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints written before val_acc_best was persistent lack it: start it afresh.
        state = checkpoint.setdefault("state_dict", {})
        for key, value in self.val_acc_best.state_dict(prefix="val_acc_best.").items():
            state.setdefault(key, value)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lets quantize / resume rebuild the network and refuse a checkpoint of another shape.
        checkpoint["labquant_arch"] = dict(getattr(self.net, "arch", {}))


class PercentAccuracy(MulticlassAccuracy):
    """Top-1 accuracy in percent: the unit of results.json, the report and every figure, so
    metrics.csv, the progress bar and TensorBoard show the same numbers."""

    def compute(self) -> Tensor:
        return 100.0 * super().compute()


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


__all__ = ["ClassifierModule", "PercentAccuracy", "count_parameters"]
