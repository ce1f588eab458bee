"""Learned power-of-two exponents (TQT / LSQ): QAT that trains each fake-quantizer's range.

At 4 bits the clipping range decides the accuracy, and min/max or a one-off search is a poor
guess at it. With `qconfig.learn_scales=true` every weight and activation fake-quantizer holds
a parameter, `log2_threshold` (log2 of the value its codes reach: per output channel for
per-channel weights, else one), as TQT does (Jain et al. 2020; Xilinx graffitist, AMD Quark's
`TQTObserver`):

- start: the observers see the calibration batches (`quant.calibration_batches`, the PTQ
  calibration set), and each threshold starts at their choice (the qconfig's `range` method),
  in the middle of that exponent's bucket;
- forward: the shift `n = rule(log2(divisor) - log2_threshold)` (the qconfig's `exponent`
  rule), clamped to 0..max_shift_amount, so every step sees an exact scale `2**-n`; the
  threshold is kept within half a bucket of that range (it never drifts where no gradient
  reaches it) and the observer's clamp flags record when it pressed against an end;
- backward: a straight-through estimator through the rounding of `n`
  (d scale / d log2_threshold = scale * ln 2), and LSQ's step-size gradient (Esser et al.
  2020) with its gradient scale `1 / sqrt(elements * positive codes)` (elements: of one
  channel for per-channel weights, of one image for activations), as torch's own learnable
  fake-quant kernel (`_fake_quantize_learnable_per_*_affine`) computes it;
- freeze: `enable_observer(False)` (the QAT schedule at `quant.freeze_observer_epoch`, and
  every validation pass) fixes the exponents at the threshold of that moment; the parameter
  stays in the graph with a zero gradient, so DDP's gradient reduction sees every parameter at
  every step;
- `calculate_qparams()` (what both backends' convert reads) returns the exponents training
  ended with.

`LearnedThresholdCore` is mixed in before each backend's own FakeQuantize (eager: torch.ao's,
quant/eager/observers.py; pt2e: torchao's, quant/pt2e/observers.py); their observers are
quant/pot.py's `PotObserverCore`, so both backends start from the same exponents and learn them
with the same arithmetic.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from labquant.quant.names import LEARNED_THRESHOLD
from labquant.quant.pot import threshold_divisor, zero_point_of
from labquant.quant.scheme.power_of_two import EXPONENT_ROUNDING

# Where a threshold starts inside its exponent's bucket: the middle, for each rule.
_CENTRE = {"round": 0.0, "ceil": 0.5, "floor": -0.5}


def lsq_grad_scale(elements: int, positive_codes: int) -> float:
    """LSQ's gradient scale `1 / sqrt(N * Q_P)`: the step size's gradient summed over N
    elements would otherwise dwarf each weight's."""
    return 1.0 / math.sqrt(max(1, int(elements)) * max(1, int(positive_codes)))


def learned_shift(
    log2_threshold: Tensor, log2_divisor: float, max_shift_amount: int, exponent: str
) -> Tensor:
    """The integer shift n (a float tensor) the exponent rule picks for a threshold."""
    raw = (log2_divisor - log2_threshold.detach()).clamp(0, max_shift_amount)
    return EXPONENT_ROUNDING[exponent](raw)


def learned_scale(
    log2_threshold: Tensor, log2_divisor: float, max_shift_amount: int, exponent: str
) -> Tensor:
    """`2**-n` exactly in the forward; in the backward d scale / d log2_threshold is
    scale * ln 2 (a straight-through estimator through the rounding of n)."""
    shift = learned_shift(log2_threshold, log2_divisor, max_shift_amount, exponent)
    log2_scale = log2_threshold - log2_divisor
    log2_scale = log2_scale + (-shift - log2_scale).detach()
    return torch.exp2(log2_scale)


