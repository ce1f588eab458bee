"""What `qconfig=` chooses, independent of the backend that realises it.

Each `conf/qconfig/<name>.yaml` names one of these factories with `_target_` and carries its
arguments; a factory's annotated arguments ARE the qconfig's settings (config/targets.py checks
every `qconfig.*` value against them before any work starts). A backend turns the spec into
its own observers (eager: a torch.ao QConfig; pt2e: QuantizationSpecs). A new preset is one YAML
file; a new kind of observer also needs its translation in each backend that supports it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Literal

from labquant.errors import ConfigError
from labquant.quant.pot import (
    EXPONENT_RULES,
    GRANULARITIES,
    RANGE_METHODS,
    Bits,
    ExponentRule,
    Granularity,
    Percentile,
    RangeMethod,
    ShiftAmount,
    check_bits,
    check_choice,
    check_max_shift_amount,
    check_percentile,
    code_range,
)
from labquant.quant.scheme import FloatScale, PowerOfTwo, Scheme

ACTIVATIONS = ("symmetric", "unsigned")
FLOAT_SCALE = FloatScale()  # the engines' own grid: every engine qconfig's scheme


@dataclass(frozen=True)
class QConfigSpec:
    """A qconfig as the user chose it.

    `engine` is the int8 kernel family the scales are made for (x86, fbgemm, qnnpack);
    `scheme` is the grid family (quant/scheme/): `FloatScale()` for the engines' own
    observers, `PowerOfTwo(max_shift_amount)` for scales 2**-n with 0 <= n <= max_shift_amount,
    symmetric (the shift-only hardware target), composed of the parts quant/pot.py describes:
    `weight_bits` /
    `activation_bits` (codes in torch's int8 / uint8 containers, range narrowed), weight
    `granularity`, the `exponent` rule and the `range_method` (`percentile` for its
    percentile). Power-of-two only: `activations="unsigned"` quantizes every post-ReLU
    activation as uint8 with zero point 0 (scale 2**-n over 0..2**b-1: twice the precision, no
    zero-point correction in the next conv); `snap_bias` puts every bias on its accumulator
    grid at conversion, so torch's int8 model computes what the integer-only hardware computes
    (int32 bias); `learn_scales` (QAT only) trains each fake-quantizer's log2 threshold
    (quant/learned.py) from the observers' starting point.
    """

    name: str
    engine: str
    scheme: Scheme = FLOAT_SCALE
    activations: str = "symmetric"
    snap_bias: bool = False
    weight_bits: int = 8
    activation_bits: int = 8
    granularity: str = "per_tensor"
    exponent: str = "round"
    range_method: str = "minmax"
    percentile: float = 99.99
    learn_scales: bool = False
    # (name or glob, weight bits or None, activation bits or None), applied in order
    layer_bits: tuple[tuple[str, int | None, int | None], ...] = ()

    def check_layers(self, names: list[str]) -> None:
        """Every `layer_bits` entry must match a layer of the network (`names`, its conv /
        linear modules); checked before any work."""
        for pattern, _, _ in self.layer_bits:
            if not fnmatch.filter(names, pattern):
                raise ConfigError(
                    f"qconfig.layer_bits has {pattern!r}, which names no layer of this model; "
                    f"its layers are {', '.join(names)} (globs such as 'layer1.*' work)"
                )

    @property
    def modes(self) -> tuple[str, ...]:
        """The stages this qconfig can run: learned exponents need training (QAT)."""
        return ("qat",) if self.learn_scales else ("ptq", "qat")

    def check_mode(self, mode: str) -> None:
        """PTQ of a learned-exponent qconfig is the one-line error naming both fixes."""
        if mode not in self.modes:
            raise ConfigError(
                f"qconfig.learn_scales=true learns the exponents by gradient descent, which "
                f"quant={mode} does not do; use quant=qat, or qconfig.learn_scales=false"
            )

    @property
    def weight_range(self) -> tuple[int, int]:
        return code_range(self.weight_bits, signed=True)

    @property
    def activation_range(self) -> tuple[int, int]:
        return code_range(self.activation_bits, signed=False)

    @property
    def per_channel(self) -> bool:
        return self.granularity == "per_channel"

    def describe(self) -> dict[str, object]:
        """What results.json records of the qconfig (besides its name)."""
        described: dict[str, object] = {
            **self.scheme.describe(),
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
        }
        if self.scheme.widths:
            described |= {
                "granularity": self.granularity,
                "exponent": self.exponent,
                "range": self.range_method,
            }
            if self.range_method == "percentile":
                described["percentile"] = self.percentile
            if self.learn_scales:
                described["learn_scales"] = True
            if self.layer_bits:
                described["layer_bits"] = {
                    pattern: {k: v for k, v in (("weight", w), ("activation", a)) if v}
                    for pattern, w, a in self.layer_bits
                }
        return described


def engine_default(
    name: str,
    engine: str,
    max_shift_amount: None = None,
    weight_bits: None = None,
    activation_bits: None = None,
    granularity: None = None,
    exponent: None = None,
    range: None = None,  # the setting's name: qconfig.range
    percentile: None = None,
    activations: None = None,
    snap_bias: None = None,
    layer_bits: None = None,
    learn_scales: None = None,
) -> QConfigSpec:
    """The engine's own default observers (torch's x86 / fbgemm / qnnpack qconfigs); the
    power-of-two settings have no meaning there (declared `None`: the schema refuses them)."""
    if max_shift_amount is not None:
        raise ConfigError(
            f"qconfig.max_shift_amount={max_shift_amount} applies to power-of-two qconfigs only; "
            f"qconfig={name} has no shift limit: leave qconfig.max_shift_amount unset"
        )
    return QConfigSpec(name=name, engine=engine)


def power_of_two(
    name: str = "pot",
    max_shift_amount: ShiftAmount = 8,
    engine: str = "x86",
    activations: Literal["symmetric", "unsigned"] = "symmetric",
    snap_bias: bool = True,
    weight_bits: Bits = 8,
    activation_bits: Bits = 8,
    granularity: Granularity = "per_tensor",
    exponent: ExponentRule = "round",
    range: RangeMethod = "minmax",  # the setting's name: qconfig.range
    percentile: Percentile = 99.99,
    layer_bits: dict[str, dict[str, Any]] | None = None,
    learn_scales: bool = False,
) -> QConfigSpec:
    """Power-of-two scales; the int8 kernels that run them are the `engine`'s. `layer_bits`
    maps a conv / linear name, or a glob such as `layer1.*`, to its own weight / activation
    widths (the activation is the layer's output) over the qconfig's defaults.
    `learn_scales`: QAT learns every exponent (quant/learned.py)."""
    entries = []
    for pattern, bits in (layer_bits or {}).items():
        bits = dict(bits or {})
        unknown = set(bits) - {"weight", "activation"}
        if unknown or not bits:
            raise ConfigError(
                f"qconfig.layer_bits.{pattern} must set weight and/or activation bits, got "
                f"{bits or 'nothing'}; e.g. qconfig.layer_bits={{'{pattern}': {{weight: 8}}}}"
            )
        widths = [
            check_bits(f"layer_bits.{pattern}.{key}", bits[key]) if key in bits else None
            for key in ("weight", "activation")
        ]
        entries.append((str(pattern), *widths))
    check_choice("activations", activations, ACTIVATIONS)
    check_percentile(percentile)
    return QConfigSpec(
        name=name,
        engine=engine,
        scheme=PowerOfTwo(check_max_shift_amount(max_shift_amount)),
        activations=activations,
        snap_bias=bool(snap_bias),
        weight_bits=check_bits("weight_bits", weight_bits),
        activation_bits=check_bits("activation_bits", activation_bits),
        granularity=check_choice("granularity", granularity, GRANULARITIES),
        exponent=check_choice("exponent", exponent, EXPONENT_RULES),
        range_method=check_choice("range", range, RANGE_METHODS),
        percentile=float(percentile),
        layer_bits=tuple(entries),
        learn_scales=bool(learn_scales),
    )
