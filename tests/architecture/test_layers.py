"""labquant's layers point one way (docs/architecture.md): an AST walk over src/labquant finds
every `labquant.*` import, lazy ones inside functions included, and checks it against the map.

    cli -> tasks -> lit -> {quant, models, data} -> {reports, config, checkpoints, errors}

A package may import its own layer's leaves and anything below; the three domain packages never
import each other; no import cycle between packages or between modules.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from labquant.config.paths import CONF_DIR

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "src" / "labquant"

# Rank of each top-level part of labquant: an import must go to the same rank or below.
LAYERS: dict[str, int] = {
    "errors": 0,
    "checkpoints": 0,
    "run_lock": 0,  # one process per run folder (an OS file lock)
    "onnx_runtime": 0,  # ONNX Runtime for any ONNX file (FP32 and int8)
    "speed": 0,  # the one inference timer (quantize, the report, the bench)
    "machine": 0,  # the CPU and its ISA (speed figures, precision and engine defaults)
    "config": 0,
    "reports": 0,
    "hw": 0,  # the integer-only reference: numpy, imports nothing above errors
    "models": 1,
    "data": 1,
    "quant": 1,
    "lit": 2,
    "tasks": 3,
    "cli": 4,
    "train": 5,  # `python -m labquant.train`
    "__init__": 5,
}
DOMAIN = {"models", "data", "quant"}  # same rank, independent of each other


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, root: Path, top_level_only: bool = False) -> set[str]:
    """`labquant.*` modules imported by the file at `path` (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "labquant" or name.startswith("labquant.")}


def part_of(module: str) -> str:
    """The top-level part of `labquant.x.y` (x), or `__init__` for `labquant` itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_graph(root: Path = PACKAGE_ROOT, top_level_only: bool = False) -> dict[str, set[str]]:
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports_of(path, root, top_level_only):
            # `from labquant.x import y` names y: keep it if it is a module, else its package.
            while imported not in modules and "." in imported:
                imported = imported.rpartition(".")[0]
            if imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def part_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """Which top-level parts import which (the listing in docs/architecture.md)."""
    parts: dict[str, set[str]] = defaultdict(set)
    for module, targets in module_graph(root).items():
        source = part_of(module)
        parts[source] |= {part_of(t) for t in targets if part_of(t) != source}
    return dict(parts)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk (each reported once, from its first node)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {part_of(module) for module in module_graph()}
    assert parts <= set(LAYERS), f"give these a layer in LAYERS: {parts - set(LAYERS)}"


def test_imports_point_down_only() -> None:
    wrong = []
    for module, targets in module_graph().items():
        source = part_of(module)
        for target in targets:
            dest = part_of(target)
            if dest == source:
                continue
            if LAYERS[dest] > LAYERS[source] or (source in DOMAIN and dest in DOMAIN):
                wrong.append(f"{module} -> {target}")
    assert wrong == [], "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_package_imports_another_that_imports_it_back() -> None:
    assert cycles(part_graph()) == []


def test_no_import_cycle_between_modules() -> None:
    assert cycles(module_graph(top_level_only=True)) == []


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("labquant.quant.backend", "labquant.tasks.runner"),
        ("labquant.models.resnet", "labquant.quant"),
    ],
)
def test_the_check_catches_a_wrong_import(tmp_path: Path, source: str, target: str) -> None:
    """The walk really sees an upward or sideways import (the test is not vacuous)."""
    root = tmp_path / "labquant"
    for module in (source, target, "labquant"):
        path = root.parent.joinpath(*module.split("."))
        path.mkdir(parents=True, exist_ok=True)
        (path / "__init__.py").touch()
    leaf = root.parent.joinpath(*source.split(".")) / "__init__.py"
    leaf.write_text(f"def f():\n    import {target}\n")
    graph = module_graph(root)
    assert target in graph[source]
    dest, src = part_of(target), part_of(source)
    assert LAYERS[dest] > LAYERS[src] or {src, dest} <= DOMAIN


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


# What the code outside quant/ must not test: every backend option's name (conf/backend/<name>.yaml,
# whose `name:` is its file name: eager, pt2e, pt2e_fused, and any backend added later).
BACKEND_NAMES = tuple(sorted(path.stem for path in (CONF_DIR / "backend").glob("*.yaml")))


def test_the_backend_names_are_the_backend_options() -> None:
    assert {"eager", "pt2e", "pt2e_fused"} <= set(BACKEND_NAMES)


def backend_name_checks(root: Path = PACKAGE_ROOT) -> list[str]:
    """`x == "eager"`, `"pt2e" != y`, `x in ("eager", ...)` outside quant/: a pipeline that
    asks which backend it has instead of what the backend offers (quant/backend.py)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "quant":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            strings = {
                c.value
                for operand in operands
                for c in ast.walk(operand)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            }
            if strings & set(BACKEND_NAMES):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_nothing_outside_quant_compares_a_backend_name() -> None:
    assert backend_name_checks() == []


def test_the_name_check_catches_a_comparison(tmp_path: Path) -> None:
    root = tmp_path / "labquant"
    (root / "tasks").mkdir(parents=True)
    (root / "tasks" / "lab.py").write_text('def f(b):\n    return b.name == "eager"\n')
    (root / "quant").mkdir()
    (root / "quant" / "ok.py").write_text('NAME = "eager"\nSAME = NAME == "eager"\n')
    assert backend_name_checks(root) == ["tasks/lab.py:2"]
