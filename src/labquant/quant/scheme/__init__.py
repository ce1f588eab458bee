"""Quantization schemes: what kind of grid a qconfig's scales live on.

A scheme is one value of `QConfigSpec.scheme`, never a bool asked across the code: the uniform
float-scale scheme of the engines' own qconfigs (`FloatScale`) and the power-of-two scheme of the
shift-only hardware target (`PowerOfTwo`). Each owns its code ranges, its scale restriction and
exponent rules, the packed bytes of its scales, and whether
labquant's integer program can hold it. A new scheme is one module here (see
docs/architecture.md, "Where a new scheme goes").
"""

from labquant.quant.scheme.base import Scheme, code_range
from labquant.quant.scheme.float_scale import FloatScale
from labquant.quant.scheme.power_of_two import EXPONENT_ROUNDING, PowerOfTwo

__all__ = ["EXPONENT_ROUNDING", "FloatScale", "PowerOfTwo", "Scheme", "code_range"]
