"""A result belongs to the settings it was computed with: each complete run records them in its
results.json (`settings`, flat dotted keys, and their sha256 `fingerprint`), and a finished run
or lab stage is reused only when the settings of the new run are equal.

What is recorded is the resolved config less the keys that cannot change a result (where files
go, how progress is shown and logged, the run controls), decided here and nowhere else. A
setting that names an input file is recorded by that file's contents, so a moved folder is the
same result and a retrained checkpoint at the same path is not.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from labquant.config.schema import format_value
from labquant.errors import ConfigError
from labquant.reports.artifacts import completed_results

# Settings that cannot change a result. Each is a dotted key; every key below it is left out.
NOT_RESULT_SETTINGS = (
    "hydra",
    "paths",  # the run folder itself: the same run may be moved or reached by another path
    "logger",  # TensorBoard / CSV options
    "task_name",
    "overwrite",
    "resume",  # a resumed run ends equal to an uninterrupted one (tests/reliability)
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "callbacks.progress_bar",
    "callbacks.lr_monitor",
    "callbacks.epoch_timer",
    "callbacks.model_checkpoint.dirpath",
    "callbacks.last_checkpoint.dirpath",
    "data.download",
    "data.pin_memory",
)
# Groups a stage does not read: the lab's plan (`lab.*`) never changes one stage's result, and
# FP32 training does not read the quantization groups a lab composes beside it.
NOT_READ_BY_STAGE = {
    "fp32": ("lab", "quant", "qconfig", "backend"),
    "quantize": ("lab",),
    "sensitivity": ("lab",),
    "export": (),
}
# Settings that name an input: recorded by its contents (a file's sha256, a stage folder's
# results.json sha256: a stage that was redone is a new input).
INPUT_FILES = {"ckpt_path": "{}", "stage_dir": "{}/results.json"}
# The stage whose record each app's run writes (None: the app records no results.json).
STAGE_OF_TASK = {
    "train": "fp32",
    "quantize": "quantize",
    "export": "export",
    "sensitivity": "sensitivity",
}


def _left_out(key: str, stage: str) -> bool:
    skipped = (*NOT_RESULT_SETTINGS, *NOT_READ_BY_STAGE[stage])
    return any(key == s or key.startswith(f"{s}.") for s in skipped)


def file_digest(path: Path) -> str:
    """sha256 of a file's contents, read once per version of the file (a lab compares every
    stage before work, again when it reaches it, and records it at the end)."""
    stat = Path(path).stat()
    return _digest(str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()[:16]}"


def _input_value(key: str, value: Any) -> Any:
    """An input setting's recorded value: its contents' digest where the file exists."""
    if value is None:
        return None
    path = Path(INPUT_FILES[key].format(value))
    return file_digest(path) if path.is_file() else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def run_settings(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """The settings that determine `stage`'s result, as {dotted key: value} in config order.
    Left-out keys are never resolved (a `${hydra:...}` path needs no Hydra run here)."""
    flat: dict[str, Any] = {}

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node:
            name = f"{prefix}{key}"
            if _left_out(name, stage):
                continue
            value = node[key]
            if isinstance(value, DictConfig) and len(value) > 0:
                walk(value, f"{name}.")
            elif name in INPUT_FILES:
                flat[name] = _input_value(name, value)
            else:
                flat[name] = _plain(value)

    walk(cfg, "")
    return flat


def fingerprint(settings: dict[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def settings_record(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """What a complete results.json carries about its settings."""
    settings = run_settings(cfg, stage)
    return {"fingerprint": fingerprint(settings), "settings": settings}


def _shown(settings: dict[str, Any], key: str) -> str:
    return format_value(settings[key]) if key in settings else "(not set)"


def first_difference(
    recorded: dict[str, Any], current: dict[str, Any], shown_as: dict[str, str] | None = None
) -> str | None:
    """`model.base_width: 8 -> 12` for the first setting (in the new run's order) that
    differs, None when the two are equal. `shown_as` renames key prefixes to what the user
    typed (a lab stage's `quant.` is `lab.qat.`)."""
    # JSON round trip: what results.json holds (tuples as lists, keys as strings)
    current = json.loads(json.dumps(current, default=str))
    for key in [*current, *(k for k in recorded if k not in current)]:
        if recorded.get(key, KeyError) != current.get(key, KeyError):
            name = next(
                (
                    new + key[len(old) :]
                    for old, new in (shown_as or {}).items()
                    if key.startswith(old)
                ),
                key,
            )
            return f"{name}: {_shown(recorded, key)} -> {_shown(current, key)}"
    return None


def reuse_complete_run(
    folder: Path,
    settings: dict[str, Any],
    overwrite: bool,
    what: str,
    redo: str = "redo it",
    shown_as: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """The complete results.json in `folder` when it was computed with `settings` (the run is
    reused); None when there is nothing to reuse, or when it differs and `overwrite` says to
    redo it. A difference without `overwrite` is a ConfigError naming the first setting."""
    done = completed_results(folder)
    if done is None:
        return None
    recorded = done.get("settings")
    if not isinstance(recorded, dict):
        problem = "whose settings were not recorded (an earlier labquant made it)"
    else:
        difference = first_difference(recorded, settings, shown_as)
        if difference is None:
            return done
        problem = f"with other settings ({difference})"
    if overwrite:
        return None
    raise ConfigError(
        f"{what} holds a complete run {problem}; pass overwrite=true to {redo} with these "
        "settings, or choose another hydra.run.dir"
    )
