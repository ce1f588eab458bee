"""The quantization plan: for every quantized tensor of a network, what its grid is.

A qconfig (`QConfigSpec`) says what the user chose; the plan says what it means, tensor by
tensor, once: the role (weight, activation, bias), the code range and its width, signedness and
zero point, granularity and axis, the scheme (a power of two with its shift range, or a float
scale), the exponent rule, the range method and its percentile, and whether the exponent is
learned. Per-layer widths (`qconfig.layer_bits`) are applied here and nowhere else. Both
backends realise a plan (eager: observers and fake-quants per module, quant/eager/qconfigs.py;
pt2e: QuantizationSpecs per node, quant/pt2e/quantizer.py) and never read the qconfig's fields
themselves; PTQ algorithms that need the grid before a backend converts read it here too.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from labquant.quant.qconfigs import QConfigSpec
from labquant.quant.scheme import Scheme, code_range

Role = Literal["weight", "activation", "bias"]
BIAS_RANGE = (-(2**31), 2**31 - 1)  # int32 on the accumulator grid s_in * s_w


@dataclass(frozen=True)
class TensorPlan:
    """One quantized tensor's grid. `zero_point`: the fixed zero point of a power-of-two grid
    (0 for weights and unsigned post-ReLU outputs, 2**(b-1) for symmetric activations); None
    where the engine's observer chooses it (float scales)."""

    role: Role
    scheme: Scheme
    bits: int
    quant_min: int
    quant_max: int
    signed: bool
    zero_point: int | None
    granularity: str = "per_tensor"
    axis: int | None = None
    exponent: str | None = None
    range_method: str | None = None
    percentile: float | None = None
    learned: bool = False

    @property
    def per_channel(self) -> bool:
        return self.granularity == "per_channel"

    @property
    def unsigned(self) -> bool:
        """A post-ReLU activation on 0..2**b-1 with zero point 0."""
        return self.role == "activation" and self.zero_point == 0

    @property
    def code_range(self) -> tuple[int, int]:
        return self.quant_min, self.quant_max


@dataclass(frozen=True)
class LayerPlan:
    """A conv / linear: its weight, its output (and the output where a ReLU follows), and the
    bias on its accumulator grid."""

    name: str
    weight: TensorPlan
    output: TensorPlan
    relu_output: TensorPlan
    bias: TensorPlan

    @property
    def widths(self) -> tuple[int, int]:
        """(weight bits, output bits)."""
        return self.weight.bits, self.output.bits


@dataclass(frozen=True)
class QuantPlan:
    """A network's plan: the qconfig's default layer, the layers `layer_bits` changes, and what
    the backends need beside the grids (the engine whose kernels run it, the bias snap)."""

    spec: QConfigSpec
    default: LayerPlan
    layers: dict[str, LayerPlan] = field(default_factory=dict)

    @property
    def qconfig(self) -> str:
        return self.spec.name

    @property
    def engine(self) -> str:
        """The kernel family whose int8 ops run the plan (x86, fbgemm, qnnpack)."""
        return self.spec.engine

    @property
    def scheme(self) -> Scheme:
        return self.spec.scheme

    @property
    def snap_bias(self) -> bool:
        """Every bias put on its int32 accumulator grid at conversion."""
        return self.spec.snap_bias and self.scheme.integer_program

    def layer(self, name: str) -> LayerPlan:
        """The plan of the named conv / linear: the default where no layer_bits entry names
        it (a name outside the planned network gets its layer_bits widths all the same)."""
        if name in self.layers:
            return self.layers[name]
        widths = layer_widths(self.spec, name)
        return (
            self.default if widths == self.default.widths else layer_plan(self.spec, name, *widths)
        )

    @property
    def has_layer_widths(self) -> bool:
        """Some layer has its own widths (`qconfig.layer_bits`)."""
        return bool(self.spec.layer_bits)

    def layer_differs(self, name: str) -> bool:
        """Whether the named layer has other widths than the qconfig's."""
        return self.layer(name).widths != self.default.widths

    def tensors(self, names: Iterable[str]) -> dict[str, TensorPlan]:
        """Every quantized tensor of the named layers: `<layer>.weight`, `.bias`, `.output`."""
        described: dict[str, TensorPlan] = {}
        for name in names:
            layer = self.layer(name)
            for role in ("weight", "bias", "output"):
                described[f"{name}.{role}"] = getattr(layer, role)
        return described


