"""`labquant-quantize`'s pipeline: one PTQ or QAT stage from an FP32 checkpoint.

Lightning's own loops drive the backend's observers (`trainer.validate` on calibration batches)
or fake-quant fine-tuning (`trainer.fit`); once they return, this module converts, evaluates and
saves the int8 model (as torchvision's reference does) and writes results.json.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from labquant.checkpoints import (
    check_same_network,
    load_checkpoint,
    net_state,
    safe_checkpoint_globals,
)
from labquant.config.instantiate import instantiate
from labquant.config.schema import validate_settings
from labquant.data.augment import normalize
from labquant.data.tensors import TensorImageDataModule
from labquant.lit.callbacks import PrepareQuantization, QATSchedule
from labquant.lit.module import ClassifierModule
from labquant.quant.backend import QuantBackend
from labquant.quant.qconfigs import QConfigSpec
from labquant.reports.artifacts import serialized_mib, write_json
from labquant.reports.curves import plot_loss_accuracy
from labquant.reports.machine import cpu
from labquant.reports.table import worst_layers
from labquant.tasks.board import layer_weights, log_stage
from labquant.tasks.checks import check_batch_size, check_qat_resume
from labquant.tasks.common import build_module, build_trainer, metrics_csv_path, model_name
from labquant.tasks.evaluate import cpu_latency, evaluate_confusion, paired_drop
from labquant.tasks.fingerprint import settings_record
from labquant.tasks.fp32_paths import fp32_runtimes

FIX_CKPT = "pass ckpt_path=<fp32 run>/checkpoints/best.ckpt from labquant-train"


def load_fp32_net(cfg: DictConfig, checkpoint: dict[str, Any]) -> nn.Module:
    """Build `cfg.model` and load the checkpoint's weights; another architecture is refused."""
    net = instantiate(cfg.model, "model")
    check_same_network(net, checkpoint, f"ckpt_path={cfg.ckpt_path}")
    net.load_state_dict(net_state(checkpoint))
    return net


def _calibrate(
    cfg: DictConfig, module: ClassifierModule, dm: TensorImageDataModule, prepare: pl.Callback
) -> None:
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=cfg.quant.calibration_batches,
        callbacks=[prepare],
    )
    trainer.validate(module, datamodule=dm.calibration_view(), verbose=False)


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
    cfg: DictConfig,
    module: ClassifierModule,
    dm: TensorImageDataModule,
    backend: QuantBackend,
    prepare: pl.Callback,
) -> pl.Trainer:
    qat_cfg = _qat_config(cfg)
    schedule = QATSchedule(backend, cfg.quant.freeze_observer_epoch, cfg.quant.freeze_bn_epoch)
    trainer = build_trainer(qat_cfg, extra_callbacks=[prepare, schedule])
    with safe_checkpoint_globals():
        trainer.fit(
            module,
            datamodule=dm,
            ckpt_path="last" if cfg.get("resume") else None,
            weights_only=True,
        )
    csv_path = metrics_csv_path(trainer)
    if trainer.is_global_zero and csv_path is not None and csv_path.exists():
        title = f"{model_name(cfg)} QAT ({cfg.qconfig.name})"
        plot_loss_accuracy(csv_path, Path(cfg.paths.output_dir) / "loss_accuracy.png", title=title)
    return trainer


def measure_speed(
    cfg: DictConfig, int8: Any, runtimes: dict[str, Any], fp32_net: nn.Module, batch: Tensor
) -> dict[str, Any]:
    """CPU latency of the int8 model, of its other runtimes, and of every FP32 path (eager,
    Inductor-compiled, ONNX Runtime when installed), measured in this run, side by side: the
    report compares int8 with the BEST FP32 path, the one a user would deploy."""
    wanted = list(cfg.quant.get("fp32_paths") or ["eager"])
    fp32_paths = fp32_runtimes(
        fp32_net, batch[:2], compile="compiled" in wanted, onnx="onnxruntime" in wanted
    )
    fp32 = {name: cpu_latency(run) for name, run in fp32_paths.items() if name in wanted}
    return {
        "latency": cpu_latency(int8),
        **{f"{name}_latency": cpu_latency(run) for name, run in runtimes.items()},
        "fp32_latency": fp32["eager"],
        "fp32_latencies": fp32,
        "cpu": cpu(),  # the ISA decides the int8 / FP32 ratio: reports name it
    }


