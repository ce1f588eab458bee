"""MemoryOrderFakeQuantize (quant/eager/observers.py): the engines' QAT activation fake-quant
reading channels_last activations in memory order computes torch's own numbers."""

from __future__ import annotations

import pytest
import torch
from torch.ao.quantization import FusedMovingAvgObsFakeQuantize, get_default_qat_qconfig

from labquant.quant.eager.observers import MemoryOrderFakeQuantize
from labquant.quant.eager.qconfigs import eager_qconfig
from labquant.quant.qconfigs import engine_default


@pytest.mark.parametrize("engine", ["x86", "qnnpack"])
def test_same_outputs_gradients_and_qparams_as_torchs_in_the_input_layout(engine):
    ours = eager_qconfig(engine_default(engine, engine), qat=True).activation()
    theirs = get_default_qat_qconfig(engine).activation()
    assert type(ours) is MemoryOrderFakeQuantize and type(theirs) is FusedMovingAvgObsFakeQuantize
    assert (ours.quant_min, ours.quant_max) == (theirs.quant_min, theirs.quant_max)
    generator = torch.Generator().manual_seed(0)
    for step in range(3):  # the moving average over steps, then a frozen range
        if step == 2:
            ours.disable_observer()
            theirs.disable_observer()
        x = 3 * torch.randn(4, 8, 6, 6, generator=generator) + step
        for memory_format in (torch.channels_last, torch.contiguous_format):
            a = x.contiguous(memory_format=memory_format).requires_grad_()
            b = x.contiguous(memory_format=memory_format).requires_grad_()
            out, want = ours(a), theirs(b)
            assert torch.equal(out, want)
            assert out.is_contiguous(memory_format=memory_format)
            (out * x).sum().backward()
            (want * x).sum().backward()
            assert torch.equal(a.grad, b.grad)
            assert torch.equal(ours.scale, theirs.scale)
            assert torch.equal(ours.zero_point, theirs.zero_point)


def test_a_channels_last_activation_is_not_copied_to_contiguous():
    """The fused kernel receives the NHWC view (a contiguous tensor over the same memory)."""
    fake_quant = eager_qconfig(engine_default("x86", "x86"), qat=True).activation()
    seen = []
    original = torch.fused_moving_avg_obs_fake_quant

    def spy(x, *args):
        seen.append(x)
        return original(x, *args)

    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    torch.fused_moving_avg_obs_fake_quant = spy
    try:
        fake_quant(x)
    finally:
        torch.fused_moving_avg_obs_fake_quant = original
    assert len(seen) == 1 and seen[0].is_contiguous()
    assert seen[0].data_ptr() == x.data_ptr() and seen[0].shape == (2, 3, 3, 4)


def test_the_pt2e_x86_qat_config_is_torchaos_with_the_same_numbers():
    from torchao.quantization.pt2e.fake_quantize import (
        FusedMovingAvgObsFakeQuantize as TorchaoFused,
    )
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config,
    )

    from labquant.quant.pt2e.observers import PT2EMemoryOrderFakeQuantize
    from labquant.quant.pt2e.quantizer import quantizer_for

    config = quantizer_for(engine_default("x86", "x86"), qat=True, reduce_range=False)
    config = config.global_config
    assert config.output_activation is config.input_activation
    ours = config.input_activation.observer_or_fake_quant_ctr()
    theirs = get_default_x86_inductor_quantization_config(is_qat=True)
    theirs = theirs.input_activation.observer_or_fake_quant_ctr()
    assert type(ours) is PT2EMemoryOrderFakeQuantize and type(theirs) is TorchaoFused
    generator = torch.Generator().manual_seed(1)
    for step in range(3):
        x = (2 * torch.randn(4, 8, 6, 6, generator=generator) + step).contiguous(
            memory_format=torch.channels_last
        )
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, want = ours(a), theirs(b)
        assert torch.equal(out, want) and out.is_contiguous(memory_format=torch.channels_last)
        (out * x).sum().backward()
        (want * x).sum().backward()
        assert torch.equal(a.grad, b.grad) and torch.equal(ours.scale, theirs.scale)
    ptq = quantizer_for(engine_default("x86", "x86"), qat=False, reduce_range=False)
    assert ptq.global_config.input_activation.observer_or_fake_quant_ctr.p.func.__name__ == (
        "HistogramObserver"
    )  # PTQ's observer is kept
