"""Run the configured benchmark sections and write bench.json / bench.md."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from labquant.bench.augment import bench_augment
from labquant.bench.common import synthetic_data
from labquant.bench.gpu import bench_gpu
from labquant.bench.inference import bench_inference
from labquant.bench.report import check_targets, machine, markdown, parse_target
from labquant.bench.training import bench_qat_step, bench_train_step
from labquant.errors import ConfigError
from labquant.quant.qconfigs import QCONFIG_NAMES
from labquant.reports.artifacts import write_json, write_text

log = logging.getLogger(__name__)
SECTIONS = ("augment", "train_step", "inference", "qat_step", "sizes", "gpu")


def effective_settings(cfg: DictConfig) -> DictConfig:
    """`quick=true` merges `quick_settings` over the full settings."""
    return OmegaConf.merge(cfg, cfg.quick_settings) if cfg.quick else cfg


def check_bench_config(cfg: DictConfig) -> None:
    unknown = [s for s in cfg.sections if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"sections has unknown {unknown}; choose from {list(SECTIONS)}")
    bad = [q for q in cfg.qconfigs if q not in QCONFIG_NAMES]
    if bad:
        raise ConfigError(f"qconfigs has unknown {bad}; choose from {list(QCONFIG_NAMES)}")
    if cfg.threads is not None and (not isinstance(cfg.threads, int) or cfg.threads < 1):
        raise ConfigError(f"threads={cfg.threads} must be an integer >= 1, or null")
    if cfg.gpu.enabled not in ("auto", True, False):
        raise ConfigError(f"gpu.enabled={cfg.gpu.enabled} must be auto, true or false")
    for target in cfg.targets:
        parse_target(target)


def gpu_wanted(cfg: DictConfig) -> bool:
    if cfg.gpu.enabled == "auto":
        return torch.cuda.is_available()
    if cfg.gpu.enabled and cfg.gpu.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("gpu.enabled=true but no CUDA device is visible; use gpu.enabled=auto")
    return bool(cfg.gpu.enabled)


def run_sections(cfg: DictConfig) -> dict[str, Any]:
    results: dict[str, Any] = {}
    sections = list(cfg.sections)
    qconfigs = list(cfg.qconfigs)
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
        log.info("inference and sizes: FP32 vs int8 on the CPU")
        i = cfg.inference
        inference, sizes = bench_inference(
            list(i.models), qconfigs, i.repeats_b1, i.repeats_b256, i.calibration_batches
        )
        if "inference" in sections:
            results["inference"] = inference
        if "sizes" in sections:
            results["sizes"] = sizes
    if "qat_step" in sections:
        log.info("qat_step: fake-quant step vs FP32 step")
        q = cfg.qat_step
        results["qat_step"] = bench_qat_step(q.model, q.batch_size, q.steps, qconfigs)
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
    check_bench_config(cfg)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    results: dict[str, Any] = {"machine": machine(), "quick": bool(cfg.quick)}
    results.update(run_sections(cfg))
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    results["targets"] = check_targets(results, list(cfg.targets))
    out_dir = Path(cfg.paths.output_dir)
    write_json(out_dir / "bench.json", results)
    write_text(out_dir / "bench.md", markdown(results, list(cfg.qconfigs)))
    return results
