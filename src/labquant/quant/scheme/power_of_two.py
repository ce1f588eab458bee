"""The power-of-two scheme: every scale is exactly 2**-n with 0 <= n <= max_shift_amount, so
requantization on hardware is a right shift; symmetric int weights, activations at zero point
2**(b-1) (0 for unsigned post-ReLU outputs), codes narrowed to 2..8 bits, the bias int32 on the
accumulator grid s_in * s_w. The exponent rules live here once: the observers
(quant/pot.py) and the learned thresholds (quant/learned.py) both round with this table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from labquant.quant.scheme.base import Scheme

# How each exponent rule turns a real shift -log2(scale) into the integer n: `ceil` / `floor`
# name what happens to the SCALE (ceil rounds it up: n = floor(-log2 s)).
EXPONENT_ROUNDING = {"round": torch.round, "floor": torch.ceil, "ceil": torch.floor}


@dataclass(frozen=True)
class PowerOfTwo(Scheme):
    name: ClassVar[str] = "power_of_two"
    restriction: ClassVar[str] = "power_of_two"
    integer_program: ClassVar[bool] = True
    widths: ClassVar[bool] = True
    scale_bytes: ClassVar[int] = 1  # a one-byte shift per weight tensor or output channel
    output_qparam_bytes: ClassVar[int] = 2  # the output's one-byte shift and zero point
    max_shift_amount: int = 8

    def integer_shift(self, shift: torch.Tensor, exponent: str) -> torch.Tensor:
        """The integer n the exponent rule picks for a real shift, within 0..max_shift_amount
        (a float tensor of integers)."""
        return EXPONENT_ROUNDING[exponent](torch.clamp(shift, 0, self.max_shift_amount))
