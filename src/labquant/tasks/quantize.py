"""PTQ and QAT stages: load an FP32 checkpoint, quantize it through Lightning's own loops and
the quantization callbacks, and leave results.json + int8 files in the stage's folder."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch import LightningDataModule
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader

from labquant.cli.checks import check_batch_size
from labquant.data.augment import normalize
from labquant.data.tensors import (
    BatchTensorDataset,
    EpochBatchSampler,
    EpochSeededRandomSampler,
    TensorImageDataModule,
)
from labquant.errors import ConfigError
from labquant.lit.callbacks import Int8Export, PrepareQuantization, QATSchedule
from labquant.lit.checkpoints import check_same_network, load_checkpoint, net_state
from labquant.lit.fit import build_module, build_trainer, metrics_csv_path, model_name
from labquant.quant.evaluate import cpu_latency, evaluate
from labquant.quant.export import serialized_mib
from labquant.quant.inspect import layer_table, worst_layers
from labquant.reports.artifacts import write_json
from labquant.reports.curves import plot_loss_accuracy

FIX_CKPT = "pass ckpt_path=<fp32 run>/checkpoints/best.ckpt from labquant-train"


class CalibrationData(LightningDataModule):
    """Training images WITHOUT augmentation, served as a validation set so that Lightning's
    own loop (`trainer.validate`) drives the PTQ observers."""

    def __init__(self, source: TensorImageDataModule) -> None:
        super().__init__()
        self.source = source

    def val_dataloader(self) -> DataLoader:
        x, y = self.source.arrays("train")
        sampler = EpochSeededRandomSampler(len(y), self.source.seed)
        batches = EpochBatchSampler(sampler, self.source.batch_size, drop_last=False)
        return DataLoader(BatchTensorDataset(x, y), batch_size=None, sampler=batches)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        return (normalize(x) if x.dtype == torch.uint8 else x), y


def load_fp32_net(cfg: DictConfig, checkpoint: dict[str, Any]) -> nn.Module:
    """Build `cfg.model` and load the checkpoint's weights; another architecture is refused."""
    net = hydra.utils.instantiate(cfg.model)
    check_same_network(net, checkpoint, f"ckpt_path={cfg.ckpt_path}")
    net.load_state_dict(net_state(checkpoint))
    return net


def check_qat_resume(cfg: DictConfig) -> None:
    """resume=true makes Lightning load <run dir>/checkpoints/last.ckpt: fail in one line, not
    in its restore, when that file is damaged."""
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if cfg.get("resume") and last.exists():
        fix = f"delete {last} to start this stage over, or run without resume=true"
        load_checkpoint(last, fix, setting="resume=true: checkpoint", mmap=True)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_quant_config(cfg: DictConfig, quant_key: str = "quant") -> None:
    """`quant_key` is where the user sets cfg.quant: `quant` here, `lab.ptq` in the lab."""
    batches = cfg.quant.get("calibration_batches")
    if batches is not None and (not _is_int(batches) or batches < 1):
        raise ConfigError(
            f"{quant_key}.calibration_batches={batches} must be an integer >= 1; e.g. "
            f"{quant_key}.calibration_batches=32"
        )
    shift = cfg.qconfig.get("max_shift_amount")
    if shift is not None and (not _is_int(shift) or not 0 <= shift <= 31):
        raise ConfigError(
            f"qconfig.max_shift_amount={shift} must be an integer in 0..31 (the shift of a "
            "power-of-two scale 2**-n); e.g. qconfig.max_shift_amount=8"
        )


def _calibrate(
    cfg: DictConfig, module: pl.LightningModule, dm: TensorImageDataModule, export: Int8Export
) -> None:
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=cfg.quant.calibration_batches,
        callbacks=[
            PrepareQuantization(
                cfg.qconfig.name, qat=False, max_shift_amount=cfg.qconfig.max_shift_amount
            ),
            export,
        ],
    )
    trainer.validate(module, datamodule=CalibrationData(dm), verbose=False)


