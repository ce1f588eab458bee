"""`labquant-lab`: FP32 -> PTQ -> QAT in one folder, then the comparison report.

Each stage lives in its own subfolder with its own results.json; a stage that is complete with
the same settings is not redone, so an interrupted lab is finished by running it again there. A
finished stage with other settings is the one-line error naming the first of them, or, with
overwrite=true, redone together with every stage after it (their inputs change with it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from labquant.config.groups import is_option_file, load_app_defaults, load_group_option
from labquant.config.instantiate import instantiate
from labquant.config.schema import validate_settings
from labquant.errors import ConfigError
from labquant.quant.backend import QuantBackend, Quantizer, exports_integers
from labquant.quant.layers import quantizable_layers
from labquant.quant.qconfigs import QConfigSpec
from labquant.reports.artifacts import completed_results, read_json
from labquant.reports.rebuild import with_export, write_lab
from labquant.run_lock import run_folder_lock
from labquant.tasks.checks import check_train_checkpoint
from labquant.tasks.export import export
from labquant.tasks.fingerprint import reuse_complete_run, run_settings
from labquant.tasks.quantize import quantize
from labquant.tasks.runner import clear_run, is_global_zero, whole_or_redo
from labquant.tasks.train import fit_fp32

log = logging.getLogger(__name__)


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


def stage_config(
    cfg: DictConfig, stage_dir: Path, qconfig: DictConfig | None = None, **overrides: Any
) -> DictConfig:
    """The stage's config; `qconfig` replaces the composed one whole (another factory may take
    other arguments, so it is not merged)."""
    stage = with_overrides(cfg, overrides)
    with open_dict(stage):
        stage.paths.output_dir = str(stage_dir)
        if qconfig is not None:
            stage.qconfig = qconfig
    return stage


def qconfig_entry(cfg: DictConfig, entry: str) -> tuple[str, DictConfig]:
    """(stage name part, qconfig config) of a `lab.qconfigs` entry: a packaged option by name,
    or a qconfig file (labquant-sensitivity's proposal), named by its `name:`."""
    option = qconfig_option(cfg, entry)
    return (str(option.get("name") or Path(entry).stem) if is_option_file(entry) else entry), option


def qconfig_option(cfg: DictConfig, name: str) -> DictConfig:
    """The qconfig config of one `lab.qconfigs` entry: the composed `qconfig` (with the user's
    overrides) when it is that one, else its YAML, with `qconfig.max_shift_amount` carried over
    to every qconfig that has a shift limit."""
    if cfg.qconfig.get("name") == name:
        return cfg.qconfig
    option = load_group_option("qconfig", name, setting="lab.qconfigs")
    shift = cfg.qconfig.get("max_shift_amount")
    spec: QConfigSpec = instantiate(option, f"lab.qconfigs={name}")
    if shift is not None and spec.scheme.max_shift_amount is not None:  # a shift-limited scheme
        option.max_shift_amount = shift
    return option


@dataclass
class LabBackend:
    """One `lab.backends` entry: its config (what a stage's `backend` group becomes) and the
    backend it builds (its modes, stage folder suffix, optional integer export)."""

    name: str
    cfg: DictConfig
    backend: QuantBackend


def option_name(entry: str) -> str:
    """The backend option a `lab.backends` entry names: `pt2e`, or a file's stem
    (`<folder>/backend/mine.yaml`: mine)."""
    return Path(entry).stem if is_option_file(entry) else str(entry)


def composed_backend_name(cfg: DictConfig) -> str:
    """The option name of the composed `backend` group: its `name:` (every
    conf/backend/<option>.yaml carries one, equal to its file name), else, for a backend whose
    YAML has none, the name its class declares."""
    name = cfg.backend.get("name")
    if name is None:
        name = instantiate(cfg.backend, "backend").name
    return str(name)


def lab_backend(cfg: DictConfig, name: str) -> LabBackend:
    """The backend config of one `lab.backends` entry.

    An entry is its option name (`pt2e`, `pt2e_fused`: conf/backend/<name>.yaml). The composed
    `backend` group, with the user's overrides (e.g. backend.compile=false), replaces the
    entry's YAML only when it is that same option: when its name (`backend.name`, see
    composed_backend_name) is the entry's. The class is no identity: pt2e and pt2e_fused share
    one, and `backend=pt2e lab.backends=[pt2e,pt2e_fused]` runs the composed pt2e and
    pt2e_fused from its own YAML. The backend built must carry that name too (its stage folders
    and results' `backend`), else the entry is a one-line error."""
    option_cfg = load_group_option("backend", name, setting="lab.backends")
    option = option_name(name)
    if composed_backend_name(cfg) == option:
        option_cfg = cfg.backend
    backend = instantiate(option_cfg, f"lab.backends={name}")
    if backend.name != option:
        raise ConfigError(
            f"lab.backends={name}: that backend is named {backend.name!r}, not {option!r}; a "
            f"backend's name: is its option's (file) name, e.g. name: {option} in its YAML"
        )
    return LabBackend(name, option_cfg, backend)


def stage_name(mode: str, qconfig: str, backend: QuantBackend) -> str:
    """`<mode>_<qconfig><suffix>`: `ptq_pot` (eager: the lab's folders before PT2E),
    `ptq_pot_pt2e`; each backend declares its suffix."""
    return f"{mode}_{qconfig}{backend.stage_suffix}"


def reuse_stage(name: str, stage_dir: Path, kind: str, stage_cfg: DictConfig) -> dict | None:
    """The stage's complete results when they were computed with these settings (its model
    files checked whole), None when it must run; other settings without overwrite=true are the
    one-line error naming the first of them."""
    overwrite = bool(stage_cfg.get("overwrite", False))
    done = reuse_complete_run(
        stage_dir,
        run_settings(stage_cfg, kind),
        overwrite,
        what=f"stage {name} ({stage_dir})",
        redo="redo it and the stages after it",
        # a stage's quant group is the lab's lab.ptq / lab.qat: name what the user typed
        shown_as={"quant.": f"lab.{stage_cfg.quant.mode}."} if kind == "quantize" else None,
    )
    if done is not None and not whole_or_redo(stage_dir, done, f"stage {name}", overwrite):
        return None
    return done


def run_stage(
    name: str, stage_dir: Path, run: Any, stage_cfg: DictConfig, kind: str
) -> dict[str, Any]:
    """Reuse the stage when it is complete with these settings, else (re)do it in its folder."""
    with run_folder_lock(stage_dir, enabled=is_global_zero()):
        done = reuse_stage(name, stage_dir, kind, stage_cfg)
        if done is not None:
            log.info("stage %s: complete in %s with these settings, not redone", name, stage_dir)
            return done
        log.info("stage %s -> %s", name, stage_dir)
        if is_global_zero() and completed_results(stage_dir) is not None:
            clear_run(stage_dir)  # complete with other settings or damaged, and overwrite=true
        stage_dir.mkdir(parents=True, exist_ok=True)
        if is_global_zero():  # the stage's config, where a standalone run's Hydra keeps it:
            # what labquant-export (stage_dir=<lab>/ptq_pot) rebuilds the stage's network from
            (stage_dir / ".hydra").mkdir(exist_ok=True)
            OmegaConf.save(stage_cfg, stage_dir / ".hydra" / "config.yaml")
        return run(stage_cfg)


def export_config(cfg: DictConfig, lab_dir: Path, name: str) -> DictConfig:
    """labquant-export's config for one stage: conf/export.yaml's values, then the lab's."""
    export_cfg = load_app_defaults("export")
    stage_dir = lab_dir / name
    lab_values = {
        "stage_dir": str(stage_dir),
        "golden": cfg.lab.golden,
        "overwrite": bool(cfg.get("overwrite", False)),
        "paths": {"output_dir": str(stage_dir / "export")},
    }
    return OmegaConf.merge(export_cfg, lab_values)


def exported_stages(stage_results: dict[str, Any], backends: dict[str, LabBackend]) -> list[str]:
    """The stages `lab.export=true` exports: those whose scheme the integer program holds
    (results.json's `integer_program`), of a backend that has an integer export."""
    exporters = {b.backend.name for b in backends.values() if exports_integers(b.backend)}
    names = []
    for name, results in stage_results.items():
        if name == "fp32" or not results.get("integer_program"):
            continue  # its scheme has no integer program (float scales)
        if results.get("backend") not in exporters:
            log.info("stage %s: backend=%s has no integer export", name, results.get("backend"))
            continue
        names.append(name)
    return names


def run_exports(
    cfg: DictConfig, lab_dir: Path, stage_results: dict[str, Any], backends: dict[str, LabBackend]
) -> None:
    """`lab.export=true`: labquant-export on every power-of-two stage, into <stage>/export/."""
    for name in exported_stages(stage_results, backends):
        export_cfg = export_config(cfg, lab_dir, name)
        run_stage(f"{name}/export", Path(export_cfg.paths.output_dir), export, export_cfg, "export")


def stage_modes(backend: Quantizer, spec: QConfigSpec) -> list[str]:
    """The modes a lab runs for one qconfig on one backend: the backend's, less those the
    qconfig cannot run (learned exponents: QAT only)."""
    return [mode for mode in backend.modes if mode in spec.modes]


def quant_stages(
    cfg: DictConfig,
    lab_dir: Path,
    qconfigs: dict[str, DictConfig],
    backends: dict[str, LabBackend],
    checkpoint: str,
) -> Iterator[tuple[str, Path, DictConfig]]:
    """(name, folder, config) of every stage of each backend's modes, in the order the lab runs
    them."""
    specs = {name: instantiate(option, f"lab.qconfigs={name}") for name, option in qconfigs.items()}
    for entry in backends.values():
        for qconfig, option in qconfigs.items():
            for mode in stage_modes(entry.backend, specs[qconfig]):
                if mode == "ptq" and not is_global_zero():
                    continue  # one-process work: the other DDP ranks wait for the next DDP stage
                name = stage_name(mode, qconfig, entry.backend)
                overrides = {"quant": cfg.lab[mode], "ckpt_path": checkpoint}
                stage = stage_config(cfg, lab_dir / name, qconfig=option, **overrides)
                with open_dict(stage):
                    stage.backend = entry.cfg
                yield name, lab_dir / name, stage


def check_reruns(
    cfg: DictConfig,
    lab_dir: Path,
    qconfigs: dict[str, DictConfig],
    backends: dict[str, LabBackend],
) -> None:
    """Before any work: every finished stage this lab would reuse must have been computed with
    these settings (else the one-line error, unless overwrite=true redoes it). Stages after an
    FP32 stage that is still to be trained are compared when they are reached."""
    fp32_dir = lab_dir / "fp32"
    fp32 = reuse_stage("fp32", fp32_dir, "fp32", stage_config(cfg, fp32_dir))
    if fp32 is None:
        return
    checkpoint = str(fp32_dir / fp32["checkpoint"])
    reused: dict[str, Any] = {"fp32": fp32}
    for name, stage_dir, stage in quant_stages(cfg, lab_dir, qconfigs, backends, checkpoint):
        done = reuse_stage(name, stage_dir, "quantize", stage)
        if done is not None:
            reused[name] = done
    if cfg.lab.get("export"):
        for name in exported_stages(reused, backends):
            export_cfg = export_config(cfg, lab_dir, name)
            reuse_stage(f"{name}/export", Path(export_cfg.paths.output_dir), "export", export_cfg)


def run_lab(cfg: DictConfig) -> dict[str, Any]:
    validate_settings(cfg)
    check_train_checkpoint(cfg)
    lab_dir = Path(cfg.paths.output_dir)
    qconfigs = dict(qconfig_entry(cfg, entry) for entry in cfg.lab.qconfigs)
    backends = {name: lab_backend(cfg, name) for name in cfg.lab.backends}
    layers = quantizable_layers(instantiate(cfg.model, "model"))
    for name, option in qconfigs.items():
        spec = instantiate(option, f"lab.qconfigs={name}")  # a bad one fails now, not after FP32
        spec.check_layers(layers)
        for entry in backends.values():
            for mode in stage_modes(entry.backend, spec):
                entry.backend.check(spec, mode)
    check_reruns(cfg, lab_dir, qconfigs, backends)

    fp32_dir = lab_dir / "fp32"
    fp32 = run_stage("fp32", fp32_dir, fit_fp32, stage_config(cfg, fp32_dir), "fp32")
    checkpoint = str(fp32_dir / fp32["checkpoint"])
    stage_results: dict[str, dict[str, Any]] = {"fp32": fp32}
    for name, stage_dir, stage in quant_stages(cfg, lab_dir, qconfigs, backends, checkpoint):
        stage_results[name] = run_stage(name, stage_dir, quantize, stage, "quantize")

    if not is_global_zero():  # under DDP, rank 0 alone exports and reports
        return {"rows": []}
    if cfg.lab.get("export"):
        run_exports(cfg, lab_dir, stage_results, backends)
    # Rendered from the stages' results.json files only, as `labquant-report` rebuilds it.
    read = {key: read_json(lab_dir / key / "results.json") for key in stage_results}
    write_lab(lab_dir, {key: with_export(lab_dir / key, r) for key, r in read.items()})
    clear_failure(lab_dir)
    return read_json(lab_dir / "report.json")
