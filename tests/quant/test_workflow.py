"""prepare / convert on a real (tiny) QuantizableResNet: PTQ and QAT, x86 and pot."""

from __future__ import annotations

import math

import pytest
import torch
import torch.ao.nn.intrinsic as nni
import torch.ao.nn.intrinsic.qat as nniqat
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.quantization import FakeQuantize, FusedMovingAvgObsFakeQuantize

from labquant.models.resnet import small_resnet
from labquant.quant.eager import workflow as wf
from labquant.quant.eager.observers import EagerPotObserver
from tests.conftest import backend_for, get_qconfig

MAX_SHIFT = 7  # not the default 8, so a kwarg lost on the way to the observer shows up
LAYERS = {  # every conv / linear of small_resnet(layers=(1, 1))
    "conv1",
    "layer1.0.conv1",
    "layer1.0.conv2",
    "layer2.0.conv1",
    "layer2.0.conv2",
    "layer2.0.downsample.0",
    "fc",
}


@pytest.fixture(autouse=True)
def _restore_engine():
    engine = torch.backends.quantized.engine
    yield
    torch.backends.quantized.engine = engine


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return small_resnet(layers=(1, 1), base_width=8)


def images(n: int, seed: int) -> Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def sqnr_db(ref: Tensor, out: Tensor) -> float:
    return 10 * math.log10(float(ref.pow(2).mean() / (ref - out).pow(2).mean()))


def shift_of_or_none(scale: float) -> int | None:
    """n for scale == 2**-n exactly (frexp's mantissa of a power of two is 0.5), else None."""
    mantissa, exponent = math.frexp(scale)
    return 1 - exponent if mantissa == 0.5 else None


def shift_of(scale: float) -> int:
    shift = shift_of_or_none(scale)
    assert shift is not None, f"{scale} is not a power of two"
    return shift


def pot_qat_model(steps: int = 2) -> nn.Module:
    wf.set_engine(backend_for("pot"))
    model = wf.prepare_qat(tiny_model(), get_qconfig("pot", qat=True, max_shift_amount=MAX_SHIFT))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(steps):
        loss = F.cross_entropy(model(images(8, step)), torch.arange(8) % 10)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def fake_quants(model: nn.Module) -> dict[str, FakeQuantize]:
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantize)}


# ---------------------------------------------------------------- QAT


def test_pot_qat_trains_on_exactly_the_scales_convert_uses():
    model = pot_qat_model()
    fqs = fake_quants(model)
    assert fqs and not any(isinstance(m, FusedMovingAvgObsFakeQuantize) for m in model.modules())
    for fq in fqs.values():
        assert isinstance(fq.activation_post_process, EagerPotObserver)
        assert fq.activation_post_process.max_shift_amount == MAX_SHIFT

    # The usual end of QAT: freeze ranges and BN, train on. Every fake-quant output must lie
    # on its scale's grid, i.e. training really uses the scale recorded here.
    wf.disable_observers(model)
    wf.freeze_bn_stats(model)
    off_grid: list[str] = []

    def check_grid(module: FakeQuantize, _inputs: tuple, out: Tensor) -> None:
        grid = out.detach() / module.scale
        if not torch.equal(grid, grid.round()):
            off_grid.append(str(module))

    hooks = [fq.register_forward_hook(check_grid) for fq in fqs.values()]
    F.cross_entropy(model(images(8, 99)), torch.arange(8) % 10).backward()
    for hook in hooks:
        hook.remove()
    assert not off_grid
    trained = {name: float(fq.scale) for name, fq in fqs.items()}
    assert wf.fake_quant_scales(model) == trained

    int8 = wf.convert_int8(model)
    layers = dict(wf.quantized_layers(int8))
    assert set(layers) == LAYERS
    for name, layer in layers.items():
        assert layer.scale == trained[f"{name}.activation_post_process"], name
        assert layer.weight().q_scale() == trained[f"{name}.weight_fake_quant"], name
        assert layer.zero_point == 128 and layer.weight().q_zero_point() == 0

    # Every scale of the int8 model (stub, convs, linear, residual adds) is 2**-n, n <= MAX_SHIFT.
    checked = 0
    for name, module in int8.named_modules():
        scales = [module.scale] if hasattr(module, "scale") else []
        if name in layers:
            scales.append(module.weight().q_scale())
        for scale in scales:
            assert 0 <= shift_of(float(scale)) <= MAX_SHIFT, (name, scale)
            checked += 1
        if hasattr(module, "scale"):  # also the add / quant stub scales match training
            assert float(module.scale) == trained[f"{name}.activation_post_process"], name
    assert checked == 2 * len(LAYERS) + 1 + 2  # + quant stub + two residual adds

    # The int8 kernels compute what the fake-quant model simulated, up to rounding flips that
    # propagate: measured 29.2-29.9 dB, at most 4 LSBs (of 2**-7) apart on the logits.
    x = images(32, 123)
    with torch.no_grad():
        simulated = model.eval()(x)
        measured = sqnr_db(simulated, int8(x))
    assert measured > 22, measured


