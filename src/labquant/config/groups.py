"""Options of a config group read by name (`lab.qconfigs=[x86,pot]`, the benchmark's models and
qconfigs): the same YAML files that `group=name` on the command line selects."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from labquant.config.paths import CONF_DIR
from labquant.errors import ConfigError


def group_choices(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def load_group_option(group: str, name: str, setting: str | None = None) -> DictConfig:
    """conf/<group>/<name>.yaml; an unknown name is a one-line error listing the choices.

    `setting` is how the user named it (e.g. `lab.qconfigs`), for the message.
    """
    choices = group_choices(group)
    if name not in choices:
        raise ConfigError(
            f"{setting or group}: unknown {group} {name!r}; choose from {', '.join(choices)} "
            f"(configs in {CONF_DIR / group})"
        )
    cfg = OmegaConf.load(CONF_DIR / group / f"{name}.yaml")
    assert isinstance(cfg, DictConfig)
    return cfg
