"""Every module of labquant.config stays small (issue 40): one purpose each, at most 300 lines.
A module that grows past it holds two things; split it by what it holds."""

from __future__ import annotations

from pathlib import Path

import labquant.config

CONFIG_DIR = Path(labquant.config.__file__).resolve().parent
MAX_LINES = 300


def test_no_config_module_is_over_300_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in sorted(CONFIG_DIR.rglob("*.py"))}
    assert "schema.py" in sizes
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"config modules over {MAX_LINES} lines, split them: {too_long}"


def test_every_config_module_says_why_it_exists() -> None:
    for path in sorted(CONFIG_DIR.rglob("*.py")):
        text = path.read_text().lstrip()
        assert text.startswith('"""'), f"{path.name} has no module docstring"
