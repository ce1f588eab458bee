"""`labquant-quantize`'s pipeline: one PTQ or QAT stage from an FP32 checkpoint.

Lightning's own loops drive the backend's observers (`trainer.validate` on calibration batches)
or fake-quant fine-tuning (`trainer.fit`); once they return, this module converts, evaluates and
saves the int8 model (as torchvision's reference does) and writes results.json.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
from labquant.data.augment import network_input, normalize
from labquant.data.tensors import TensorImageDataModule
from labquant.errors import ConfigError
from labquant.lit.callbacks import PrepareQuantization, QATSchedule
from labquant.lit.loggers import StageTensorBoardLogger
from labquant.machine import cpu
from labquant.quant.backend import QuantBackend
from labquant.quant.layers import packed_size_mib, quantizable_layers, total_bitops
from labquant.quant.qconfigs import QConfigSpec
from labquant.reports.artifacts import serialized_mib
from labquant.reports.table import worst_layers
from labquant.speed import best_fp32_speed, cpu_speed
from labquant.tasks.checks import check_batch_size, check_qat_resume
from labquant.tasks.common import build_module, build_trainer, model_name
from labquant.tasks.evaluate import Evaluation, evaluate_confusion, paired_drop
from labquant.tasks.fp32_paths import fp32_runtimes
from labquant.tasks.stage_end import finish_stage

FIX_CKPT = "pass ckpt_path=<fp32 run>/checkpoints/best.ckpt from labquant-train"


def load_fp32_net(cfg: DictConfig, checkpoint: dict[str, Any]) -> nn.Module:
    """Build `cfg.model` and load the checkpoint's weights; another architecture is refused."""
    net = instantiate(cfg.model, "model")
    check_same_network(net, checkpoint, f"ckpt_path={cfg.ckpt_path}")
    net.load_state_dict(net_state(checkpoint))
    return net


@dataclass
class StageInputs:
    """What a PTQ or QAT stage starts from, every part checked before any work."""

    qconfig: QConfigSpec
    backend: QuantBackend
    data: TensorImageDataModule
    fp32_net: nn.Module
    fp32_eval: Evaluation
    batch: Tensor  # a normalized training batch: calibration shape, example input
    # The FP32 run's last training step: where this stage's TensorBoard curves start.
    fp32_steps: int = 0


@dataclass
class Tuned:
    """The prepared network after calibration or fine-tuning, and where it was trained."""

    prepared: nn.Module
    train_device: str | None = None  # QAT's device; PTQ calibrates on the CPU
    world_size: int = 1  # QAT's processes (DDP); conversion and tests: one
    writes: bool = True  # False on DDP ranks other than 0: rank 0 converts, tests and writes
    steps: int = 0  # QAT's optimizer steps; PTQ takes none


# A task's own checks of what load_inputs loaded, run before the FP32 reference is evaluated.
InputsCheck = Callable[[QConfigSpec, nn.Module, TensorImageDataModule], None]


