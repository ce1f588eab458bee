"""The engines' own uniform grid (torch's x86 / fbgemm / qnnpack qconfigs): float scales and
zero points from torch's observers, 8-bit codes, no integer program (its requantization needs a
multiplier)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from labquant.quant.scheme.base import Scheme


@dataclass(frozen=True)
class FloatScale(Scheme):
    name: ClassVar[str] = "float"
    restriction: ClassVar[str] = "float"
