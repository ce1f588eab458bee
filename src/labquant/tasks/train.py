"""`labquant-train`'s pipeline: check, instantiate, fit, test the best checkpoint, and leave the
run's artifacts (results.json, loss_accuracy.png, FP32 state_dict) in its folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig

from labquant.checkpoints import safe_checkpoint_globals
from labquant.config.instantiate import instantiate
from labquant.config.schema import validate_settings
from labquant.lit.module import count_parameters
from labquant.reports.artifacts import file_size_mib, write_torch
from labquant.tasks.board import float_layer_weights
from labquant.tasks.checks import check_batch_size, check_train_checkpoint
from labquant.tasks.common import (
    build_module,
    build_trainer,
    metrics_csv_path,
    model_name,
    rounded,
)
from labquant.tasks.stage_end import finish_stage

FP32_STATE_DICT = "model_fp32_state_dict.pt"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Every setting and the checkpoint to resume are checked before any work starts."""
    validate_settings(cfg)
    check_train_checkpoint(cfg)
    return fit_fp32(cfg)


def fit_fp32(cfg: DictConfig) -> dict[str, Any]:
    """Train, test the best checkpoint, write the run's artifacts; return results.json's dict."""
    started = time.perf_counter()
    out_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = prepared_datamodule(cfg)
    module = build_module(cfg)
    # Lightning unwraps a compiled module for checkpoints; `module` keeps the same parameters.
    fitted = torch.compile(module) if cfg.get("compile") else module
    trainer = build_trainer(cfg)
    fit_metrics, best_path, tested = fit_and_test(cfg, trainer, fitted, datamodule)

    distributed = {
        "world_size": trainer.world_size,
        "global_batch_size": datamodule.batch_size * trainer.world_size,
        "test_images": int(tested["test/images"]),
    }
    relative_best = str(Path(best_path).relative_to(out_dir)) if best_path else None
    if not trainer.is_global_zero:  # under DDP one process (rank 0) writes the artifacts
        return {
            "status": "complete",
            "test_acc": rounded(tested["test/acc"]),
            "checkpoint": relative_best,  # the lab's next DDP stage starts from it on every rank
            **distributed,
        }

    # After test(ckpt_path=best) the module holds the best weights: that is the model we ship.
    state_dict_path = out_dir / FP32_STATE_DICT
    write_torch(state_dict_path, module.net.state_dict())
    results = fp32_results(
        cfg, module, trainer, fit_metrics, tested, state_dict_path, relative_best, distributed
    )
    return finish_stage(
        cfg,
        results,
        started=started,
        stage="fp32",
        metrics_csv=metrics_csv_path(trainer),
        curves_title=f"{results['model']} FP32",
        weights=float_layer_weights(module.net),
        # FP32 is its own reference in the HPARAMS table; its memory: every parameter at 32 bits.
        board_extra={"acc_drop": 0.0, "packed_size_mib": round(4 * results["params"] / 2**20, 4)},
        board_step=trainer.global_step,
    )


def prepared_datamodule(cfg: DictConfig) -> Any:
    """The data set up for fitting: missing or corrupt data, or a batch larger than the
    training set, fails here, before the trainer writes anything."""
    datamodule = instantiate(cfg.data, "data")
    datamodule.prepare_data()
    datamodule.setup("fit")
    check_batch_size(datamodule)
    return datamodule


def fit_and_test(
    cfg: DictConfig, trainer: pl.Trainer, fitted: Any, datamodule: Any
) -> tuple[dict[str, float], str | None, dict[str, float]]:
    """Fit, then test the best checkpoint: (the fit's last metrics, the best checkpoint's path
    or None, the test metrics). Every restore unpickles plain weights only (checkpoints.py)."""
    # resume=true continues from <run dir>/checkpoints/last.ckpt (Lightning's "last").
    with safe_checkpoint_globals():
        trainer.fit(
            fitted,
            datamodule=datamodule,
            ckpt_path="last" if cfg.get("resume") else cfg.get("ckpt_path"),
            weights_only=True,
        )
        fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        best_path = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
        tested = trainer.test(
            fitted, datamodule=datamodule, ckpt_path=best_path, verbose=False, weights_only=True
        )[0]
    return fit_metrics, best_path, tested


def fp32_results(
    cfg: DictConfig,
    module: Any,
    trainer: pl.Trainer,
    fit_metrics: dict[str, float],
    tested: dict[str, float],
    state_dict_path: Path,
    relative_best: str | None,
    distributed: dict[str, int],
) -> dict[str, Any]:
    """results.json's figures of the FP32 stage, in the order the file has always had."""
    best_score = getattr(trainer.checkpoint_callback, "best_model_score", None)
    return {
        "stage": "fp32",
        "status": "complete",
        "model": model_name(cfg),
        "arch": dict(getattr(module.net, "arch", {})),
        "params": count_parameters(module.net),
        "epochs": trainer.current_epoch,
        "val_acc": rounded(fit_metrics.get("val/acc", float("nan"))),
        "best_val_acc": rounded(best_score) if best_score is not None else None,
        "test_acc": rounded(tested["test/acc"]),
        "test_loss": tested["test/loss"],
        "size_mib": file_size_mib(state_dict_path),
        "state_dict": FP32_STATE_DICT,
        "checkpoint": relative_best,
        "device": str(trainer.strategy.root_device),
        # what the weights were trained in (the default follows the CPU: bf16-mixed with AMX)
        "precision": str(trainer.precision),
        **distributed,
        "seed": cfg.seed,
    }
