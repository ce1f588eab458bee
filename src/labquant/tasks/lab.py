"""`labquant-lab`: FP32 -> PTQ -> QAT in one folder, then the comparison report.

Each stage lives in its own subfolder with its own results.json; a stage whose results.json
says "complete" is not redone, so an interrupted lab is finished by running it again there.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from labquant.cli.checks import check_train_config
from labquant.lit.fit import fit_fp32
from labquant.lit.quantize import check_quant_config, quantize
from labquant.reports.artifacts import read_json
from labquant.reports.table import stage_row, write_lab_report

log = logging.getLogger(__name__)


def completed(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / "results.json"
    if not path.is_file():
        return None
    try:
        results = read_json(path)
    except ValueError:
        return None
    return results if results.get("status") == "complete" else None


def clear_failure(lab_dir: Path) -> None:
    """A failed earlier attempt left results.json {"status": "failed"} in the lab folder; the
    finished lab's record is report.json, so the stale failure goes (the lab writes no
    results.json of its own: a complete one would make the next rerun ask for overwrite=true)."""
    path = lab_dir / "results.json"
    try:
        stale = path.is_file() and read_json(path).get("status") == "failed"
    except ValueError:
        stale = False
    if stale:
        path.unlink()


def with_overrides(cfg: DictConfig, overrides: dict[str, Any]) -> DictConfig:
    """A copy of `cfg` with `overrides` merged in, new keys (quant, qconfig) allowed."""
    copy = cfg.copy()
    OmegaConf.set_struct(copy, False)
    return OmegaConf.merge(copy, overrides)


def stage_config(cfg: DictConfig, stage_dir: Path, **overrides: Any) -> DictConfig:
    stage = with_overrides(cfg, overrides)
    with open_dict(stage):
        stage.paths.output_dir = str(stage_dir)
    return stage


def run_stage(name: str, stage_dir: Path, run: Any, stage_cfg: DictConfig) -> dict[str, Any]:
    done = completed(stage_dir)
    if done is not None:
        log.info("stage %s: complete in %s, not redone", name, stage_dir)
        return done
    log.info("stage %s -> %s", name, stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    return run(stage_cfg)


def run_lab(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    check_train_config(cfg)
    lab_dir = Path(cfg.paths.output_dir)
    qconfigs = list(cfg.lab.qconfigs)
    for mode in ("ptq", "qat"):
        check_quant_config(with_overrides(cfg, {"quant": cfg.lab[mode]}), f"lab.{mode}")

    fp32_dir = lab_dir / "fp32"
    fp32 = run_stage("fp32", fp32_dir, fit_fp32, stage_config(cfg, fp32_dir))
    checkpoint = str(fp32_dir / fp32["checkpoint"])
    stage_results: dict[str, dict[str, Any]] = {"fp32": fp32}
    for qconfig in qconfigs:
        for mode in ("ptq", "qat"):
            name = f"{mode}_{qconfig}"
            overrides = {
                "quant": cfg.lab[mode],
                "qconfig": {"name": qconfig, "max_shift_amount": cfg.qconfig.max_shift_amount},
                "ckpt_path": checkpoint,
            }
            stage_dir = lab_dir / name
            stage_results[name] = run_stage(
                name, stage_dir, quantize, stage_config(cfg, stage_dir, **overrides)
            )

    first_quant_dir = next(key for key in stage_results if key != "fp32")
    first_quant = stage_results[first_quant_dir]
    rows = [stage_row(fp32, "fp32", fp32_latency=first_quant.get("fp32_latency"))]
    rows += [stage_row(results, key) for key, results in stage_results.items() if key != "fp32"]
    notes = [
        f"FP32 CPU figures measured in {first_quant_dir}/, side by side "
        "with its int8 model; latency is the median of repeated forward passes.",
        f"Wall time of this lab run: {time.perf_counter() - started:.0f} s (stages already "
        "complete are not rerun and not counted).",
    ]
    write_lab_report(lab_dir, rows, stage_results, notes)
    clear_failure(lab_dir)
    return {"rows": rows}
