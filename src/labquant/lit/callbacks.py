"""Lightning callbacks for the quantization stages: prepare (fuse + observers) in `setup`,
freeze QAT observers / BatchNorm on schedule, and export the int8 model at the end.

Preparing in `setup` matters: it runs before a checkpoint is restored and before the optimizer
exists, so a killed QAT run resumes into the same fake-quantized module tree (the Lightning 1.x
QAT callback prepared in `on_fit_start`, too late for that, and was removed).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn

from labquant.errors import TrainingDiverged
from labquant.quant import workflow
from labquant.quant.evaluate import evaluate
from labquant.quant.export import save_torchscript, to_torchscript
from labquant.quant.qconfigs import backend_for, get_qconfig
from labquant.reports.artifacts import file_size_mib, write_atomic

INT8_TORCHSCRIPT = "model_int8.pt"
INT8_STATE_DICT = "model_int8_state_dict.pt"


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
        pl_module.log_dict({"perf/epoch_s": seconds, "perf/train_img_s": self._images / seconds})


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
    """Fuse and insert observers (PTQ) or fake-quant modules (QAT) into `pl_module.net`.

    PTQ fuses with `fuse_modules` in eval mode (BN folded); QAT with `fuse_modules_qat` in train
    mode (BN kept, trainable). Idempotent, so a second `fit`/`validate` does not prepare twice.
    """

    def __init__(self, qconfig: str, qat: bool, max_shift_amount: int | None = 8) -> None:
        self.qconfig_name = qconfig
        self.qat = qat
        # Only the power-of-two qconfig has a shift limit; the others ignore it.
        self.max_shift_amount = 8 if max_shift_amount is None else max_shift_amount

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        net = pl_module.net
        if workflow.is_prepared(net):
            return
        workflow.set_engine(backend_for(self.qconfig_name))
        qconfig = get_qconfig(
            self.qconfig_name, qat=self.qat, max_shift_amount=self.max_shift_amount
        )
        if self.qat:
            workflow.prepare_qat(net, qconfig)
        else:
            workflow.prepare_ptq(net, qconfig)


class QATSchedule(pl.Callback):
    """Observer and BatchNorm freezing by epoch, as in torchvision's QAT reference.

    The state is set from `current_epoch` at every epoch start, so a resumed run lands in the
    same state; validation never moves the observers.
    """

    def __init__(self, freeze_observer_epoch: int = 4, freeze_bn_epoch: int = 3) -> None:
        self.freeze_observer_epoch = freeze_observer_epoch
        self.freeze_bn_epoch = freeze_bn_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch >= self.freeze_observer_epoch:
            workflow.disable_observers(pl_module.net)
        else:
            workflow.enable_observers(pl_module.net)
        if epoch >= self.freeze_bn_epoch:
            workflow.freeze_bn_stats(pl_module.net)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        workflow.disable_observers(pl_module.net)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scales = workflow.fake_quant_scales(pl_module.net)
        pl_module.log_dict({f"qat_scale/{name}": value for name, value in scales.items()})


class Int8Export(pl.Callback):
    """Convert a CPU copy of the prepared net to int8, test it on the CPU and save it.

    Runs after a finished `fit` (QAT) or a calibration `validate` (PTQ); the float module is
    left as it is, so the QAT checkpoint stays resumable.
    """

    def __init__(self, datamodule: pl.LightningDataModule, output_dir: str | Path) -> None:
        self.datamodule = datamodule
        self.output_dir = Path(output_dir)
        self.result: dict[str, Any] | None = None
        self.int8_net: torch.nn.Module | None = None
        self.int8_script: torch.jit.ScriptModule | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.export(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self.export(pl_module)

    def export(self, pl_module: pl.LightningModule) -> None:
        int8 = workflow.convert_int8(pl_module.net)
        test_acc, test_loss = evaluate(int8, self.datamodule.test_dataloader())
        self.output_dir.mkdir(parents=True, exist_ok=True)
        script = to_torchscript(int8, torch.zeros(1, *self.datamodule.image_shape))
        write_atomic(self.output_dir / INT8_TORCHSCRIPT, lambda tmp: save_torchscript(script, tmp))
        state_path = self.output_dir / INT8_STATE_DICT
        write_atomic(state_path, lambda tmp: torch.save(int8.state_dict(), tmp))
        self.int8_net = int8
        self.int8_script = script
        self.result = {
            "test_acc": round(test_acc, 4),
            "test_loss": test_loss,
            "size_mib": file_size_mib(state_path),
            "int8_torchscript": INT8_TORCHSCRIPT,
            "int8_state_dict": INT8_STATE_DICT,
        }
