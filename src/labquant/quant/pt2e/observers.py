"""torchao observers and fake quantization for power-of-two scales.

PT2E's `convert_pt2e` refuses a mix of torch.ao and torchao observer classes, so the PT2E pot
observers subclass torchao's; their statistics and scale rules are quant/pot.py's
`PotObserverCore`, the same the eager observers end in, so both backends give the same scale
and zero point for the same statistics.
"""

from __future__ import annotations

from typing import Any

import torch
from torchao.quantization.pt2e import FakeQuantize, MinMaxObserver, PerChannelMinMaxObserver
from torchao.quantization.pt2e.fake_quantize import FusedMovingAvgObsFakeQuantize

from labquant.quant.learned import LearnedThresholdCore
from labquant.quant.pot import MemoryOrderForward, PotObserverCore


class PT2EPotObserver(PotObserverCore, MinMaxObserver):
    """Symmetric per-tensor activation observer whose scale is 2**-n (torchao).

    `unsigned=True`: a post-ReLU activation, 0..2**b-1 with zero point 0.
    """

    def __init__(
        self,
        dtype: torch.dtype = torch.uint8,
        qscheme: torch.qscheme = torch.per_tensor_symmetric,
        max_shift_amount: int = 8,
        unsigned: bool = False,
        exponent: str = "round",
        range_method: str = "minmax",
        percentile: float = 99.99,
        weights: bool = False,
        scheme: Any = None,
        **kwargs: Any,
    ) -> None:
        if unsigned:  # torch's symmetric qscheme forces zero point 128 / 0 by dtype
            qscheme = torch.per_tensor_affine
        super().__init__(dtype=dtype, qscheme=qscheme, **kwargs)
        self.setup_pot(
            max_shift_amount, unsigned, exponent, range_method, percentile, weights,
            one_scale=True, scheme=scheme,
        )  # fmt: skip


class PT2EPotWeightObserver(PotObserverCore, PerChannelMinMaxObserver):
    """Power-of-two weight scales, always written per output channel.

    `one_scale=True` (granularity=per_tensor): one 2**-n for the tensor, repeated per channel:
    the integer semantics are those of one scale per tensor (eager pot's), and the per-channel
    form is what Inductor's x86 int8 conv lowering and ONNX Runtime's QLinearConv fusion match
    (a per-tensor weight dequant stays an FP32 conv there). `one_scale=False`: one shift per
    output channel.
    """

    def __init__(
        self,
        max_shift_amount: int = 8,
        exponent: str = "round",
        range_method: str = "minmax",
        percentile: float = 99.99,
        one_scale: bool = True,
        scheme: Any = None,
        **kwargs: Any,
    ) -> None:
        kwargs.update(dtype=torch.int8, qscheme=torch.per_channel_symmetric, ch_axis=0)
        kwargs.pop("unsigned", None)
        kwargs.pop("weights", None)
        super().__init__(**kwargs)
        self.setup_pot(
            max_shift_amount, False, exponent, range_method, percentile, True, one_scale, scheme
        )


class PT2EPotFakeQuantize(FakeQuantize):
    """torchao FakeQuantize over the pot observers (a fused moving-average fake quant would
    compute its own, non-power-of-two scale in C++ and never call `calculate_qparams`)."""


class PT2ELearnedPotFakeQuantize(LearnedThresholdCore, PT2EPotFakeQuantize):
    """`qconfig.learn_scales=true`: a torchao FakeQuantize whose log2 threshold is a parameter
    (quant/learned.py). prepare_qat_pt2e inserts each fake-quantizer as a submodule of the
    exported GraphModule (`activation_post_process_<k>`, called by a call_module node), so the
    parameter is one of the GraphModule's own (`activation_post_process_<k>.log2_threshold`):
    `parameters()`, `state_dict()`, Lightning's checkpoints and DDP's gradient averaging reach
    it as they reach the weights. (A get_attr constant of the exported graph would not be
    trained: torch.export lifts those into inputs.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setup_learned()


class PT2EMemoryOrderFakeQuantize(MemoryOrderForward, FusedMovingAvgObsFakeQuantize):
    """torchao's fused per-tensor activation fake-quant (the x86 QAT config's) reading
    channels_last activations in memory order (quant/pot.py's `MemoryOrderForward`)."""
