"""`labquant-export`'s pipeline: a power-of-two int8 stage folder -> integer_model.npz (the
integer program), bitexact.json (the integer-only reference vs torch's int8 model on the test
set), golden vectors."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from labquant.config.instantiate import instantiate
from labquant.config.schema import validate_settings
from labquant.data.augment import normalize
from labquant.errors import ConfigError
from labquant.hw import reference
from labquant.hw.golden import write_golden
from labquant.hw.program import check_program
from labquant.machine import cpu, has_vnni
from labquant.quant.backend import exports_integers
from labquant.quant.qconfigs import QConfigSpec
from labquant.reports.artifacts import completed_results, read_json, write_json
from labquant.tasks.checks import check_stage_files, stage_files
from labquant.tasks.fingerprint import settings_record

FIX_STAGE = "pass stage_dir=<lab>/ptq_pot (a complete PTQ or QAT stage of a pot qconfig)"
BATCH = 128


def load_stage(cfg: DictConfig) -> tuple[Path, dict[str, Any], DictConfig]:
    """The stage folder's results and config, refused in one line when it is not a complete
    PTQ / QAT stage."""
    stage_dir = Path(cfg.stage_dir)
    saved = completed_results(stage_dir)
    config_path = stage_dir / ".hydra" / "config.yaml"
    if saved is None or not config_path.is_file():
        raise ConfigError(
            f"stage_dir={cfg.stage_dir} holds no complete quantize stage; {FIX_STAGE}"
        )
    if saved.get("stage") not in ("ptq", "qat"):
        raise ConfigError(
            f"stage_dir={cfg.stage_dir} is an FP32 stage, not an int8 one (stage "
            f"{saved.get('stage')}); {FIX_STAGE}"
        )
    stage_cfg = OmegaConf.load(config_path)
    if cfg.get("data_root"):
        with open_dict(stage_cfg):
            stage_cfg.data.root = cfg.data_root
    return stage_dir, saved, stage_cfg


def compare(
    exported: Any, images: np.ndarray, labels: np.ndarray, rounding: str
) -> tuple[dict[str, Any], reference.RunResult]:
    """bitexact.json's figures: the reference (hardware semantics) vs torch's int8 model, image
    by image and op by op, and vs each deployed runtime of the program on its logits."""
    program = exported.program
    ref = reference.run_batched(program, images, rounding, count_saturation=True, batch=BATCH)
    names = [op["output"] for op in program.ops]
    max_diff, differing, theirs, runtime_logits = torch_vs_reference(exported, images, ref, names)
    ours = ref.logits.astype(np.int64)
    identical = (theirs == ours).all(axis=1)
    saturated = sum(ref.saturated.values())  # per image: outputs hit by a saturating pair
    clean = saturated == 0
    runtimes = runtime_figures(runtime_logits, ours, clean, labels)
    n = len(images)
    figures = {
        "images": n,
        "identical_images": int(identical.sum()),
        "top1_agreement": round(100.0 * float((theirs.argmax(1) == ours.argmax(1)).mean()), 3),
        "saturated_outputs": int(saturated.sum()),
        "saturated_images": int((~clean).sum()),
        "identical_images_without_saturation": int(identical[clean].sum()),
        "images_without_saturation": int(clean.sum()),
        "hw_test_acc": round(100.0 * float((ours.argmax(1) == labels).mean()), 2),
        "torch_test_acc": round(100.0 * float((theirs.argmax(1) == labels).mean()), 2),
        "rounding": rounding,
        "avx2_emulation": avx2_emulation(program, images, rounding, theirs),
        "runtimes": runtimes,
        "layers": {
            name: {
                "max_code_diff": max_diff[name],
                "differing_codes": differing[name],
                "saturated_outputs": int(ref.saturated[name].sum()) if name in ref.saturated else 0,
            }
            for name in names
        },
    }
    return figures, ref


def torch_vs_reference(
    exported: Any, images: np.ndarray, ref: reference.RunResult, names: list[str]
) -> tuple[dict[str, int], dict[str, int], np.ndarray, dict[str, list[np.ndarray]]]:
    """torch's int8 model batch by batch against the reference's codes: per op the largest code
    difference and how many codes differ, torch's logits (int64), and each deployed runtime's
    logits batch by batch. One pass, so every batch runs through torch once."""
    max_diff = dict.fromkeys(names, 0)
    differing = dict.fromkeys(names, 0)
    torch_logits: list[np.ndarray] = []
    runtime_logits: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), BATCH):
        batch = torch.from_numpy(images[start : start + BATCH])
        codes = exported.layer_codes(batch)
        for name in names:
            ours = ref.codes[name][start : start + BATCH].astype(np.int64)
            diff = np.abs(ours - codes[name].astype(np.int64))
            max_diff[name] = max(max_diff[name], int(diff.max(initial=0)))
            differing[name] += int((diff > 0).sum())
        torch_logits.append(codes[exported.program.output])
        for runtime, logits in exported.runtime_codes(batch).items():
            runtime_logits.setdefault(runtime, []).append(logits)
    return max_diff, differing, np.concatenate(torch_logits).astype(np.int64), runtime_logits


def runtime_figures(
    runtime_logits: dict[str, list[np.ndarray]],
    ours: np.ndarray,
    clean: np.ndarray,
    labels: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """The same program in its deployed runtimes (pt2e: Inductor, ONNX Runtime) against the
    reference's logits `ours`; `clean` marks the images no saturating pair touched."""
    runtimes = {}
    for runtime, parts in runtime_logits.items():
        deployed = np.concatenate(parts).astype(np.int64)
        same = (deployed == ours).all(axis=1)
        runtimes[runtime] = {
            "identical_images": int(same.sum()),
            "identical_images_without_saturation": int(same[clean].sum()),
            "top1_agreement": round(
                100.0 * float((deployed.argmax(1) == ours.argmax(1)).mean()), 3
            ),
            "test_acc": round(100.0 * float((deployed.argmax(1) == labels).mean()), 2),
        }
    return runtimes


