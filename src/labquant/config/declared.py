"""A setting that no config declares, caught on the command line before Hydra runs.

Hydra answers `optimizer.lrr=0.1` with seven lines ending in "To append to your config use
+optimizer.lrr=0.1", and following that advice starts a run that dies in Lightning's setup. Here
the config is composed first (with the command line's group choices only) and every `key=value`
or `+key=value` must name a declared setting; the error names the closest one. In a group that
builds a `_target_` (model, optimizer, trainer, callbacks, ...) the target's own arguments count
as declared, so every real argument stays reachable: `trainer.gradient_clip_val=1` is handed to
Hydra as `++trainer.gradient_clip_val=1`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig

from labquant.config.paths import CONF_DIR
from labquant.config.targets import target_arguments
from labquant.errors import ConfigError


def _split_command_line(args: Sequence[str]) -> tuple[list[str], str | None] | None:
    """(overrides, --config-name) as Hydra's own argument parser reads them; None when it
    cannot (Hydra then reports the problem itself)."""
    try:
        parsed, unknown = get_args_parser().parse_known_args(list(args))
    except SystemExit:
        return None
    overrides = [*parsed.overrides, *(a for a in unknown if not a.startswith("-"))]
    return overrides, parsed.config_name


def _is_group(override: Override, conf_dir: Path) -> bool:
    key = override.key_or_group
    return key.startswith("hydra") or (conf_dir / key).is_dir()


def target_parameters(target: str) -> set[str] | None:
    """The keyword arguments `_target_` accepts; None when it takes any (**kwargs all the way
    up) or cannot be inspected. The schema checks a composed group against the same arguments
    (config/targets.py), so a key accepted here is one the schema knows to check."""
    arguments = target_arguments(target)
    return None if arguments is None else set(arguments)


def _line(override: Override, choice: str) -> str:
    """A group override with one choice of its sweep (`model=small,resnet18` -> `model=small`)."""
    prefix = "++" if override.is_force_add() else "+" if override.is_add() else ""
    package = f"@{override.package}" if override.package else ""
    return f"{prefix}{override.key_or_group}{package}={choice}"


def _choices(groups: list[Override]) -> Iterator[list[str]]:
    """Group selections to compose: each sweep's choices one at a time, the rest at their first."""
    options = [
        [_line(o, c) for c in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for o in groups
    ]
    base = [choices[0] for choices in options]
    yield base
    for i, choices in enumerate(options):
        for choice in choices[1:]:
            yield [*base[:i], choice, *base[i + 1 :]]


def _compose(config_name: str, group_lines: list[str], conf_dir: Path) -> DictConfig | None:
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir)):
            return compose(config_name=config_name, overrides=group_lines)
    except HydraException:
        return None  # a bad group choice or experiment: Hydra and check_group_overrides say so


def _deepest(cfg: DictConfig, parts: list[str]) -> tuple[Any, int]:
    """The deepest existing node on the dotted path, and how many parts it covers."""
    node: Any = cfg
    for depth, part in enumerate(parts):
        # _get_node, not `in`: `in` is False for a declared but missing (???) value
        child = (
            node._get_node(part, validate_access=False) if isinstance(node, DictConfig) else None
        )
        if child is None:
            return node, depth
        node = child
    return node, len(parts)


def _declared(cfg: DictConfig, key: str) -> tuple[bool, list[str]]:
    """Whether `key` is a setting of `cfg` (or an argument of the `_target_` it sits under),
    and the declared names beside it (dotted) for the suggestion."""
    parts = key.split(".")
    node, depth = _deepest(cfg, parts)
    if depth == len(parts):
        return True, []
    prefix = "".join(f"{p}." for p in parts[:depth])
    siblings = [str(k) for k in node] if isinstance(node, DictConfig) else []
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    arguments = target_parameters(str(target)) if target else set()
    if target and depth == len(parts) - 1 and (arguments is None or parts[-1] in arguments):
        return True, []
    names = sorted({*siblings, *(arguments or ())} - {"_target_", "_partial_"})
    return False, [f"{prefix}{name}" for name in names]


def _refusal(key: str, nearby: list[str]) -> ConfigError:
    """The one line for an undeclared key: the closest declared name beside it (compared by
    the last part: a shared `data.` prefix would make any two keys look alike)."""
    last = {name.rpartition(".")[2]: name for name in nearby}
    close = difflib.get_close_matches(key.rpartition(".")[2], list(last), n=1, cutoff=0.6)
    if close:
        return ConfigError(f"{key} is not a setting; did you mean {last[close[0]]}?")
    shown = ", ".join(nearby[:12]) + (", ..." if len(nearby) > 12 else "")
    where = f"; the settings there are: {shown}" if nearby else ""
    return ConfigError(f"{key} is not a setting{where} (see --cfg job)")


def check_declared_keys(
    args: Sequence[str], config_name: str, conf_dir: Path = CONF_DIR
) -> list[str]:
    """Raise ConfigError for the first `key=value` / `+key=value` that names no setting of the
    composed config; return `args` with target arguments missing from the YAML as `++key`."""
    split = _split_command_line(args)
    if split is None:
        return list(args)
    lines, named_config = split
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except HydraException:
        return list(args)  # Hydra reports a malformed override itself
    # Group choices, and new objects (`+callbacks.name._target_=...`): their arguments are then
    # checked against the target they build.
    groups = [
        o
        for o in overrides
        if _is_group(o, conf_dir) or (o.is_add() and o.key_or_group.endswith("._target_"))
    ]
    composed = [
        cfg
        for group_lines in _choices(groups)
        if (cfg := _compose(named_config or config_name, group_lines, conf_dir)) is not None
    ]
    if not composed:
        return list(args)
    rewritten = dict.fromkeys(args, "")
    for override in overrides:
        if _is_group(override, conf_dir) or override.is_delete() or override.is_force_add():
            continue
        key = override.key_or_group
        for cfg in composed:  # every job of a sweep over group choices gets the override
            declared, nearby = _declared(cfg, key)
            if not declared:
                raise _refusal(key, nearby)
        parts = key.split(".")
        exists = all(_deepest(cfg, parts)[1] == len(parts) for cfg in composed)
        if not exists and not override.is_add():
            rewritten[override.input_line] = f"++{override.input_line}"
    return [rewritten.get(arg) or arg for arg in args]
