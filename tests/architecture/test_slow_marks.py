"""The fast loop (`pytest -m "not slow"`) leaves out every test that starts a process, runs
DDP or a whole lab: a test doing that is marked slow, by its module or by itself."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# What makes a test slow: a subprocess (the CLI helpers of tests/reliability/runs.py start one),
# a whole lab (run_lab, the tiny_lab fixture), two processes.
SLOW_SIGNS = ("subprocess", "tests.reliability.runs", "run_lab", "tiny_lab", "trainer=ddp")


def is_slow_mark(node: ast.expr) -> bool:
    """`pytest.mark.slow`, called or not."""
    node = node.func if isinstance(node, ast.Call) else node
    return isinstance(node, ast.Attribute) and node.attr == "slow"


def module_marked_slow(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            marks = node.value.elts if isinstance(node.value, ast.List) else [node.value]
            return any(is_slow_mark(mark) for mark in marks)
    return False


def unmarked_slow_tests(path: Path, root: Path = TESTS) -> list[str]:
    source = path.read_text()
    tree = ast.parse(source)
    if module_marked_slow(tree):
        return []
    module_wide = any(sign in source for sign in ("import subprocess", "tests.reliability.runs"))
    found = []
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
            continue
        text = ast.get_source_segment(source, node) or ""
        if (module_wide or any(sign in text for sign in SLOW_SIGNS)) and not any(
            is_slow_mark(d) for d in node.decorator_list
        ):
            found.append(f"{path.relative_to(root)}::{node.name}")
    return found


def test_every_process_ddp_or_lab_test_is_marked_slow() -> None:
    unmarked = [
        name
        for path in sorted(TESTS.rglob("test_*.py"))
        if path != Path(__file__).resolve()
        for name in unmarked_slow_tests(path)
    ]
    assert unmarked == []


def test_the_check_finds_an_unmarked_subprocess_test(tmp_path: Path) -> None:
    module = tmp_path / "test_fake.py"
    module.write_text("import subprocess\n\ndef test_cli():\n    subprocess.run(['true'])\n")
    assert unmarked_slow_tests(module, tmp_path) == ["test_fake.py::test_cli"]
    module.write_text("import pytest\n\n@pytest.mark.slow\ndef test_lab(tiny_lab):\n    pass\n")
    assert unmarked_slow_tests(module, tmp_path) == []
