"""The scheme is one value (quant/scheme/): nothing above quant/ asks whether a qconfig is power
of two, or infers it from a shift limit that is missing; it asks the scheme what it can do."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "src" / "labquant"
ABOVE_QUANT = ("tasks", "lit", "cli", "reports")
FORBIDDEN_ATTRIBUTES = {"power_of_two", "max_shift_amount"}
QUESTION = re.compile(r"(?<!scheme\.)\b(power_of_two|max_shift_amount)\b")


def _asks_the_scheme(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Attribute) and node.value.attr == "scheme"


def scheme_questions(source: str) -> list[str]:
    """Each `x.power_of_two` / `x.max_shift_amount` read (not `x.scheme.max_shift_amount`:
    that asks the scheme), and each `... max_shift_amount ... is None` comparison, as
    `line: text`. Writing a config value (`option.max_shift_amount = ...`) is no question."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in FORBIDDEN_ATTRIBUTES
            and isinstance(node.ctx, ast.Load)
            and not _asks_the_scheme(node)
        ):
            found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Compare) and any(
            isinstance(op, ast.Is | ast.IsNot) for op in node.ops
        ):
            text = ast.unparse(node)
            if QUESTION.search(text):
                found.append(f"{node.lineno}: {text}")
    return found


def test_the_check_finds_both_kinds_of_question():
    source = "a = qconfig.power_of_two\nb = results.get('max_shift_amount') is None\n"
    assert len(scheme_questions(source)) == 2
    assert scheme_questions("ok = qconfig.scheme.integer_program\n") == []
    assert scheme_questions("ok = spec.scheme.max_shift_amount is not None\n") == []


@pytest.mark.parametrize("package", ABOVE_QUANT)
def test_no_layer_above_quant_asks_whether_a_qconfig_is_power_of_two(package: str):
    offenders = []
    for path in sorted((PACKAGE_ROOT / package).rglob("*.py")):
        for question in scheme_questions(path.read_text()):
            offenders.append(f"{path.relative_to(PACKAGE_ROOT)}:{question}")
    assert offenders == [], "ask qconfig.scheme instead:\n" + "\n".join(offenders)
