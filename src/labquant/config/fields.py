"""Helpers that declare a setting's type and range where the setting is defined.

Why pydantic (v2): each field declares its type AND its range in one place (`gt=0`,
`Literal[...]`, `min_length=1`); strict mode refuses a bool or 2.5 where an integer is wanted
and "abc" where a number is. `setting()` adds the example that ends the one-line error and,
where the generic reason would mislead (unions, lists), a `rule` that replaces it. `Settings`
is the base of every group: extra keys allowed (`_target_`, a target's own arguments), strict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from labquant.config import paths
from labquant.config.groups import is_option_file
from labquant.config.messages import format_value
from labquant.errors import ConfigError

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Augment = Literal["device", "workers"]
PRECISION_RULE = "must be a precision such as 32-true, bf16-mixed or 16-mixed"


class Settings(BaseModel):
    """A group of settings: strict types; keys it does not declare are allowed (and checked
    against the group's `_target_` where it has one, config/targets.py)."""

    model_config = ConfigDict(extra="allow", strict=True)


def setting(example: Any, rule: str | None = None, default: Any = None, **constraints: Any) -> Any:
    """A field with the example that ends its error message (`e.g. optimizer.lr=0.1`) and,
    optionally, a `rule` that replaces the generic reason for every error in it."""
    extra = {"example": example} | ({"rule": rule} if rule else {})
    return Field(default, json_schema_extra=extra, **constraints)


def choice_of(group: str) -> Callable[[str], str]:
    """A name that must be a config file in conf/<group>/ (checked where that folder exists)."""

    def check(name: str) -> str:
        if is_option_file(name):
            return name  # a file (labquant-sensitivity's qconfig): config/groups.py checks it
        choices = sorted(p.stem for p in (paths.CONF_DIR / group).glob("*.yaml"))
        if choices and name not in choices:
            raise PydanticCustomError("unknown", "is not one of {c}", {"c": ", ".join(choices)})
        return name

    return check


QConfigName = Annotated[str, AfterValidator(choice_of("qconfig"))]
ModelName = Annotated[str, AfterValidator(choice_of("model"))]
BackendName = Annotated[str, AfterValidator(choice_of("backend"))]


def cross_field_error(field: str, reason: str, fix: str) -> PydanticCustomError:
    """An error in `field` found by a model validator; `{group}` in the texts becomes the
    dotted prefix of the model that raised it (`lab.qat.`, or nothing at the top)."""
    return PydanticCustomError(
        "cross_field", "{reason}", {"field": field, "reason": reason, "fix": fix}
    )


def warmup_fits(warmup_epochs: float, max_epochs: int) -> bool:
    """The warmup rule, here and in WarmupCosineAnnealingLR: a cosine phase must remain."""
    return 0 <= warmup_epochs < max_epochs


def warmup_rule(max_epochs: int) -> tuple[str, str]:
    """(what is wrong, the fix) when `warmup_fits` is False."""
    return (
        f"must be >= 0 and < trainer.max_epochs ({max_epochs})",
        "lower scheduler.warmup_epochs or raise trainer.max_epochs",
    )


def check_warmup_epochs(warmup_epochs: float, max_epochs: int) -> None:
    """`warmup_fits` for code that takes the values outside a composed config."""
    if not warmup_fits(warmup_epochs, max_epochs):
        wrong, fix = warmup_rule(max_epochs)
        raise ConfigError(f"scheduler.warmup_epochs={format_value(warmup_epochs)} {wrong}; {fix}")
