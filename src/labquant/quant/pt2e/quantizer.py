"""Quantizers: what each `qconfig=` annotates in an exported graph.

`x86` / `fbgemm` use torchao's X86InductorQuantizer (the kernels Inductor lowers to). The
power-of-two qconfigs use `PowerOfTwoQuantizer`, labquant's own, with the same semantics as the
eager pot qconfigs: symmetric int8 weights (per tensor, or per channel) and 0..255 activations
(zero point 128), both narrowed to the declared widths, scale 2**-n with 0 <= n <=
max_shift_amount; conv(-bn)(-relu) and linear quantize their input,
weight and output, the residual add quantizes both inputs and its (relu) output, pooling and
flatten share their input's qparams, and a bias the graph already has is int32 at
s_in * s_w (DerivedQuantizationSpec). `activations="unsigned"` makes every post-ReLU output
0..255 with zero point 0. `backend.fuse_residual_add=true` (backend=pt2e_fused) leaves the
conv feeding each residual add unquantized, so Inductor lowers conv + add + relu as one int8
conv with oneDNN's sum post-op: one rounding instead of two, and no add kernel.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch
from torch import Tensor
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.fake_quantize import FusedMovingAvgObsFakeQuantize
from torchao.quantization.pt2e.quantizer import (
    DerivedQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
)
from torchao.quantization.pt2e.quantizer.utils import QuantizationConfig
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

from labquant.quant.plan import LayerPlan, QuantPlan, TensorPlan, plan_of
from labquant.quant.pot import memory_order_constructor
from labquant.quant.pt2e.inspect import ADDS, MATMULS, RELUS, module_name
from labquant.quant.pt2e.observers import (
    PT2ELearnedPotFakeQuantize,
    PT2EMemoryOrderFakeQuantize,
    PT2EPotFakeQuantize,
    PT2EPotObserver,
    PT2EPotWeightObserver,
)
from labquant.quant.qconfigs import QConfigSpec

ANNOTATION = "quantization_annotation"
aten = torch.ops.aten
NORMS = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)
# Ops whose output keeps the input's qparams (eager's quantized avgpool / flatten do the same).
PASS_THROUGH = (
    aten.adaptive_avg_pool2d.default,
    aten.mean.dim,
    aten.flatten.using_ints,
    aten.view.default,
    aten.reshape.default,
    aten.max_pool2d.default,
)


def _spec(qat: bool, tensor: TensorPlan) -> QuantizationSpec:
    """The QuantizationSpec of one planned tensor. Weights: int8 at the plan's width, written
    per channel (one 2**-n for the tensor, or one per channel with granularity=per_channel; see
    PT2EPotWeightObserver); activations: uint8 0..2**b-1, zero point 2**(b-1) (0 when
    unsigned)."""
    signed = tensor.role == "weight"
    observer = PT2EPotWeightObserver if signed else PT2EPotObserver
    kwargs: dict[str, Any] = {
        "max_shift_amount": int(tensor.scheme.max_shift_amount or 8),
        "exponent": tensor.exponent,
        "range_method": tensor.range_method,
        "percentile": tensor.percentile,
        "scheme": tensor.scheme,
    }
    dtype = torch.int8 if signed else torch.uint8
    qmin, qmax = tensor.code_range
    if signed:
        qscheme, ch_axis = torch.per_channel_symmetric, 0
        kwargs["one_scale"] = not tensor.per_channel
    else:
        kwargs["unsigned"] = tensor.unsigned
        qscheme = torch.per_tensor_affine if tensor.unsigned else torch.per_tensor_symmetric
        ch_axis = None
    kwargs.update(quant_min=qmin, quant_max=qmax)
    if qat:
        kwargs.update(observer=observer, dtype=dtype)
        kwargs.update(qscheme=qscheme, **({"ch_axis": 0} if signed else {}))
    fake_quant = PT2ELearnedPotFakeQuantize if tensor.learned else PT2EPotFakeQuantize
    ctr = (fake_quant if qat else observer).with_args(**kwargs)
    return QuantizationSpec(
        dtype=dtype,
        quant_min=qmin,
        quant_max=qmax,
        qscheme=qscheme,
        ch_axis=ch_axis,
        observer_or_fake_quant_ctr=ctr,
    )


def _bias_qparams(observers: list[Any]) -> tuple[Tensor, Tensor]:
    """int32 bias on the accumulator grid: scale s_in * s_w (a power of two), zero point 0."""
    act, weight = observers
    act_scale, _ = act.calculate_qparams()
    weight_scale, _ = weight.calculate_qparams()
    scale = (act_scale.reshape(-1)[:1] * weight_scale.reshape(-1)[:1]).to(torch.float32)
    return scale, torch.zeros(1, dtype=torch.int64, device=scale.device)


def _only_user(node: Node) -> Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _follow(node: Node, targets: tuple[Any, ...]) -> Node | None:
    """The single user of `node` when it is one of `targets` (through a getitem for ops that
    return tuples), else None."""
    user = _only_user(node)
    if user is None:
        return None
    if user.target is operator.getitem:
        user = _only_user(user)
    return user if user is not None and user.target in targets else None


class PowerOfTwoQuantizer(Quantizer):
    """Annotates labquant's ResNets (and any conv / linear / add / relu / pool graph) with
    power-of-two QuantizationSpecs; see the module docstring for the rules."""

    def __init__(self, plan: QuantPlan, qat: bool, fuse_residual_add: bool = False) -> None:
        super().__init__()
        self.qat, self.plan = qat, plan
        self.fuse_residual_add = fuse_residual_add
        self.weight, self.act, self.relu_out = self._new_specs(plan.default)
        self._layer_specs: dict[tuple[int, int], tuple[QuantizationSpec, ...]] = {}
        # A per-channel weight grid has one bias scale per channel: the bias stays float in the
        # graph and convert snaps it to each channel's grid (inspect.snap_biases).
        self.derived_bias = not plan.default.weight.per_channel

    def _new_specs(self, layer: LayerPlan) -> tuple[QuantizationSpec, ...]:
        """(weight, output, post-ReLU output) specs of a layer plan."""
        output = _spec(self.qat, layer.output)
        relu = output if layer.relu_output == layer.output else _spec(self.qat, layer.relu_output)
        return _spec(self.qat, layer.weight), output, relu

    def _layer(self, node: Node) -> tuple[QuantizationSpec, ...]:
        """(weight, output, post-ReLU output) specs of a conv / linear: the plan's default, or,
        where the plan has per-layer widths, one set of specs per pair of widths."""
        if not self.plan.has_layer_widths:
            return self.weight, self.act, self.relu_out
        layer = self.plan.layer(module_name(node) or node.name)
        if layer.widths not in self._layer_specs:
            self._layer_specs[layer.widths] = self._new_specs(layer)
        return self._layer_specs[layer.widths]

    def _input_spec(self, node: Node) -> Any:
        """An edge from an annotated producer reuses its output spec (implicit sharing: one
        observer per tensor); anything else, e.g. the graph input, gets the activation spec."""
        produced = node.meta.get(ANNOTATION)
        if produced is not None and produced.output_qspec is not None:
            return produced.output_qspec
        return self.act

    def _output_chain(self, node: Node) -> tuple[list[Node], bool]:
        """node -> [batch_norm] -> [relu]: the nodes fused into one quantized op."""
        chain, relu = [node], False
        norm = _follow(node, NORMS)
        if norm is not None:
            chain.append(norm)
        after = _follow(chain[-1], RELUS)
        if after is not None:
            chain.append(after)
            relu = True
        return chain, relu

    def _annotate_chain(
        self,
        chain: list[Node],
        inputs: dict[Node, Any],
        relu: bool,
        outputs: tuple[QuantizationSpec, QuantizationSpec] | None = None,
    ) -> None:
        """`outputs`: (output, post-ReLU output) specs, the qconfig's by default."""
        first, last = chain[0], chain[-1]
        act, relu_out = outputs or (self.act, self.relu_out)
        out = relu_out if relu else act
        first.meta[ANNOTATION] = QuantizationAnnotation(input_qspec_map=inputs, _annotated=True)
        for middle in chain[1:-1]:
            middle.meta[ANNOTATION] = QuantizationAnnotation(_annotated=True)
        if last is first:
            first.meta[ANNOTATION].output_qspec = out
        else:
            last.meta[ANNOTATION] = QuantizationAnnotation(output_qspec=out, _annotated=True)

    def _annotate_matmul(self, node: Node) -> None:
        act, weight = node.args[0], node.args[1]
        weight_spec, out_spec, relu_spec = self._layer(node)
        inputs: dict[Node, Any] = {act: self._input_spec(act), weight: weight_spec}
        bias = node.args[2] if len(node.args) > 2 else None
        if isinstance(bias, Node) and self.derived_bias:
            inputs[bias] = DerivedQuantizationSpec(
                derived_from=[(act, node), (weight, node)],
                derive_qparams_fn=_bias_qparams,
                dtype=torch.int32,
                quant_min=-(2**31),
                quant_max=2**31 - 1,
                qscheme=torch.per_tensor_symmetric,
            )
        chain, relu = self._output_chain(node)
        self._annotate_chain(chain, inputs, relu, (out_spec, relu_spec))

    def _annotate_add(self, node: Node) -> None:
        operands = [a for a in node.args[:2] if isinstance(a, Node)]
        fused = self._fused_conv_output(operands) if self.fuse_residual_add else None
        if fused is not None:  # one rounding: conv + add [+ relu] is one int8 op
            fused.meta[ANNOTATION].output_qspec = None
            operands.remove(fused)
        inputs = {a: self._input_spec(a) for a in operands}
        chain, relu = [node], False
        after = _follow(node, RELUS)
        if after is not None:
            chain, relu = [node, after], True
        self._annotate_chain(chain, inputs, relu)

    @staticmethod
    def _fused_conv_output(operands: list[Node]) -> Node | None:
        """The add operand Inductor fuses into its conv (oneDNN's sum post-op): the output of a
        conv [-> batch_norm] chain with no ReLU, read by the add alone. Its output stays float,
        as X86InductorQuantizer leaves it, so the add's other input is the accumulator."""
        for operand in operands:
            annotation = operand.meta.get(ANNOTATION)
            if annotation is None or annotation.output_qspec is None or len(operand.users) != 1:
                continue
            source = operand.args[0] if operand.target in NORMS else operand
            if isinstance(source, Node) and source.target is aten.conv2d.default:
                return operand
        return None

    def _annotate_pass_through(self, node: Node) -> None:
        source = node.args[0]
        if not isinstance(source, Node) or ANNOTATION not in source.meta:
            return
        node.meta[ANNOTATION] = QuantizationAnnotation(
            input_qspec_map={source: self._input_spec(source)},
            output_qspec=SharedQuantizationSpec((source, node)),
            _annotated=True,
        )

    def annotate(self, model: GraphModule) -> GraphModule:
        for node in model.graph.nodes:
            if node.op != "call_function" or ANNOTATION in node.meta:
                continue
            if node.target in MATMULS:
                self._annotate_matmul(node)
            elif node.target in ADDS:
                self._annotate_add(node)
            elif node.target in PASS_THROUGH:
                self._annotate_pass_through(node)
        return model

    def validate(self, model: GraphModule) -> None:
        pass


