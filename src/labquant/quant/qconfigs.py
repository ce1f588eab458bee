"""What `qconfig=` chooses, independent of the backend that realises it.

Each `conf/qconfig/<name>.yaml` names one of these factories with `_target_` and carries its
arguments; a backend turns the spec into its own observers (eager: a torch.ao QConfig). A new
qconfig is one YAML file plus, where it needs new observers, one factory here and its
translation in each backend that supports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from labquant.config.schema import check_max_shift_amount
from labquant.errors import ConfigError


@dataclass(frozen=True)
class QConfigSpec:
    """A qconfig as the user chose it.

    `engine` is the int8 kernel family the scales are made for (x86, fbgemm, qnnpack);
    `power_of_two` asks for scales 2**-n with 0 <= n <= `max_shift_amount`, symmetric
    per-tensor, full 8-bit range (the shift-only hardware target).
    """

    name: str
    engine: str
    power_of_two: bool = False
    max_shift_amount: int | None = None


def engine_default(name: str, engine: str, max_shift_amount: None = None) -> QConfigSpec:
    """The engine's own default observers (torch's x86 / fbgemm / qnnpack qconfigs)."""
    if max_shift_amount is not None:
        raise ConfigError(
            f"qconfig.max_shift_amount={max_shift_amount} applies to power-of-two qconfigs only; "
            f"qconfig={name} has no shift limit: leave qconfig.max_shift_amount unset"
        )
    return QConfigSpec(name=name, engine=engine)


def power_of_two(name: str = "pot", max_shift_amount: int = 8, engine: str = "x86") -> QConfigSpec:
    """Power-of-two scales; the int8 kernels that run them are the `engine`'s."""
    return QConfigSpec(
        name=name,
        engine=engine,
        power_of_two=True,
        max_shift_amount=check_max_shift_amount(max_shift_amount),
    )
