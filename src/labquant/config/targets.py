"""`_target_` reflection: a group's keys checked against the annotated signature of the class or
factory its `_target_` names.

Why: a target's arguments ARE its group's settings (a qconfig factory, a backend class, a model
factory, a DataModule), declared once with their types and defaults beside the code that uses
them. A key the target does not take, or a value of the wrong type, is then refused before any
work in the same one line as any other setting, not as Hydra's TypeError at instantiation.
Targets are imported by their dotted name: config/ imports nothing of quant/, models/, data/.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any

from hydra.utils import get_object
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from labquant.config.fields import cross_field_error
from labquant.config.messages import format_value, reason_of

UNANNOTATED = inspect.Parameter.empty


@dataclass(frozen=True)
class Argument:
    """One keyword argument of a target: its annotation (UNANNOTATED if none) and default."""

    hint: Any
    default: Any


def _hints(function: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function, include_extras=True)
    except Exception:  # a name only imported for type checkers: the arguments stay, untyped
        return {}


def target_arguments(target: str) -> dict[str, Argument] | None:
    """The keyword arguments `_target_` accepts, in signature order; None when it takes any
    (**kwargs all the way up) or cannot be imported or inspected. A class's **kwargs are
    followed into its base classes, as a DataModule subclass hands them to
    TensorImageDataModule."""
    try:
        obj = get_object(target)
    except Exception:  # an unimportable target fails at instantiation with its own one line
        return None
    callables = [c.__init__ for c in inspect.getmro(obj)] if inspect.isclass(obj) else [obj]
    arguments: dict[str, Argument] = {}
    for function in callables:
        try:
            parameters = list(inspect.signature(function).parameters.values())
        except (TypeError, ValueError):
            return None
        hints = _hints(function)
        for p in parameters:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self":
                continue
            arguments.setdefault(p.name, Argument(hints.get(p.name, UNANNOTATED), p.default))
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return arguments
    return None


def _rule_of(hint: Any) -> str | None:
    """The `rule` an Annotated argument declares in its Field (json_schema_extra)."""
    for meta in getattr(hint, "__metadata__", ()):
        extra = getattr(meta, "json_schema_extra", None)
        if isinstance(extra, dict) and "rule" in extra:
            return str(extra["rule"])
    return None


def _check_type(key: str, value: Any, argument: Argument) -> None:
    """`value` against the argument's annotation, strictly (no "1" for 1, no 1 for true)."""
    if argument.hint is UNANNOTATED:
        return
    try:
        TypeAdapter(argument.hint, config=ConfigDict(strict=True)).validate_python(value)
    except ValidationError as error:
        reason = _rule_of(argument.hint) or reason_of(error.errors()[0])
        example = None if argument.default is UNANNOTATED else argument.default
        raise cross_field_error(
            key, reason, f"e.g. {{group}}{key}={format_value(example)}"
        ) from None


def _set_keys(model: BaseModel) -> dict[str, Any]:
    """The keys the config gave the group: its declared fields that were set (in declaration
    order), then the rest; Hydra's own keys (`_target_`, `_partial_`) left out."""
    fields = {k: getattr(model, k) for k in type(model).model_fields if k in model.model_fields_set}
    keys = {**fields, **(model.model_extra or {})}
    return {k: v for k, v in keys.items() if not k.startswith("_")}


def check_target_arguments(model: BaseModel, what: str | None = None, unset_fix: str = "") -> None:
    """Every key of a group is an argument of its `_target_` (`what` names it in the error; the
    dotted target by default). A key the group's model does not declare is also checked
    against the type (and range) the argument declares; a declared one already was. An
    argument declared `None` is one the target has no use for (a power-of-two setting of an
    engine-default qconfig): refused with `unset_fix`."""
    target = (model.model_extra or {}).get("_target_")
    arguments = target_arguments(target) if isinstance(target, str) else None
    if arguments is None:
        return
    what, unset_fix = what or str(target), unset_fix or "leave it unset"
    usable = [name for name, a in arguments.items() if a.hint is not type(None)]
    for key, value in _set_keys(model).items():
        argument = arguments.get(key)
        if argument is None:
            fix = f"choose one of {', '.join(usable)}" if usable else unset_fix
            raise cross_field_error(key, f"is not a setting of {what}", fix)
        if argument.hint is type(None):
            if value is None:
                continue
            raise cross_field_error(key, f"is not a setting of {what}", unset_fix)
        if key not in type(model).model_fields:
            _check_type(key, value, argument)