class X86ResidualQuantizer(X86InductorQuantizer):
    """torchao's X86InductorQuantizer, plus quantized inputs for the residual add.

    X86InductorQuantizer annotates conv -> add -> relu as one pattern for Inductor's fused
    conv-add kernel: the conv output feeding the add stays float. In the ONNX export that
    conv has no QuantizeLinear after it, so ONNX Runtime leaves it in FP32 (4 to 6 convs of a
    ResNet). Observing the add's inputs (each with the activation spec, as the eager x86
    qconfig does) quantizes those conv outputs too; Inductor still lowers every conv to int8.
    """

    def __init__(self, activation: QuantizationSpec) -> None:
        super().__init__()
        self.activation = activation

    def annotate(self, model: GraphModule) -> GraphModule:
        model = super().annotate(model)
        for node in model.graph.nodes:
            if node.op != "call_function" or node.target not in ADDS:
                continue
            annotation = node.meta.get(ANNOTATION)
            if annotation is None:
                continue
            for operand in node.args[:2]:
                if not isinstance(operand, Node) or operand in annotation.input_qspec_map:
                    continue
                produced = operand.meta.get(ANNOTATION)
                if produced is not None and produced.output_qspec is not None:
                    annotation.input_qspec_map[operand] = produced.output_qspec
                else:
                    annotation.input_qspec_map[operand] = self.activation
        return model


