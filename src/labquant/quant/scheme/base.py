"""What every scheme answers: the one interface the plan, the backends, the integer export and
the reports ask instead of `if power_of_two`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from labquant.errors import ConfigError

MIN_BITS, MAX_BITS = 2, 8
FIX_EXPORT = (
    "export a stage quantized with a power-of-two qconfig (qconfig=pot, pot_unsigned, pot_mse, "
    "pot_w4a8, ...)"
)
FLOAT_SCALE_BYTES = 4  # a float32 multiplier (and an int32 zero point)


def check_bits(setting: str, bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(
            f"qconfig.{setting}={bits} must be an integer in {MIN_BITS}..{MAX_BITS}; "
            f"e.g. qconfig.{setting}=8"
        )
    return bits


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """The codes of a `bits`-wide tensor in torch's containers: int8 -2**(b-1)..2**(b-1)-1
    (weights), uint8 0..2**b-1 (activations)."""
    bits = check_bits("weight_bits" if signed else "activation_bits", bits)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


@dataclass(frozen=True)
class Scheme:
    """A grid family. Subclasses set the class attributes and override what differs.

    `restriction`: how a scale may be chosen (`float`: any positive float; `power_of_two`:
    2**-n with 0 <= n <= max_shift_amount). `integer_program`: hw/ can run it with integer ops
    only (requantization by a shift). `widths`: the code widths 2..8 and the per-layer widths
    (`layer_bits`) are settings of it."""

    name: ClassVar[str]
    restriction: ClassVar[str]
    integer_program: ClassVar[bool] = False
    widths: ClassVar[bool] = False
    scale_bytes: ClassVar[int] = 2 * FLOAT_SCALE_BYTES  # one weight scale (and zero point)
    output_qparam_bytes: ClassVar[int] = 2 * FLOAT_SCALE_BYTES  # the output's scale + zero point
    max_shift_amount: int | None = None

    def describe(self) -> dict[str, Any]:
        """What results.json records of the scheme: its name, its shift range (None: float
        scales) and whether the integer program holds it (what `lab.export` exports)."""
        return {
            "scheme": self.name,
            "max_shift_amount": self.max_shift_amount,
            "integer_program": self.integer_program,
        }

    def packed_bytes(self, weights: int, bits: int, channels: int, weight_scales: int) -> int:
        """What a hardware memory holds for one layer: weights at their width (packed, rounded
        up to a byte), an int32 bias per output channel, the weight scales and the output's
        scale and zero point."""
        packed = math.ceil(weights * bits / 8) + 4 * channels
        return packed + weight_scales * self.scale_bytes + self.output_qparam_bytes

    def require_integer_program(self, qconfig: str) -> None:
        """The one-line refusal of a stage the integer program cannot hold."""
        if not self.integer_program:
            raise ConfigError(
                f"qconfig={qconfig} is not a power-of-two qconfig: its requantization needs "
                f"a multiplier, not a shift; {FIX_EXPORT}"
            )