def avx2_emulation(
    program: Any, images: np.ndarray, rounding: str, torch_logits: np.ndarray
) -> dict[str, Any] | None:
    """The reference run again with every u8 x s8 pair sum clipped to int16, as an AVX2 CPU
    without VNNI computes it inside torch's x86 / fbgemm kernels: when that matches torch code
    for code, pair saturation explains every difference between torch and the hardware. None
    on a CPU with VNNI / AMX (int32 accumulation: there is nothing to emulate)."""
    if has_vnni():
        return None
    emulated = reference.run_batched(program, images, rounding, batch=BATCH, emulate_avx2=True)
    ours = emulated.logits.astype(np.int64)
    return {
        "identical_images": int((ours == torch_logits).all(axis=1).sum()),
        "top1_agreement": round(
            100.0 * float((ours.argmax(1) == torch_logits.argmax(1)).mean()), 3
        ),
    }


def shifts_summary(program: Any) -> dict[str, Any]:
    """The requantization shifts of the program (per-channel ones counted channel by channel)."""
    ops = [op for op in program.ops if "shift" in op]
    shifts = [
        s for op in ops for s in (op["shift"] if isinstance(op["shift"], list) else [op["shift"]])
    ]
    return {
        "requantizations": len(ops),
        "per_channel_shift_ops": [op["name"] for op in ops if isinstance(op["shift"], list)],
        "min_shift": min(shifts),
        "max_shift": max(shifts),
        "left_shifts": [op["name"] for op in program.ops if op.get("left_shift")],
        "avgpool_windows_not_power_of_two": [
            op["name"] for op in program.ops if op.get("window_is_power_of_two") is False
        ],
    }


