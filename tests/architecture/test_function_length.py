"""No function or method in src/labquant runs over 60 lines (issue 40): a long function hides
its steps; split it into named helpers. Counted from the `def` line to its last line,
decorators left out."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "labquant"
MAX_LINES = 60


def long_functions(root: Path = SRC, limit: int = MAX_LINES) -> list[str]:
    """`path:line name (N lines)` for every function or method under root longer than limit."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    where = path.relative_to(root.parent)
                    found.append(f"{where}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_the_checker_counts_from_def_to_end(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES - 1))
    (tmp_path / "ok.py").write_text(f"@decorator\ndef fits():\n{body}\n")
    indented = "\n".join("    " + line for line in body.splitlines())
    (tmp_path / "long.py").write_text(f"class C:\n    def over(self):\n{indented}\n        y = 0\n")
    assert long_functions(tmp_path) == [f"{tmp_path.name}/long.py:2 over (61 lines)"]


def test_no_function_in_src_is_over_60_lines() -> None:
    too_long = long_functions()
    assert not too_long, f"functions over {MAX_LINES} lines, split them:\n" + "\n".join(too_long)