def quantizer_for(
    plan: QuantPlan | QConfigSpec, qat: bool, reduce_range: bool, fuse_residual_add: bool = False
) -> Quantizer:
    """The torchao Quantizer of a qconfig; `reduce_range`: 7-bit activations for the default
    x86 config on CPUs without VNNI (u8 x s8 pair sums saturate int16 there);
    `fuse_residual_add`: the conv feeding each residual add keeps a float output, so Inductor
    lowers conv + add [+ relu] as one int8 conv (x86: torchao's own annotation)."""
    plan = plan_of(plan)
    if plan.scheme.widths:
        return PowerOfTwoQuantizer(plan, qat, fuse_residual_add)
    config = get_default_x86_inductor_quantization_config(is_qat=qat, reduce_range=reduce_range)
    config = memory_order_activations(config)
    quantizer = (
        X86InductorQuantizer()
        if fuse_residual_add
        else X86ResidualQuantizer(config.input_activation)
    )
    quantizer.set_global(config)
    return quantizer


def memory_order_activations(config: QuantizationConfig) -> QuantizationConfig:
    """torchao's x86 QAT config with its fused activation fake-quant reading channels_last
    activations in memory order (PT2EMemoryOrderFakeQuantize: the same arguments and
    numbers); PTQ's observers are kept."""
    spec = config.input_activation
    if spec is None:
        return config
    ctr = memory_order_constructor(
        spec.observer_or_fake_quant_ctr, FusedMovingAvgObsFakeQuantize, PT2EMemoryOrderFakeQuantize
    )
    activation = dataclasses.replace(spec, observer_or_fake_quant_ctr=ctr)
    output = activation if config.output_activation is spec else config.output_activation
    return dataclasses.replace(config, input_activation=activation, output_activation=output)
