"""Checks of the raw command line that must run before Hydra does: an unknown config-group choice
or an unwritable run folder, which Hydra itself reports as a traceback or a multi-line report;
and the run folder a single run names, which is locked before Hydra writes into it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from labquant.config.groups import group_choices, is_option_file, option_file
from labquant.config.paths import CONF_DIR
from labquant.errors import ConfigError

SEARCHPATH = "hydra.searchpath"


def with_option_files(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """`qconfig=<folder>/qconfig/<name>.yaml` (one choice of a sweep too) becomes
    `qconfig=<name>` with `<folder>` on Hydra's search path: a file a run wrote (e.g.
    labquant-sensitivity's proposal) is then chosen as Hydra chooses any option."""
    rewritten, roots = [], []
    for override in overrides:
        key, sep, value = override.partition("=")
        group = key.lstrip("+~")
        if not sep or "(" in value or not (conf_dir / group).is_dir():
            rewritten.append(override)
            continue
        choices = []
        for choice in value.split(","):
            if is_option_file(choice):
                path = option_file(group, choice)
                roots.append(f"file://{path.parent.parent.resolve()}")
                choice = path.stem
            choices.append(choice)
        rewritten.append(f"{key}={','.join(choices)}")
    if not roots:
        return list(overrides)
    if any(o.lstrip("+").startswith(f"{SEARCHPATH}=") for o in overrides):
        raise ConfigError(
            f"{SEARCHPATH} is given beside an option file; choose the option by name "
            f"({', '.join(roots)} on {SEARCHPATH}) or drop {SEARCHPATH}"
        )
    return [*rewritten, f"{SEARCHPATH}=[{','.join(dict.fromkeys(roots))}]"]


def _searched_roots(overrides: Sequence[str]) -> list[Path]:
    """The folders a `hydra.searchpath=[file://...]` override adds (group options live there)."""
    value = _override(overrides, SEARCHPATH) or ""
    entries = value.strip("[]").split(",") if value else []
    return [Path(e.strip("'\" ")[len("file://") :]) for e in entries if "file://" in e]


def check_group_overrides(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """Refuse `model=nope` with the list of choices instead of Hydra's multi-line report.

    Sweep values (`model=a,b`) are checked one by one; sweep functions (`range(...)`) are left
    to Hydra. Options in folders on `hydra.searchpath` count as choices.
    """
    roots = _searched_roots(overrides)
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if not sep or key.startswith("hydra") or "(" in value or "[" in value:
            continue
        if not (conf_dir / key).is_dir() or value in ("null", ""):
            continue
        choices = group_choices(key, conf_dir)
        choices += [c for root in roots for c in group_choices(key, root)]
        for choice in value.split(","):
            if choice not in choices:
                raise ConfigError(
                    f"unknown {key}={choice}; choose one of: {', '.join(choices)} "
                    f"(configs in {conf_dir / key})"
                )


def _override(overrides: Sequence[str], key: str) -> str | None:
    values = [o.partition("=")[2] for o in overrides if o.lstrip("+").startswith(f"{key}=")]
    return values[-1].strip("'\"") if values else None


def _writable(folder: Path) -> str | None:
    """None if a file can be created in `folder`, else why not.

    A real probe, not os.access: root passes os.access on a chmod 555 folder (and can write
    there), while a read-only mount refuses even root.
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=".labquant-write-probe-", dir=folder)
    except OSError as error:
        return error.strerror or type(error).__name__
    os.close(fd)
    os.unlink(probe)
    return None


def check_output_dir(overrides: Sequence[str], cwd: Path | None = None) -> None:
    """Refuse a run folder that cannot be written before Hydra fails in it with a traceback.

    Probes the folder itself, or the nearest existing folder above it, which Hydra would create
    it in; interpolations (`${now:...}`) are cut off first.
    """
    multirun = any(o in ("-m", "--multirun") for o in overrides)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    value = _override(overrides, key)
    target = (value if value is not None else "multirun" if multirun else "outputs").split("${")[0]
    folder = (cwd or Path.cwd()) / (target or ".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    shown = f"{key}={value}" if value is not None else f"the default run folder ({target}/)"
    if not folder.is_dir():
        raise ConfigError(f"{shown}: {folder} is a file, not a folder; pass {key}=<folder>")
    reason = _writable(folder)
    if reason is not None:
        raise ConfigError(
            f"{shown}: cannot write to {folder} ({reason}); pass {key}=<a writable folder> "
            f"or make it writable (chmod u+w {folder})"
        )


NOT_A_RUN = ("--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion")


def single_run_dir(overrides: Sequence[str], cwd: Path | None = None) -> Path | None:
    """The folder a single run will write, when the command line names it (hydra.run.dir
    without interpolations); None for a sweep, a run into the default timestamped folder, or a
    command that only prints (`--cfg job`, `--help`)."""
    if any(o in ("-m", "--multirun", *NOT_A_RUN) for o in overrides):
        return None
    value = _override(overrides, "hydra.run.dir")
    if not value or "${" in value:
        return None
    return (cwd or Path.cwd()) / value