def test_qat_records_clamping_in_the_checkpoint():
    model = pot_qat_model(steps=1)
    state = model.state_dict()
    assert "conv1.weight_fake_quant.activation_post_process.clamp_underflow" in state
    # Kaiming-initialised 3x3 weights need ~2**-8 > 2**-MAX_SHIFT: the weights clamp.
    suffix = "weight_fake_quant.activation_post_process.clamp_underflow"
    assert any(bool(v) for k, v in state.items() if k.endswith(suffix))


# ---------------------------------------------------------------- PTQ

# Random weights and inputs: the logits' SQNR, int8 vs the float model, over seeds 0-4 of this
# setup measured pot 16-32 dB (log-domain rounding can clip a range by up to 1/sqrt(2) per
# layer) and x86 31-36 dB; the bounds leave a few dB of margin for the fixed seed used here.
PTQ_MIN_SQNR_DB = {"pot": 12.0, "x86": 25.0}


@pytest.mark.parametrize("name", ["pot", "x86"])
def test_ptq_int8_matches_float_and_leaves_the_original_alone(name):
    wf.set_engine(backend_for(name))
    model = wf.prepare_ptq(tiny_model(), get_qconfig(name, qat=False))
    assert wf.is_prepared(model) and not model.training
    x = images(32, 1000)
    with torch.no_grad():
        for seed in range(3):
            model(images(16, seed))
        reference = model(x)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        int8 = wf.convert_int8(model)
        after = {k: v.clone() for k, v in model.state_dict().items()}  # x86 histograms move
        out = int8(x)
        again = model(x)

    measured = sqnr_db(reference, out)
    assert measured > PTQ_MIN_SQNR_DB[name], f"{name}: {measured:.1f} dB"
    assert set(dict(wf.quantized_layers(int8))) == LAYERS
    assert not wf.is_prepared(int8)

    # The original is still the prepared float model.
    assert wf.is_prepared(model)
    assert type(model.conv1) is nni.ConvReLU2d and model.conv1[0].weight.dtype == torch.float32
    assert torch.equal(again, reference)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)

    if name == "pot":
        for layer_name, layer in wf.quantized_layers(int8):
            for scale in (layer.scale, layer.weight().q_scale()):
                assert 0 <= shift_of(scale) <= 8, layer_name


def test_is_prepared():
    model = tiny_model()
    assert not wf.is_prepared(model)  # FloatFunctional's Identity post-process doesn't count
    wf.prepare_ptq(model, get_qconfig("pot", qat=False))
    assert wf.is_prepared(model)


# ---------------------------------------------------------------- freezing


def observer_ranges(model: nn.Module) -> list[tuple[float, float]]:
    return [
        (float(m.min_val), float(m.max_val))
        for m in model.modules()
        if isinstance(m, EagerPotObserver)
    ]


def test_disable_observers_freezes_ranges_and_enable_resumes():
    wf.set_engine(backend_for("pot"))
    model = wf.prepare_qat(tiny_model(), get_qconfig("pot", qat=True))
    model(images(8, 0))
    frozen = observer_ranges(model)
    wf.disable_observers(model)
    model(10 * images(8, 1))
    assert observer_ranges(model) == frozen
    wf.enable_observers(model)
    model(10 * images(8, 1))
    assert observer_ranges(model) != frozen


def test_freeze_bn_stats_stops_running_stats_in_train_mode():
    wf.set_engine(backend_for("pot"))
    model = wf.prepare_qat(tiny_model(), get_qconfig("pot", qat=True))
    bns = [m.bn for m in model.modules() if isinstance(m, nniqat.ConvBn2d)]  # ConvBnReLU too
    assert len(bns) == len(LAYERS) - 1  # every conv, not fc

    def running_means() -> list[Tensor]:
        return [bn.running_mean.clone() for bn in bns]

    start = running_means()
    model(images(8, 0) + 1)
    moved = running_means()
    assert all(not torch.equal(a, b) for a, b in zip(start, moved, strict=True))
    wf.freeze_bn_stats(model)
    assert model.training
    model(images(8, 1) + 3)
    assert all(torch.equal(a, b) for a, b in zip(moved, running_means(), strict=True))


def test_fake_quant_scales_of_torchs_fused_qat_default():
    """x86 QAT: fused fake-quants, per-channel weights logged as their largest scale."""
    wf.set_engine(backend_for("x86"))
    model = wf.prepare_qat(tiny_model(), get_qconfig("x86", qat=True))
    model(images(8, 0))
    scales = wf.fake_quant_scales(model)
    assert {f"{name}.weight_fake_quant.max" for name in LAYERS} <= set(scales)
    assert "conv1.activation_post_process" in scales
    assert all(math.isfinite(s) and s > 0 for s in scales.values())
    assert any(shift_of_or_none(s) is None for s in scales.values())  # not powers of two
