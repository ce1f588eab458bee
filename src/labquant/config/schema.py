"""Every user-facing setting's type and range, checked before any work starts: the entry point.

`validate_settings(cfg)` checks a composed app config against the settings of the app its
`task_name` names and raises ConfigError with one line for the first error:
`<setting>=<value as written> <what is wrong>; e.g. <setting>=<example>`. The parts, each in
its own module:

- config/fields.py: the declared types and ranges, `setting()` (example, rule), `Settings`;
- config/group_models.py: one model per config group (data, model, optimizer, qconfig, ...);
- config/targets.py: a group checked against the signature of the `_target_` it names;
- config/bench_settings.py: labquant-bench's sections;
- config/apps.py: each app's settings and the explicit `task_name` -> settings table;
- config/messages.py: the one-line error and values shown as written on the command line.

The names other modules import from here (format_value, check_warmup_epochs, the app
settings) stay importable from this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue
from pydantic import ValidationError

from labquant.config.apps import (
    APPS,
    ExportSettings,
    LabSettings,
    QuantizeSettings,
    SensitivitySettings,
    TrainSettings,
    app_settings,
)
from labquant.config.bench_settings import BenchSettings
from labquant.config.fields import Settings, check_warmup_epochs
from labquant.config.messages import declared_extra, format_value, locate, lookup, settings_error
from labquant.errors import ConfigError

__all__ = [
    "APPS",
    "BenchSettings",
    "ExportSettings",
    "LabSettings",
    "QuantizeSettings",
    "SensitivitySettings",
    "TrainSettings",
    "app_settings",
    "check_warmup_epochs",
    "format_value",
    "settings_error",
    "validate_settings",
]


def _plain(node: Any, path: str, unresolved: dict[str, Exception]) -> Any:
    """`OmegaConf.to_container(node, resolve=True)` less the `hydra` key and each value that
    cannot be resolved (noted in `unresolved`), so a wrong setting it refers to is named first."""
    if not isinstance(node, DictConfig | ListConfig):
        return node
    keys: Iterable[Any] = node.keys() if isinstance(node, DictConfig) else range(len(node))
    plain: dict[Any, Any] = {}
    for key in keys:
        name = f"{path}.{key}" if path else str(key)
        if name == "hydra":
            continue
        try:
            plain[key] = _plain(node[key], name, unresolved)
        except (InterpolationResolutionError, MissingMandatoryValue) as error:
            unresolved[name] = error
    return plain if isinstance(node, DictConfig) else list(plain.values())


def _check_model(model: type[Settings], data: dict[str, Any], raw: Any) -> None:
    """The first schema error as one line; an interpolated value is blamed on the setting it
    refers to first (that one is the user's)."""
    try:
        model.model_validate(data)
    except ValidationError as failure:

        def interpolated(error: Any) -> bool:
            path = locate(data, tuple(error["loc"]), error["type"] == "missing")[0]
            return "${" in str(lookup(raw, path))

        first = sorted(failure.errors(), key=interpolated)[0]
        raise ConfigError(settings_error(first, data, model)) from None


def _check_unresolved(model: type[Settings], unresolved: dict[str, Exception], raw: Any) -> None:
    for name, error in unresolved.items():
        path = name.split(".")
        if isinstance(error, MissingMandatoryValue):
            example = declared_extra(model, path).get("example", "<value>")
            raise ConfigError(f"{name} is missing; e.g. {name}={format_value(example)}")
        if "HydraConfig was not set" not in str(error):
            why = str(error).splitlines()[0]
            value = format_value(lookup(raw, path))
            raise ConfigError(f"{name}={value} cannot be resolved ({why}); check what it refers to")


def validate_settings(cfg: DictConfig, app: str | None = None) -> None:
    """Check a composed app config against the settings of `app` (default: the config's own
    `task_name`, looked up in config/apps.py's APPS); raise ConfigError with one line for the
    first error. `${hydra:...}` values are left unchecked where no Hydra run is set up (tests,
    the compose API)."""
    unresolved: dict[str, Exception] = {}
    data = _plain(cfg, "", unresolved)
    raw = OmegaConf.to_container(cfg, resolve=False)
    model = app_settings(app if app is not None else data.get("task_name"))
    _check_model(model, data, raw)
    _check_unresolved(model, unresolved, raw)