def _qat_config(cfg: DictConfig) -> DictConfig:
    """Fine-tuning settings of the QAT stage over the FP32 recipe (fp32 precision: fake quant)."""
    overrides: dict[str, Any] = {
        "optimizer": {"lr": cfg.quant.lr},
        "trainer": {"max_epochs": cfg.quant.epochs, "precision": "32-true"},
    }
    if "warmup_epochs" in (cfg.get("scheduler") or {}):
        overrides["scheduler"] = {"warmup_epochs": cfg.quant.warmup_epochs}
    return OmegaConf.merge(cfg, overrides)


def _fine_tune(
    cfg: DictConfig, net: nn.Module, dm: TensorImageDataModule, export: Int8Export
) -> str:
    qat_cfg = _qat_config(cfg)
    module = build_module(qat_cfg, net=net)
    callbacks = [
        PrepareQuantization(
            cfg.qconfig.name, qat=True, max_shift_amount=cfg.qconfig.max_shift_amount
        ),
        QATSchedule(cfg.quant.freeze_observer_epoch, cfg.quant.freeze_bn_epoch),
        export,
    ]
    trainer = build_trainer(qat_cfg, extra_callbacks=callbacks)
    trainer.fit(module, datamodule=dm, ckpt_path="last" if cfg.get("resume") else None)
    csv_path = metrics_csv_path(trainer)
    if csv_path is not None and csv_path.exists():
        title = f"{model_name(cfg)} QAT ({cfg.qconfig.name})"
        plot_loss_accuracy(csv_path, Path(cfg.paths.output_dir) / "loss_accuracy.png", title=title)
    return str(trainer.strategy.root_device)


def quantize(cfg: DictConfig) -> dict[str, Any]:
    """One PTQ or QAT stage; returns (and writes) its results.json."""
    started = time.perf_counter()
    check_quant_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    checkpoint = load_checkpoint(cfg.get("ckpt_path"), FIX_CKPT)
    check_qat_resume(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    dm: TensorImageDataModule = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    check_batch_size(dm)

    fp32_net = load_fp32_net(cfg, checkpoint)
    fp32_acc, _ = evaluate(copy.deepcopy(fp32_net), dm.test_dataloader())
    net = copy.deepcopy(fp32_net)
    export = Int8Export(dm, out_dir)
    if cfg.quant.mode == "qat":
        train_device = _fine_tune(cfg, net, dm, export)
    else:
        train_device = None
        _calibrate(cfg, build_module(cfg, net=net), dm, export)
    assert export.result is not None and export.int8_net is not None

    batch: Tensor = normalize(dm.arrays("train")[0][: dm.batch_size].cpu())
    layers = layer_table(fp32_net, net.cpu(), export.int8_net, batch)
    results: dict[str, Any] = {
        "stage": cfg.quant.mode,
        "status": "complete",
        "qconfig": cfg.qconfig.name,
        "max_shift_amount": cfg.qconfig.max_shift_amount if cfg.qconfig.name == "pot" else None,
        "model": model_name(cfg),
        **export.result,
        "fp32_test_acc": round(fp32_acc, 4),
        "acc_drop": round(fp32_acc - export.result["test_acc"], 4),
        "fp32_size_mib": serialized_mib(fp32_net.state_dict()),
        "fp32_checkpoint": str(cfg.ckpt_path),
        "qat_device": train_device,  # fake-quant fine-tuning; int8 conversion and tests: CPU
        "layers": layers,
        "worst_layers": [layer["name"] for layer in worst_layers(layers)],
    }
    if cfg.quant.mode == "ptq":
        results["calibration_batches"] = cfg.quant.calibration_batches
    if cfg.quant.get("measure_latency", True):
        # The deployed form of each: the frozen TorchScript file for int8, eager FP32.
        results["latency"] = cpu_latency(export.int8_script or export.int8_net)
        results["fp32_latency"] = cpu_latency(fp32_net.cpu().eval())
    results["wall_time_s"] = round(time.perf_counter() - started, 2)
    write_json(out_dir / "results.json", results)
    return results
