"""Run the configured benchmark sections and write bench.json / bench.md."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from labquant.config.instantiate import instantiate
from labquant.config.schema import validate_settings
from labquant.errors import ConfigError
from labquant.reports.artifacts import write_json, write_text
from labquant.tasks.bench.augment import bench_augment
from labquant.tasks.bench.common import qconfig_specs, synthetic_data
from labquant.tasks.bench.gpu import bench_gpu
from labquant.tasks.bench.inference import backend_for, bench_inference
from labquant.tasks.bench.report import check_targets, machine, markdown
from labquant.tasks.bench.training import bench_qat_step, bench_train_step

log = logging.getLogger(__name__)


def effective_settings(cfg: DictConfig) -> DictConfig:
    """`quick=true` merges `quick_settings` over the full settings."""
    return OmegaConf.merge(cfg, cfg.quick_settings) if cfg.quick else cfg


def gpu_wanted(cfg: DictConfig) -> bool:
    if cfg.gpu.enabled == "auto":
        return torch.cuda.is_available()
    if cfg.gpu.enabled and cfg.gpu.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("gpu.enabled=true but no CUDA device is visible; use gpu.enabled=auto")
    return bool(cfg.gpu.enabled)


def run_sections(cfg: DictConfig) -> dict[str, Any]:
    results: dict[str, Any] = {}
    sections = list(cfg.sections)
    qconfigs = qconfig_specs(list(cfg.qconfigs))
    backend = instantiate(cfg.backend, "backend")
    if "augment" in sections:
        log.info("augment: per-image PIL workers vs batched")
        a = cfg.augment
        dm = synthetic_data(a.images)
        x, y = dm.arrays("train")
        results["augment"] = bench_augment(
            x[: a.images], y[: a.images], a.batch_size, a.workers, a.device
        )
    if "train_step" in sections:
        log.info("train_step: Lightning vs plain loop")
        t = cfg.train_step
        results["train_step"] = bench_train_step(
            t.model, t.images, t.batch_size, t.epochs, t.rounds
        )
    if "inference" in sections or "sizes" in sections:
        timed = "inference" in sections
        log.info("inference and sizes: every FP32 path vs every int8 path on the CPU")
        i = cfg.inference
        backends = {name: backend_for(name, i.compile, i.onnx) for name in i.backends}
        kernel = OmegaConf.to_container(i.kernel) if i.kernel is not None else None
        inference, sizes = bench_inference(
            list(i.models),
            backends,
            qconfigs,
            i.repeats_b1,
            i.repeats_b256,
            i.calibration_batches,
            compile=i.compile,
            onnx=i.onnx,
            kernel=kernel,
            timed=timed,
        )
        if timed:
            results["inference"] = inference
        if "sizes" in sections:
            results["sizes"] = sizes
    if "qat_step" in sections:
        log.info("qat_step: fake-quant step vs FP32 step")
        q = cfg.qat_step
        results["qat_step"] = bench_qat_step(q.model, q.batch_size, q.steps, backend, qconfigs)
    if "gpu" in sections and gpu_wanted(cfg):
        log.info("gpu: default path vs the lab's plain path")
        g = cfg.gpu
        results["gpu"] = bench_gpu(
            list(g.models),
            g.images,
            g.epochs,
            OmegaConf.to_container(g.default_path),
            OmegaConf.to_container(g.plain_path),
            g.device,
            g.matmul_size,
        )
    return results


def run_bench(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    cfg = effective_settings(cfg)
    validate_settings(cfg)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    results: dict[str, Any] = {"machine": machine(), "quick": bool(cfg.quick)}
    results.update(run_sections(cfg))
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    results["targets"] = check_targets(results, list(cfg.targets))
    out_dir = Path(cfg.paths.output_dir)
    write_json(out_dir / "bench.json", results)
    write_text(out_dir / "bench.md", markdown(results))
    return results
