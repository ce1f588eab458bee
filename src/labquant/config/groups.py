"""Options of a config group read by name (`lab.qconfigs=[x86,pot]`, the benchmark's models and
qconfigs): the same YAML files that `group=name` on the command line selects."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from labquant.config import paths
from labquant.errors import ConfigError


def group_choices(group: str, conf_dir: Path | None = None) -> list[str]:
    return sorted(p.stem for p in ((conf_dir or paths.CONF_DIR) / group).glob("*.yaml"))


def load_group_option(group: str, name: str, setting: str | None = None) -> DictConfig:
    """conf/<group>/<name>.yaml; an unknown name is a one-line error listing the choices.

    `setting` is how the user named it (e.g. `lab.qconfigs`), for the message.
    """
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