def fake_quantize(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    quant_min: int,
    quant_max: int,
    grad_scale: float,
    ch_axis: int | None,
) -> Tensor:
    """torch's learnable fake quant (LSQ's gradients for x and the scale) at `scale`, one
    value or one per channel along `ch_axis`."""
    zero_point = zero_point.to(x.dtype).reshape(scale.shape)
    if ch_axis is None:
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, scale.reshape(1), zero_point.reshape(1), quant_min, quant_max, grad_scale
        )
    return torch._fake_quantize_learnable_per_channel_affine(
        x, scale, zero_point, ch_axis, quant_min, quant_max, grad_scale
    )


class LearnedThresholdCore:
    """A FakeQuantize (mixed in before the backend's own) whose exponent is learned.

    Until `start_learning` it is the plain power-of-two FakeQuantize it is mixed into (the
    calibration pass). Host mirrors of the switches keep the forward free of device-to-host
    syncs; they are refreshed from the buffers when a checkpoint loads.
    """

    activation_post_process: Any
    scale: Tensor
    zero_point: Tensor
    quant_min: int
    quant_max: int
    ch_axis: int
    is_per_channel: bool
    observer_enabled: Tensor
    fake_quant_enabled: Tensor

    def setup_learned(self) -> None:
        """Called by each subclass's __init__ after its FakeQuantize's."""
        self.register_parameter(LEARNED_THRESHOLD, nn.Parameter(torch.zeros(0)))  # type: ignore[attr-defined]
        self.register_buffer("learning", torch.tensor(False))  # type: ignore[attr-defined]
        self.register_buffer("frozen_log2_threshold", torch.zeros(0))  # type: ignore[attr-defined]
        self._learning = False
        self._observing = True
        self._fake_quantizing = True
        self._sample_shape: tuple[int, ...] | None = None
        self.grad_scale = 1.0

    # -- the rules' constants, read from the observer's settings ----------------------------
    @property
    def _observer(self) -> Any:
        return self.activation_post_process

    @property
    def log2_divisor(self) -> float:
        return math.log2(threshold_divisor(self._observer))

    @property
    def max_shift_amount(self) -> int:
        return int(self._observer.max_shift_amount)

    @property
    def exponent(self) -> str:
        return str(self._observer.exponent)

    @property
    def positive_codes(self) -> int:
        return int(self.quant_max) - zero_point_of(self._observer)

    # -- start ------------------------------------------------------------------------------
    def start_learning(self) -> None:
        """The threshold starts at the observer's exponents (after the calibration batches),
        in the middle of each one's bucket, and the learned forward takes over."""
        scale, _ = self._observer.calculate_qparams()
        scale = scale.detach().reshape(-1).to(torch.float32)
        if not self._observer.channel_scales:
            scale = scale[:1]  # one exponent for the tensor (pt2e writes it per channel)
        shift = -torch.log2(scale)
        start = self.log2_divisor - shift - _CENTRE[self.exponent]
        self.log2_threshold.data = start.clone()
        self.frozen_log2_threshold.resize_(start.shape).copy_(start)
        shape = self._sample_shape or (1,)
        if self._observer.weights:
            channels = shape[self.ch_axis] if self._observer.channel_scales else 1
            elements = math.prod(shape) // max(1, channels)
        else:
            elements = math.prod(shape[1:]) if len(shape) > 1 else math.prod(shape)
        self.grad_scale = lsq_grad_scale(elements, self.positive_codes)
        self.learning.fill_(True)
        self._learning = True

    # -- switches ---------------------------------------------------------------------------
    def enable_observer(self, enabled: bool = True) -> None:
        """Off: the exponents stop moving (the freeze epoch, validation) at today's value."""
        enabled = bool(enabled)
        if self._learning and self._observing and not enabled:
            with torch.no_grad():
                self.frozen_log2_threshold.resize_(self.log2_threshold.shape)
                self.frozen_log2_threshold.copy_(self.log2_threshold)
        super().enable_observer(enabled)  # type: ignore[misc]
        self._observing = enabled

    def enable_fake_quant(self, enabled: bool = True) -> None:
        super().enable_fake_quant(enabled)  # type: ignore[misc]
        self._fake_quantizing = bool(enabled)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any):
        """Thresholds and their frozen copy have as many entries as the checkpoint's."""
        for name in (LEARNED_THRESHOLD, "frozen_log2_threshold"):
            saved = state_dict.get(f"{prefix}{name}")
            if saved is not None:
                getattr(self, name).data = torch.empty_like(saved)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]
        self._learning = bool(self.learning)
        self._observing = bool(self.observer_enabled[0] == 1)
        self._fake_quantizing = bool(self.fake_quant_enabled[0] == 1)

    # -- forward ----------------------------------------------------------------------------
    def effective_log2_threshold(self) -> Tensor:
        """The threshold the forward uses now: the parameter while it learns, its frozen copy
        once the exponents stopped (still connected to the parameter, with a zero gradient)."""
        if self._observing:
            return self.log2_threshold
        return self.frozen_log2_threshold + 0.0 * self.log2_threshold

    def _keep_in_range(self) -> None:
        """Within half a bucket of the shifts the hardware has; the observer's sticky clamp
        flags say the range pressed against an end (as a clamped min/max scale would)."""
        with torch.no_grad():
            theta = self.log2_threshold
            raw = self.log2_divisor - theta
            observer = self._observer
            observer.clamp_overflow |= (raw < -0.5).any()
            observer.clamp_underflow |= (raw > self.max_shift_amount + 0.5).any()
            low = self.log2_divisor - self.max_shift_amount - 0.5
            theta.clamp_(low, self.log2_divisor + 0.5)

    def learned_scales(self) -> Tensor:
        """The scale of each channel the module quantizes (one value per tensor)."""
        scale = learned_scale(
            self.effective_log2_threshold(), self.log2_divisor, self.max_shift_amount, self.exponent
        )
        channels = self.scale.numel()
        if self.is_per_channel and scale.numel() != channels:
            scale = scale.expand(channels).contiguous()
        return scale

    def forward(self, x: Tensor) -> Tensor:
        if not self._learning:
            self._sample_shape = tuple(x.shape)
            return super().forward(x)  # type: ignore[misc]
        if self._observing and torch.is_grad_enabled():
            self._keep_in_range()
        scale = self.learned_scales()
        self.scale.copy_(scale.detach())  # what the bias fake-quant and the logs read
        if not self._fake_quantizing:
            return x
        return fake_quantize(
            x, scale, self.zero_point, self.quant_min, self.quant_max, self.grad_scale,
            self.ch_axis if self.is_per_channel else None,
        )  # fmt: skip

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        """What convert ships: the exponents training ended with."""
        if not self._learning:
            return super().calculate_qparams()  # type: ignore[misc]
        scale = self.learned_scales().detach().to(torch.float32)
        return scale.reshape(self.scale.shape).clone(), self.zero_point.clone()

    def threshold_summary(self) -> float:
        """The log2 threshold the forward uses, as one number (per channel: their mean)."""
        return float(self.effective_log2_threshold().detach().mean())


def start_learning(net: nn.Module, batches: Any) -> int:
    """Run `batches` through `net` in eval mode, without gradients (the observers calibrate;
    BatchNorm keeps its statistics), then start every learned threshold at the observers'
    choice; returns how many. `net.eval()` / `net.train()` are the backend's own (pt2e's
    exported graphs switch their BatchNorm nodes)."""
    learned = [m for m in net.modules() if isinstance(m, LearnedThresholdCore)]
    if not learned:
        return 0
    device = next(net.parameters()).device
    net.eval()
    with torch.no_grad():
        for batch in batches:
            net(batch.to(device))
    net.train()  # QAT fine-tunes next
    for module in learned:
        module.start_learning()
    return len(learned)


def learned_thresholds(named_modules: Any) -> dict[str, float]:
    """The log2 threshold of every learned fake-quantizer by its layer name (TensorBoard's
    per-layer scalars); `named_modules`: (layer name, fake-quant module) pairs."""
    return {
        name: module.threshold_summary()
        for name, module in named_modules
        if isinstance(module, LearnedThresholdCore) and module._learning
    }