def export(cfg: DictConfig) -> dict[str, Any]:
    """Refuse a stage that cannot be exported, then write the integer program, its bit-exact
    comparison on the test set, golden vectors and results.json; return results.json's dict."""
    started = time.perf_counter()
    validate_settings(cfg)
    stage_dir, saved, stage_cfg = load_stage(cfg)
    qconfig: QConfigSpec = instantiate(stage_cfg.qconfig, "qconfig")
    if not qconfig.scheme.integer_program:
        raise ConfigError(
            f"stage_dir={cfg.stage_dir} was quantized with qconfig={qconfig.name}, not a "
            f"power-of-two qconfig (its requantization needs a multiplier); {FIX_STAGE}"
        )
    backend = exporting_backend(cfg, stage_dir, saved, stage_cfg)
    images, labels = load_test_images(cfg, stage_cfg)
    net = instantiate(stage_cfg.model, "model")
    exported = backend.integer_export(net, qconfig, stage_dir, saved, tuple(images.shape[2:]))
    problems = check_program(exported.program)
    if problems:
        raise ConfigError(f"stage_dir={cfg.stage_dir}: {problems[0]}; {FIX_STAGE}")

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exported.program.save(out_dir / "integer_model.npz")
    summary = {
        "stage": str(stage_dir),
        "qconfig": qconfig.name,
        "activations": qconfig.activations,
        "snap_bias": qconfig.snap_bias,
        **qconfig.describe(),
        "shifts": shifts_summary(exported.program),
        "layers": exported.program.summary(),
    }
    write_json(out_dir / "integer_model.json", summary)
    figures, _ = compare(exported, images, labels, cfg.rounding)
    figures = {"isa": cpu(), "int8_engine": exported.engine, **figures}
    write_json(out_dir / "bitexact.json", figures)
    if cfg.golden:
        n = min(cfg.golden, len(images))
        one = reference.run(exported.program, images[:n], cfg.rounding)
        write_golden(out_dir / "golden", exported.program, images[:n], one)
    results = {
        "status": "complete",
        "stage": str(stage_dir),
        "qconfig": qconfig.name,
        **qconfig.describe(),
        **{k: v for k, v in figures.items() if k != "layers"},
        "shifts": summary["shifts"],
        "golden": cfg.golden,
        "wall_time_s": round(time.perf_counter() - started, 2),
    }
    results.update(settings_record(cfg, "export"))  # what a rerun must match to reuse it
    write_json(out_dir / "results.json", results)
    return results


def exporting_backend(
    cfg: DictConfig, stage_dir: Path, saved: dict[str, Any], stage_cfg: DictConfig
) -> Any:
    """The stage's backend, refused when it has no integer export or the stage's int8 files are
    missing or incomplete: checked whole, before any work."""
    backend = instantiate(stage_cfg.backend, "backend")
    if not exports_integers(backend):
        raise ConfigError(
            f"stage_dir={cfg.stage_dir}: backend={backend.name} has no integer export; "
            "quantize with backend=eager or backend=pt2e"
        )
    if not stage_files(stage_dir, saved):
        raise ConfigError(
            f"stage_dir={cfg.stage_dir}: its results.json names no int8 file; {FIX_STAGE}"
        )
    what, fix = f"stage_dir={cfg.stage_dir}", f"redo that stage, or {FIX_STAGE}"
    check_stage_files(stage_dir, saved, what, fix)  # whole files, before any work
    return backend


def load_test_images(cfg: DictConfig, stage_cfg: DictConfig) -> tuple[np.ndarray, np.ndarray]:
    """The stage's test set (its first `images` when set), normalized as the network sees it,
    and its labels: what the reference and torch are compared on."""
    dm = instantiate(stage_cfg.data, "data")
    dm.prepare_data()
    dm.setup("fit")
    x_test, y_test = dm.arrays("test")
    if cfg.images is not None:
        x_test, y_test = x_test[: cfg.images], y_test[: cfg.images]
    return normalize(x_test.cpu()).numpy(), y_test.cpu().numpy()


def stage_export_summary(stage_dir: Path) -> dict[str, Any] | None:
    """bitexact.json of a stage's export, for the lab report (None when it was not run)."""
    path = stage_dir / "export" / "bitexact.json"
    return read_json(path) if path.is_file() else None
