"""The one-line error for a setting: `<setting>=<value as written> <what is wrong>; <fix>`.

Why one module: every check (the group models, the `_target_` arguments, the warmup rule, code
outside config/ that fingerprints settings) must show a value the way the user types it on the
command line, and turn a pydantic error location into the dotted setting the user typed, so the
line reads the same whichever check found the mistake.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def format_value(value: Any) -> str:
    """A value as written on the command line: `null`, `true`, `[1,2]`, `{a:1}`, `'0.1'`."""
    if value is None or isinstance(value, bool):
        return str(value).lower().replace("none", "null")
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):  # quoted where it would otherwise read as a number, bool or null
        try:
            float(value)
            return f"'{value}'"
        except ValueError:
            return f"'{value}'" if value.lower() in ("", "true", "false", "null") else value
    return str(value)


def lookup(tree: Any, path: list[str]) -> Any:
    """The value at a dotted path of plain dicts (None where a part is absent)."""
    for part in path:
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def locate(data: Any, loc: tuple[Any, ...], missing: bool) -> tuple[list[str], bool]:
    """The dotted setting a pydantic location names, and whether the error is in a list item.

    Union members add tags (`constrained-int`) that name no key: skipped. The path stops at a
    list: the whole list is the setting the user wrote.
    """
    path: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(data, list):
            return path, True
        if isinstance(data, dict) and part in data:
            path.append(str(part))
            data = data[part]
        elif missing and i == len(loc) - 1:
            path.append(str(part))
    return path, False


def declared_extra(model: Any, path: list[str]) -> dict[str, Any]:
    """The example and rule declared with a dotted setting ({} for an undeclared key)."""
    field = None
    for part in path:
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return {}
        types = (field.annotation, *getattr(field.annotation, "__args__", ()))
        model = next((t for t in types if isinstance(t, type) and issubclass(t, BaseModel)), None)
    extra = field.json_schema_extra if field is not None else None
    return extra if isinstance(extra, dict) else {}


COMPARISONS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}
COMPARISONS["less_than_equal"] = "<="
REASONS = {
    "missing": "is missing",
    "int_type": "is not an integer",
    "int_from_float": "is not an integer",
    "float_type": "is not a number",
    "bool_type": "is not true or false",
    "string_type": "is not a string",
    "list_type": "is not a list",
    "model_type": "is not a group of settings",
    "string_too_short": "is empty",
    "too_short": "needs at least one item",
}


def reason_of(error: Any) -> str:
    """What is wrong, in words, for one pydantic error (`must be > 0`, `is not an integer`)."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in COMPARISONS:
        bound = next(iter(ctx.values()))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"must be {COMPARISONS[kind]} {bound}"
    if kind == "literal_error":
        return "must be " + ctx["expected"].replace("'", "")
    return REASONS.get(kind) or error["msg"][:1].lower() + error["msg"][1:]


def settings_error(error: Any, data: dict[str, Any], model: type[BaseModel]) -> str:
    """`<setting>=<value> <what is wrong>; <fix>` for one pydantic error."""
    ctx, missing = error.get("ctx") or {}, error["type"] == "missing"
    path, in_list = locate(data, tuple(error["loc"]), missing)
    group = "".join(f"{p}." for p in path)
    if "field" in ctx:  # a cross-field check names its field below the model that raised it
        path += ctx["field"].split(".")
    name, extra = ".".join(path) or "settings", declared_extra(model, path)
    reason = ctx["reason"].replace("{group}", group) if "field" in ctx else reason_of(error)
    if not missing and "field" not in ctx and "rule" in extra:
        reason = extra["rule"]
    elif in_list:
        reason = f"item {format_value(error['input'])} {reason}"
    fix = ctx["fix"].replace("{group}", group) if "fix" in ctx else f"check {name}"
    if "example" in extra and "fix" not in ctx:
        fix = f"e.g. {name}={format_value(extra['example'])}"
    shown = name if missing else f"{name}={format_value(lookup(data, path))}"
    return " ".join(f"{shown} {reason}; {fix}".split())
