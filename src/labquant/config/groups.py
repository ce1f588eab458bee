"""Options of a config group read by name (`lab.qconfigs=[x86,pot]`, the benchmark's models and
qconfigs): the same YAML files that `group=name` on the command line selects."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from labquant.config import paths
from labquant.errors import ConfigError


def group_choices(group: str, conf_dir: Path | None = None) -> list[str]:
    return sorted(p.stem for p in ((conf_dir or paths.CONF_DIR) / group).glob("*.yaml"))


def is_option_file(name: str) -> bool:
    """A choice given as a YAML file (`qconfig=runs/sens/qconfig/mine.yaml`), not by name."""
    return str(name).endswith((".yaml", ".yml"))


def option_file(group: str, name: str, setting: str | None = None) -> Path:
    """The file a `<group>=<file>.yaml` choice names. It must sit in a folder named after the
    group (what labquant-sensitivity writes: <run>/qconfig/<name>.yaml), because that is how
    Hydra finds a group's options on its search path, and its name must not be a packaged
    option's (the packaged one would win)."""
    path, shown = Path(name), f"{setting or group}={name}"
    if not path.is_file():
        raise ConfigError(f"{shown}: no such file; pass an existing <folder>/{group}/<name>.yaml")
    if path.parent.name != group:
        raise ConfigError(
            f"{shown}: Hydra finds {group} options in a folder named {group}/; move it to "
            f"{path.parent / group / path.name}"
        )
    if path.stem in group_choices(group):
        raise ConfigError(
            f"{shown}: {path.stem} is also a packaged {group} (conf/{group}/{path.stem}.yaml), "
            "which would win; rename the file and its name: field"
        )
    return path


def load_group_option(group: str, name: str, setting: str | None = None) -> DictConfig:
    """conf/<group>/<name>.yaml; an unknown name is a one-line error listing the choices.

    `setting` is how the user named it (e.g. `lab.qconfigs`), for the message.
    """
    if is_option_file(name):
        loaded = OmegaConf.load(option_file(group, name, setting))
        assert isinstance(loaded, DictConfig)
        return loaded
    choices = group_choices(group)
    if name not in choices:
        raise ConfigError(
            f"{setting or group}: unknown {group} {name!r}; choose from {', '.join(choices)} "
            f"(configs in {paths.CONF_DIR / group})"
        )
    cfg = OmegaConf.load(paths.CONF_DIR / group / f"{name}.yaml")
    assert isinstance(cfg, DictConfig)
    return cfg


def load_app_defaults(app: str) -> DictConfig:
    """conf/<app>.yaml's own values (its `defaults` list and `hydra` block left out): what a
    pipeline that runs another app's task inside it (the lab's exports) starts from, so the
    defaults live in that YAML only."""
    cfg = OmegaConf.load(paths.CONF_DIR / f"{app}.yaml")
    assert isinstance(cfg, DictConfig)
    for key in ("defaults", "hydra"):
        cfg.pop(key, None)
    return cfg