def quantize(cfg: DictConfig) -> dict[str, Any]:
    """One PTQ or QAT stage; returns (and writes) its results.json."""
    started = time.perf_counter()
    validate_settings(cfg)
    out_dir = Path(cfg.paths.output_dir)
    qconfig: QConfigSpec = instantiate(cfg.qconfig, "qconfig")
    backend: QuantBackend = instantiate(cfg.backend, "backend")
    backend.check(qconfig)
    checkpoint = load_checkpoint(cfg.get("ckpt_path"), FIX_CKPT)
    check_qat_resume(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    dm: TensorImageDataModule = instantiate(cfg.data, "data")
    dm.prepare_data()
    dm.setup("fit")
    check_batch_size(dm)

    fp32_net = load_fp32_net(cfg, checkpoint)
    fp32_eval = evaluate_confusion(copy.deepcopy(fp32_net), dm.eval_dataloader())
    fp32_acc = fp32_eval.acc
    batch: Tensor = normalize(dm.arrays("train")[0][: dm.batch_size].cpu())
    qat = cfg.quant.mode == "qat"
    prepare = PrepareQuantization(backend, qconfig, qat=qat, example_input=batch[:2])
    if qat:
        teacher = copy.deepcopy(fp32_net) if cfg.quant.get("distill_weight") else None
        module = build_module(_qat_config(cfg), net=copy.deepcopy(fp32_net), teacher=teacher)
        trainer = _fine_tune(cfg, module, dm, backend, prepare)
        if not trainer.is_global_zero:  # under DDP rank 0 converts, tests and writes alone
            return {"status": "complete", "world_size": trainer.world_size}
        train_device, world_size = str(trainer.strategy.root_device), trainer.world_size
    else:
        module = build_module(cfg, net=copy.deepcopy(fp32_net))
        train_device, world_size = None, 1
        _calibrate(cfg, module, dm, prepare)

    prepared = module.net
    int8 = backend.convert(prepared, batch)
    int8_eval = evaluate_confusion(int8, dm.eval_dataloader())
    test_acc = int8_eval.acc
    saved = backend.save(int8, out_dir)
    runtimes = backend.runtimes(out_dir, saved)  # the same file in another runtime (ORT)
    for runtime, deployed in runtimes.items():
        deployed_eval = evaluate_confusion(deployed, dm.eval_dataloader())
        saved[f"{runtime}_test_acc"] = round(deployed_eval.acc, 4)
        interval = paired_drop(fp32_eval, deployed_eval).get("acc_drop_ci95")
        saved[f"{runtime}_acc_drop_ci95"] = interval
    layers = backend.layer_table(fp32_net, prepared.cpu(), int8, batch)
    results: dict[str, Any] = {
        "stage": cfg.quant.mode,
        "status": "complete",
        "backend": backend.name,
        "qconfig": qconfig.name,
        "max_shift_amount": qconfig.max_shift_amount,
        "model": model_name(cfg),
        "test_acc": round(test_acc, 4),
        "test_loss": int8_eval.loss,
        **saved,
        "fp32_test_acc": round(fp32_acc, 4),
        "acc_drop": round(fp32_acc - test_acc, 4),
        # Half-width of its 95 % paired interval, and the images only one model gets right.
        **paired_drop(fp32_eval, int8_eval),
        "fp32_size_mib": serialized_mib(fp32_net.state_dict()),
        "fp32_checkpoint": str(cfg.ckpt_path),
        "qat_device": train_device,  # fake-quant fine-tuning; int8 conversion and tests: CPU
        "world_size": world_size,  # processes of the fine-tuning (DDP); conversion: one
        "test_images": len(dm.arrays("test")[1]),  # int8 and FP32 tested on every one, once
        "layers": layers,
        "worst_layers": [layer["name"] for layer in worst_layers(layers)],
        # Test set, rows = true class, columns = predicted; the report's per-class table.
        "confusion": {"fp32": fp32_eval.confusion, "int8": int8_eval.confusion},
        "class_names": list(getattr(dm, "class_names", ())) or None,
    }
    if not qat:
        results["calibration_batches"] = cfg.quant.calibration_batches
    if cfg.quant.get("measure_latency", True):
        results.update(measure_speed(cfg, int8, runtimes, fp32_net.cpu().eval(), batch))
    metrics_csv = out_dir / "metrics.csv" if qat else None
    weights = layer_weights(prepared, [layer["name"] for layer in layers])
    log_stage(cfg, results, metrics_csv=metrics_csv, weights=weights)
    results["wall_time_s"] = round(time.perf_counter() - started, 2)
    results.update(settings_record(cfg, "quantize"))  # what a rerun must match to reuse it
    write_json(out_dir / "results.json", results)
    return results
