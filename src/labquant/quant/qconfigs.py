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

ACTIVATIONS = ("symmetric", "unsigned")


@dataclass(frozen=True)
class QConfigSpec:
    """A qconfig as the user chose it.

    `engine` is the int8 kernel family the scales are made for (x86, fbgemm, qnnpack);
    `power_of_two` asks for scales 2**-n with 0 <= n <= `max_shift_amount`, symmetric
    per-tensor, full 8-bit range (the shift-only hardware target). Power-of-two only:
    `activations="unsigned"` quantizes every post-ReLU activation as uint8 with zero point 0
    (scale 2**-n over 0..255: twice the precision, no zero-point correction in the next conv);
    `snap_bias` puts every bias on its accumulator grid at conversion, so torch's int8 model
    computes what the integer-only hardware computes (int32 bias).
    """

    name: str
    engine: str
    power_of_two: bool = False
    max_shift_amount: int | None = None
    activations: str = "symmetric"
    snap_bias: bool = False


def engine_default(name: str, engine: str, max_shift_amount: None = None) -> QConfigSpec:
    """The engine's own default observers (torch's x86 / fbgemm / qnnpack qconfigs)."""
    if max_shift_amount is not None:
        raise ConfigError(
            f"qconfig.max_shift_amount={max_shift_amount} applies to power-of-two qconfigs only; "
            f"qconfig={name} has no shift limit: leave qconfig.max_shift_amount unset"
        )
    return QConfigSpec(name=name, engine=engine)


def power_of_two(
    name: str = "pot",
    max_shift_amount: int = 8,
    engine: str = "x86",
    activations: str = "symmetric",
    snap_bias: bool = True,
) -> QConfigSpec:
    """Power-of-two scales; the int8 kernels that run them are the `engine`'s."""
    if activations not in ACTIVATIONS:
        raise ConfigError(
            f"qconfig.activations={activations} must be one of {', '.join(ACTIVATIONS)}; "
            "e.g. qconfig.activations=unsigned"
        )
    return QConfigSpec(
        name=name,
        engine=engine,
        power_of_two=True,
        max_shift_amount=check_max_shift_amount(max_shift_amount),
        activations=activations,
        snap_bias=bool(snap_bias),
    )