def _power_of_two_tensor(spec: QConfigSpec, role: Role, bits: int, unsigned: bool) -> TensorPlan:
    signed = role == "weight"
    qmin, qmax = code_range(bits, signed=signed)
    zero_point = 0 if signed or unsigned else (qmin + qmax + 1) // 2
    return TensorPlan(
        role=role,
        scheme=spec.scheme,
        bits=bits,
        quant_min=qmin,
        quant_max=qmax,
        signed=signed,
        zero_point=zero_point,
        granularity=spec.granularity if signed else "per_tensor",
        axis=0 if signed and spec.per_channel else None,
        exponent=spec.exponent,
        range_method=spec.range_method,
        percentile=spec.percentile,
        learned=spec.learn_scales,
    )


# The engines' default observers: x86 / fbgemm weights per output channel, qnnpack per tensor;
# activations affine uint8 with an observed zero point.
_ENGINE_WEIGHTS = {"x86": "per_channel", "fbgemm": "per_channel", "qnnpack": "per_tensor"}


def _float_tensor(spec: QConfigSpec, role: Role) -> TensorPlan:
    signed = role == "weight"
    granularity = _ENGINE_WEIGHTS.get(spec.engine, "per_tensor") if signed else "per_tensor"
    qmin, qmax = code_range(8, signed=signed)
    return TensorPlan(
        role=role,
        scheme=spec.scheme,
        bits=8,
        quant_min=qmin,
        quant_max=qmax,
        signed=signed,
        zero_point=0 if signed else None,
        granularity=granularity,
        axis=0 if granularity == "per_channel" else None,
    )


def _bias(spec: QConfigSpec, weight: TensorPlan) -> TensorPlan:
    return TensorPlan(
        role="bias",
        scheme=spec.scheme,
        bits=32,
        quant_min=BIAS_RANGE[0],
        quant_max=BIAS_RANGE[1],
        signed=True,
        zero_point=0,
        granularity=weight.granularity,
        axis=weight.axis,
    )


def layer_plan(spec: QConfigSpec, name: str, weight_bits: int, activation_bits: int) -> LayerPlan:
    """One conv / linear at the given widths."""
    if spec.scheme.widths:
        weight = _power_of_two_tensor(spec, "weight", weight_bits, unsigned=False)
        output = _power_of_two_tensor(spec, "activation", activation_bits, unsigned=False)
        unsigned = spec.activations == "unsigned"
        relu = (
            _power_of_two_tensor(spec, "activation", activation_bits, True) if unsigned else output
        )
    else:
        weight, output = _float_tensor(spec, "weight"), _float_tensor(spec, "activation")
        relu = output
    return LayerPlan(name, weight, output, relu, _bias(spec, weight))


def layer_widths(spec: QConfigSpec, name: str) -> tuple[int, int]:
    """The qconfig's widths with every `layer_bits` entry that matches `name` applied over
    them, in the order given (a later one wins)."""
    weight, activation = spec.weight_bits, spec.activation_bits
    for pattern, weight_bits, activation_bits in spec.layer_bits:
        if fnmatch.fnmatchcase(name, pattern):
            weight = weight_bits or weight
            activation = activation_bits or activation
    return weight, activation


def build_plan(spec: QConfigSpec, layer_names: Iterable[str] = ()) -> QuantPlan:
    """The plan of a qconfig for a network whose conv / linear layers are `layer_names`
    (quant/layers.quantizable_layers of the FP32 module); `layer_bits` is checked against
    them when given."""
    names = list(layer_names)
    if names:
        spec.check_layers(names)
    default = layer_plan(spec, "", spec.weight_bits, spec.activation_bits)
    layers: dict[str, LayerPlan] = {}
    for name in names:
        widths = layer_widths(spec, name)
        if widths != (spec.weight_bits, spec.activation_bits):
            layers[name] = layer_plan(spec, name, *widths)
    return QuantPlan(spec=spec, default=default, layers=layers)


def plan_of(planned: QuantPlan | QConfigSpec) -> QuantPlan:
    """A plan as it is, or a qconfig's plan for a network not named (layer_bits then apply by
    name as layers are asked for)."""
    return planned if isinstance(planned, QuantPlan) else build_plan(planned)
