"""Where the Hydra configs live.

They are `conf/` at the top of the repository. The wheel ships them as the package data
`labquant/conf` (pyproject.toml maps the package `labquant.conf` to conf/), so an installed
labquant finds them next to its code. An editable install (`pip install -e .`) imports labquant
from src/labquant, where no `conf` exists, so there the packaged folder is missing and we fall
back to the source tree's conf/, three folders above this file's package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _conf_dir() -> Path:
    packaged = Path(str(resources.files("labquant") / "conf"))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "conf"  # src/labquant/config/paths.py -> repo


CONF_DIR = _conf_dir()
