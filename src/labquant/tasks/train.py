"""FP32 training run: instantiate everything from the config, fit, test the best checkpoint,
and leave the run's artifacts (results.json, loss_accuracy.png, FP32 state_dict) in its folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from labquant.cli.checks import check_batch_size
from labquant.lit.module import ClassifierModule, count_parameters
from labquant.reports.artifacts import file_size_mib, write_json
from labquant.reports.curves import plot_loss_accuracy

FP32_STATE_DICT = "model_fp32_state_dict.pt"


def build_module(cfg: DictConfig, net: torch.nn.Module | None = None) -> ClassifierModule:
    """The scheduler group holds a partial plus `interval` (step | epoch), which Lightning needs."""
    scheduler = OmegaConf.to_container(cfg.get("scheduler") or {}, resolve=True)
    interval = scheduler.pop("interval", "epoch")
    return ClassifierModule(
        net=net if net is not None else hydra.utils.instantiate(cfg.model),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(scheduler) if "_target_" in scheduler else None,
        scheduler_interval=interval,
        num_classes=cfg.model.num_classes,
        channels_last=cfg.get("channels_last", False),
    )


def build_trainer(cfg: DictConfig, extra_callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    return hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks + list(extra_callbacks or []), logger=loggers or False
    )


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as flat `a.b.c` scalars, the shape TensorBoard's hparams tab wants."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, list):
            flat[prefix] = str(node)
        elif node is None or isinstance(node, bool | int | float | str):
            flat[prefix] = "None" if node is None else node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return {k: v for k, v in flat.items() if not k.startswith(("hydra", "paths"))}


def log_final_hparams(trainer: pl.Trainer, cfg: DictConfig, metrics: dict[str, float]) -> None:
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(
                flat_hparams(cfg), {f"hparams/{k}": v for k, v in metrics.items()}
            )
            logger.save()


def metrics_csv_path(trainer: pl.Trainer) -> Path | None:
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            return Path(logger.log_dir) / "metrics.csv"
    return None


def percent(fraction: float) -> float:
    return round(100 * float(fraction), 4)


def model_name(cfg: DictConfig) -> str:
    """`resnet18`, `small_resnet`, ...: the factory's name is what users chose with model=."""
    return str(cfg.model._target_).rsplit(".", 1)[-1]


def fit_fp32(cfg: DictConfig) -> dict[str, Any]:
    """Train, test the best checkpoint, write the run's artifacts; return results.json's dict."""
    started = time.perf_counter()
    out_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = hydra.utils.instantiate(cfg.data)
    # Missing or corrupt data fails here, before the trainer writes anything.
    datamodule.prepare_data()
    datamodule.setup("fit")
    check_batch_size(datamodule)
    module = build_module(cfg)
    # Lightning unwraps a compiled module for checkpoints; `module` keeps the same parameters.
    fitted = torch.compile(module) if cfg.get("compile") else module
    trainer = build_trainer(cfg)
    # resume=true continues from <run dir>/checkpoints/last.ckpt (Lightning's "last").
    trainer.fit(
        fitted,
        datamodule=datamodule,
        ckpt_path="last" if cfg.get("resume") else cfg.get("ckpt_path"),
    )
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    checkpoint = trainer.checkpoint_callback
    best_path = getattr(checkpoint, "best_model_path", "") or None
    tested = trainer.test(fitted, datamodule=datamodule, ckpt_path=best_path, verbose=False)[0]

    # After test(ckpt_path=best) the module holds the best weights: that is the model we ship.
    state_dict_path = out_dir / FP32_STATE_DICT
    torch.save(module.net.state_dict(), state_dict_path)

    best_score = getattr(checkpoint, "best_model_score", None)
    results: dict[str, Any] = {
        "stage": "fp32",
        "status": "complete",
        "model": model_name(cfg),
        "arch": dict(getattr(module.net, "arch", {})),
        "params": count_parameters(module.net),
        "epochs": trainer.current_epoch,
        "val_acc": percent(fit_metrics.get("val/acc", float("nan"))),
        "best_val_acc": percent(float(best_score)) if best_score is not None else None,
        "test_acc": percent(tested["test/acc"]),
        "test_loss": tested["test/loss"],
        "size_mib": file_size_mib(state_dict_path),
        "state_dict": FP32_STATE_DICT,
        "checkpoint": str(Path(best_path).relative_to(out_dir)) if best_path else None,
        "device": str(trainer.strategy.root_device),
        "seed": cfg.seed,
    }
    csv_path = metrics_csv_path(trainer)
    if csv_path is not None and csv_path.exists():
        plot_loss_accuracy(
            csv_path, out_dir / "loss_accuracy.png", title=f"{results['model']} FP32"
        )
    log_final_hparams(
        trainer,
        cfg,
        {k: results[k] for k in ("test_acc", "val_acc", "best_val_acc") if results[k] is not None},
    )
    results["wall_time_s"] = round(time.perf_counter() - started, 2)
    write_json(out_dir / "results.json", results)
    return results