def load_inputs(
    cfg: DictConfig, reference_split: str = "test", check: InputsCheck | None = None
) -> StageInputs:
    """Settings, qconfig and backend (mode included), the FP32 checkpoint and the data, and the
    FP32 network evaluated on `reference_split` (labquant-sensitivity: "val", never the test
    set); `check` adds a task's own checks before that evaluation."""
    validate_settings(cfg)
    qconfig: QConfigSpec = instantiate(cfg.qconfig, "qconfig")
    qconfig.check_layers(quantizable_layers(instantiate(cfg.model, "model")))
    backend: QuantBackend = instantiate(cfg.backend, "backend")
    backend.check(qconfig, cfg.quant.mode)
    qconfig.check_mode(cfg.quant.mode)
    checkpoint = load_checkpoint(cfg.get("ckpt_path"), FIX_CKPT)
    check_qat_resume(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    dm: TensorImageDataModule = instantiate(cfg.data, "data")
    dm.prepare_data()
    dm.setup("fit")
    check_batch_size(dm)
    fp32_net = load_fp32_net(cfg, checkpoint)
    if check is not None:
        check(qconfig, fp32_net, dm)
    fp32_eval = evaluate_confusion(copy.deepcopy(fp32_net), dm.eval_dataloader(reference_split))
    batch = normalize(dm.arrays("train")[0][: dm.batch_size].cpu())
    steps = fp32_last_step(cfg.ckpt_path, checkpoint)
    return StageInputs(qconfig, backend, dm, fp32_net, fp32_eval, batch, steps)


def fp32_last_step(ckpt_path: str, checkpoint: dict[str, Any]) -> int:
    """The FP32 run's last step: that of the `last.ckpt` beside `ckpt_path` when there is one
    (best.ckpt may be an earlier epoch's), else the checkpoint's own; 0 for a bare state."""
    steps = int(checkpoint.get("global_step") or 0)
    last = Path(ckpt_path).with_name("last.ckpt")
    if last.is_file() and last != Path(ckpt_path):
        # An unreadable sibling only costs the TensorBoard axis its offset.
        with contextlib.suppress(ConfigError):
            last_steps = load_checkpoint(last, FIX_CKPT, mmap=True).get("global_step")
            steps = max(steps, int(last_steps or 0))
    return steps


def calibrate(cfg: DictConfig, inputs: StageInputs) -> Tuned:
    """PTQ: Lightning's validation loop runs the calibration batches through the observers."""
    prepare = PrepareQuantization(
        inputs.backend, inputs.qconfig, qat=False, example_input=inputs.batch[:2]
    )
    module = build_module(cfg, net=copy.deepcopy(inputs.fp32_net))
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
    trainer.validate(module, datamodule=inputs.data.calibration_view(), verbose=False)
    return Tuned(module.net)


def qat_config(cfg: DictConfig) -> DictConfig:
    """Fine-tuning settings of the QAT stage over the FP32 recipe (fp32 precision: fake quant)."""
    overrides: dict[str, Any] = {
        "optimizer": {"lr": cfg.quant.lr},
        "trainer": {"max_epochs": cfg.quant.epochs, "precision": "32-true"},
    }
    if "warmup_epochs" in (cfg.get("scheduler") or {}):
        overrides["scheduler"] = {"warmup_epochs": cfg.quant.warmup_epochs}
    return OmegaConf.merge(cfg, overrides)


def calibration_batches(data: TensorImageDataModule, count: int) -> Iterator[Tensor]:
    """The first `count` calibration batches (training images, no augmentation, seeded order),
    normalized: where QAT's learned exponents start (qconfig.learn_scales), as PTQ's do."""
    for x, _ in itertools.islice(data.calibration_dataloader(), count):
        yield network_input(x)


def fine_tune(cfg: DictConfig, inputs: StageInputs) -> Tuned:
    """QAT: Lightning's fit loop, with the backend's observer / BatchNorm schedule, distilled
    from the FP32 network."""
    qat_cfg = qat_config(cfg)
    teacher = copy.deepcopy(inputs.fp32_net) if cfg.quant.get("distill_weight") else None
    module = build_module(qat_cfg, net=copy.deepcopy(inputs.fp32_net), teacher=teacher)
    prepare = PrepareQuantization(
        inputs.backend,
        inputs.qconfig,
        qat=True,
        example_input=inputs.batch[:2],
        calibration=lambda: calibration_batches(inputs.data, cfg.quant.calibration_batches),
    )
    schedule = QATSchedule(
        inputs.backend, cfg.quant.freeze_observer_epoch, cfg.quant.freeze_bn_epoch
    )
    trainer = build_trainer(qat_cfg, extra_callbacks=[prepare, schedule])
    for logger in trainer.loggers:  # QAT's curves continue FP32's on TensorBoard's step axis
        if isinstance(logger, StageTensorBoardLogger):
            logger.step_offset = inputs.fp32_steps
    with safe_checkpoint_globals():
        trainer.fit(
            module,
            datamodule=inputs.data,
            ckpt_path="last" if cfg.get("resume") else None,
            weights_only=True,
        )
    device = str(trainer.strategy.root_device)
    return Tuned(
        module.net, device, trainer.world_size, trainer.is_global_zero, trainer.global_step
    )


@dataclass
class Scores:
    """The int8 model and each other runtime of its saved files, on the whole test set."""

    int8: Evaluation
    saved: dict[str, Any]  # the backend's artifact entries plus <runtime>_test_acc / _ci95
    runtimes: dict[str, Any]


def save_and_score(out_dir: Path, inputs: StageInputs, int8: Any) -> Scores:
    """Score the int8 model, save its files, and score every other runtime of those files."""
    int8_eval = evaluate_confusion(int8, inputs.data.eval_dataloader())
    saved = inputs.backend.save(int8, out_dir)
    runtimes = inputs.backend.runtimes(out_dir, saved)  # the same file in another runtime (ORT)
    for runtime, deployed in runtimes.items():
        deployed_eval = evaluate_confusion(deployed, inputs.data.eval_dataloader())
        saved[f"{runtime}_test_acc"] = round(deployed_eval.acc, 4)
        interval = paired_drop(inputs.fp32_eval, deployed_eval).get("acc_drop_ci95")
        saved[f"{runtime}_acc_drop_ci95"] = interval
    return Scores(int8_eval, saved, runtimes)


def stage_results(
    cfg: DictConfig, inputs: StageInputs, tuned: Tuned, scores: Scores, layers: list[dict]
) -> dict[str, Any]:
    """results.json of a PTQ / QAT stage from what the stage computed (no I/O)."""
    fp32, int8 = inputs.fp32_eval, scores.int8
    results: dict[str, Any] = {
        "stage": cfg.quant.mode,
        "status": "complete",
        "backend": inputs.backend.name,
        "qconfig": inputs.qconfig.name,
        **inputs.qconfig.describe(),  # scheme, widths, granularity, exponent rule, range method
        "model": model_name(cfg),
        "test_acc": round(int8.acc, 4),
        "test_loss": int8.loss,
        **scores.saved,
        "fp32_test_acc": round(fp32.acc, 4),
        "acc_drop": round(fp32.acc - int8.acc, 4),
        # Half-width of its 95 % paired interval, and the images only one model gets right.
        **paired_drop(fp32, int8),
        "fp32_size_mib": serialized_mib(inputs.fp32_net.state_dict()),
        # What a hardware memory holds: weights at their width, biases, shifts, zero points.
        "packed_size_mib": packed_size_mib(
            layers, inputs.qconfig.scheme, inputs.qconfig.per_channel
        ),
        # Multiply-accumulates x weight bits x input bits, per image, summed over the layers.
        "bitops": total_bitops(layers),
        "fp32_checkpoint": str(cfg.ckpt_path),
        "qat_device": tuned.train_device,  # fake-quant fine-tuning; int8 conversion and tests: CPU
        "world_size": tuned.world_size,
        "test_images": len(inputs.data.arrays("test")[1]),  # int8 and FP32 tested once each
        "layers": layers,
        "worst_layers": [layer["name"] for layer in worst_layers(layers)],
        # Test set, rows = true class, columns = predicted; the report's per-class table.
        "confusion": {"fp32": fp32.confusion, "int8": int8.confusion},
        "class_names": list(getattr(inputs.data, "class_names", ())) or None,
    }
    if cfg.quant.mode == "ptq":
        results["calibration_batches"] = cfg.quant.calibration_batches
    return results


def measure_speed(
    cfg: DictConfig, int8: Any, runtimes: dict[str, Any], fp32_net: nn.Module, batch: Tensor
) -> dict[str, Any]:
    """CPU speed of the int8 model, of its other runtimes and of every FP32 path (eager,
    Inductor-compiled, ONNX Runtime when installed), all timed together by labquant.speed (the
    bench's timer): the report compares int8 with the BEST FP32 path, the one a user would
    deploy, and names it (`fp32_best`)."""
    wanted = list(cfg.quant.get("fp32_paths") or ["eager"])
    fp32_paths = fp32_runtimes(
        fp32_net, batch[:2], compile="compiled" in wanted, onnx="onnxruntime" in wanted
    )
    fp32_names = [name for name in fp32_paths if name in wanted]
    runs = {"int8": int8, **runtimes, **{f"fp32_{name}": fp32_paths[name] for name in fp32_names}}
    figures = cpu_speed(runs, image_shape=tuple(batch.shape[1:]))
    fp32 = {name: figures[f"fp32_{name}"] for name in fp32_names}
    return {
        "latency": figures["int8"],
        **{f"{name}_latency": figures[name] for name in runtimes},
        "fp32_latency": fp32["eager"],
        "fp32_latencies": fp32,
        "fp32_best": {key: list(pick) for key, pick in best_fp32_speed(fp32).items()},
        "cpu": cpu(),  # the ISA decides the int8 / FP32 ratio: reports name it
    }


def quantize(cfg: DictConfig) -> dict[str, Any]:
    """One PTQ or QAT stage, top to bottom; returns (and writes) its results.json."""
    started = time.perf_counter()
    out_dir = Path(cfg.paths.output_dir)
    inputs = load_inputs(cfg)
    qat = cfg.quant.mode == "qat"
    tuned = fine_tune(cfg, inputs) if qat else calibrate(cfg, inputs)
    if not tuned.writes:  # a DDP rank other than 0: rank 0 converts, tests and writes alone
        return {"status": "complete", "world_size": tuned.world_size}
    int8 = inputs.backend.convert(tuned.prepared, inputs.qconfig, inputs.batch)
    scores = save_and_score(out_dir, inputs, int8)
    prepared = tuned.prepared.cpu()
    layers = inputs.backend.layer_table(inputs.fp32_net, prepared, int8, inputs.batch)
    results = stage_results(cfg, inputs, tuned, scores, layers)
    if cfg.quant.get("measure_latency", True):
        fp32_net = inputs.fp32_net.cpu().eval()
        results.update(measure_speed(cfg, int8, scores.runtimes, fp32_net, inputs.batch))
    return finish_stage(
        cfg,
        results,
        started=started,
        stage="quantize",
        metrics_csv=out_dir / "metrics.csv" if qat else None,
        curves_title=f"{model_name(cfg)} QAT ({inputs.qconfig.name})",
        weights=inputs.backend.layer_weights(prepared, [layer["name"] for layer in layers]),
        board_step=inputs.fp32_steps + tuned.steps,
    )
