"""scale_approximate / clamp_status / EagerPotObserver on plain tensors."""

from __future__ import annotations

import copy
import math
import pickle
import warnings

import pytest
import torch
from torch.ao.quantization import FakeQuantize

from labquant.errors import ConfigError
from labquant.quant.eager.observers import (
    EagerPotFakeQuantize,
    EagerPotObserver,
    clamp_status,
    scale_approximate,
)
from tests.sync_spy import HostReads


def assert_power_of_two(scale: torch.Tensor, max_shift_amount: int = 8) -> None:
    """Exactly 2**-n, 0 <= n <= max_shift_amount: frexp's mantissa of a power of two is 0.5."""
    scale = scale.reshape(-1)
    assert scale.dtype == torch.float32
    assert torch.isfinite(scale).all(), scale
    mantissa, exponent = torch.frexp(scale)
    assert (mantissa == 0.5).all(), scale
    shifts = 1 - exponent  # 2**-n == 0.5 * 2**(1-n)
    assert ((shifts >= 0) & (shifts <= max_shift_amount)).all(), scale


# ---------------------------------------------------------------- scale_approximate


def test_scale_approximate_gives_exact_powers_of_two_within_bounds():
    raw = torch.logspace(-40, 10, steps=501, base=2.0) * 1.2345
    for max_shift in (0, 4, 8, 16, 31):
        out = scale_approximate(raw, max_shift)
        assert out.shape == raw.shape
        assert_power_of_two(out, max_shift)
        assert out.min() == 2.0**-max_shift and out.max() == 1.0


@pytest.mark.parametrize(
    ("raw", "max_shift", "expected"),
    [
        (0.3, 8, 0.25),  # -log2 = 1.74 -> 2
        (0.36, 8, 0.5),  # -log2 = 1.47 -> 1 (log-domain rounding, not linear: 0.36 is nearer 0.25)
        (0.0009, 8, 2.0**-8),  # -log2 = 10.1 -> clamped to 8
        (0.0009, 10, 2.0**-10),
        (2.0**-5, 8, 2.0**-5),  # already a power of two: unchanged
        (1.0, 8, 1.0),
        (3.0, 8, 1.0),  # needs a scale above 1: clamped
    ],
)
def test_scale_approximate_rounds_in_the_log_domain(raw, max_shift, expected):
    assert scale_approximate(torch.tensor([raw]), max_shift).item() == expected


def test_scale_approximate_degenerate_inputs_stay_finite():
    raw = torch.tensor([0.0, 1e-45, 1e-30, float("inf"), 1e30, float("nan"), -0.5])
    out = scale_approximate(raw, 8)
    assert_power_of_two(out, 8)
    assert out.tolist() == [2.0**-8, 2.0**-8, 2.0**-8, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("bad", [-1, 32, 2.5, True, "8", None])
def test_bad_max_shift_amount_is_a_config_error(bad):
    with pytest.raises(ConfigError, match=r"qconfig\.max_shift_amount"):
        scale_approximate(torch.tensor([0.1]), bad)
    with pytest.raises(ConfigError, match=r"qconfig\.max_shift_amount"):
        EagerPotObserver(max_shift_amount=bad)


def test_clamp_status_names_the_side_that_was_clamped():
    assert clamp_status(torch.tensor([0.01]), 8) == "ok"
    assert clamp_status(torch.tensor([3.0]), 8) == "overflow"  # -log2 < 0: saturates
    assert clamp_status(torch.tensor([0.0009]), 8) == "underflow"  # finer than 2**-8
    assert clamp_status(torch.tensor([0.0009]), 11) == "ok"
    # clamped before rounding: -log2 = 10.1 > 10 counts, though it would round to 10 anyway
    assert clamp_status(torch.tensor([0.0009]), 10) == "underflow"
    assert clamp_status(torch.tensor([0.0]), 8) == "underflow"
    assert clamp_status(torch.tensor([float("inf")]), 8) == "overflow"
    assert clamp_status(torch.tensor([float("nan")]), 8) == "overflow"
    assert clamp_status(torch.tensor([0.0009, 3.0]), 8) == "overflow"


# ---------------------------------------------------------------- EagerPotObserver


def observe(x: torch.Tensor, **kwargs) -> tuple[EagerPotObserver, torch.Tensor, torch.Tensor]:
    obs = EagerPotObserver(**kwargs)
    obs(x)
    scale, zero_point = obs.calculate_qparams()
    return obs, scale, zero_point


@pytest.mark.parametrize(("dtype", "zero_point"), [(torch.quint8, 128), (torch.qint8, 0)])
def test_observer_scale_is_power_of_two_with_symmetric_zero_point(dtype, zero_point):
    x = torch.randn(1000) * 0.7
    obs, scale, zp = observe(x, dtype=dtype)
    assert_power_of_two(scale)
    assert zp.tolist() == [zero_point]
    assert obs.qscheme == torch.per_tensor_symmetric
    assert (obs.quant_min, obs.quant_max) == ((0, 255) if dtype == torch.quint8 else (-128, 127))
    raw = 2 * x.abs().max() / 255  # MinMaxObserver's symmetric scale
    assert scale.item() == 2.0 ** -round(-math.log2(raw.item()))
    assert obs.clamp_status == "ok"


def test_observer_flags_overflow_and_underflow_and_keeps_them():
    obs, scale, _ = observe(torch.tensor([-500.0, 500.0]))
    assert scale.item() == 1.0 and obs.clamp_status == "overflow"
    assert bool(obs.clamp_overflow) and not bool(obs.clamp_underflow)

    obs, scale, _ = observe(torch.tensor([-1e-4, 1e-4]))
    assert scale.item() == 2.0**-8 and obs.clamp_status == "underflow"
    assert bool(obs.clamp_underflow) and not bool(obs.clamp_overflow)

    # sticky: a later in-range batch does not clear the record
    obs, _, _ = observe(torch.tensor([-1e-4, 1e-4]), max_shift_amount=8)
    obs(torch.tensor([-1.0, 1.0]))
    assert obs.calculate_qparams()[0].item() == 2.0**-7
    assert obs.clamp_status == "underflow"


@pytest.mark.parametrize(
    "x",
    [
        torch.zeros(64),
        torch.full((64,), 3.0),
        torch.full((64,), -0.02),
        torch.empty(0),
        torch.tensor([1.0, float("nan"), -2.0]),
        torch.full((8,), float("nan")),
        torch.tensor([1.0, float("inf")]),
        torch.tensor([float("-inf"), 0.5]),
    ],
    ids=["zeros", "const", "neg-const", "empty", "some-nan", "all-nan", "inf", "-inf"],
)
@pytest.mark.parametrize("dtype", [torch.quint8, torch.qint8])
def test_observer_degenerate_statistics_give_finite_scales(x, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "must run observer first" warning included
        obs, scale, zp = observe(x, dtype=dtype)
    assert_power_of_two(scale)
    assert zp.tolist() == [128 if dtype == torch.quint8 else 0]
    if torch.isinf(x).any():
        assert obs.clamp_status == "overflow"


def test_observer_without_data_and_nan_batch_do_not_poison_the_range():
    obs = EagerPotObserver()
    assert obs.calculate_qparams()[0].item() == 1.0  # nothing seen yet
    obs(torch.full((4,), float("nan")))
    obs(torch.tensor([-0.3, 0.3]))
    assert obs.calculate_qparams()[0].item() == 2.0**-8  # raw 0.6/255 -> 2**-8.6, clamped
    assert obs.min_val.item() == pytest.approx(-0.3)


def test_observer_rejects_asymmetric_or_unsupported_settings():
    with pytest.raises(ConfigError, match="per_tensor_symmetric"):
        EagerPotObserver(qscheme=torch.per_tensor_affine)
    with pytest.raises(ConfigError, match="dtype"):
        EagerPotObserver(dtype=torch.qint32)


def test_clamp_flags_travel_with_state_dict_pickle_and_deepcopy():
    obs, _, _ = observe(torch.tensor([-500.0, 500.0]), max_shift_amount=5)
    state = obs.state_dict()
    assert {"clamp_overflow", "clamp_underflow", "min_val", "max_val"} <= set(state)
    fresh = EagerPotObserver(max_shift_amount=5)
    fresh.load_state_dict(state)
    clones = [fresh, copy.deepcopy(obs), pickle.loads(pickle.dumps(obs))]
    for clone in clones:
        assert clone.clamp_status == "overflow"
        assert clone.max_shift_amount == 5
        assert torch.equal(clone.calculate_qparams()[0], obs.calculate_qparams()[0])


@pytest.mark.parametrize(
    ("dtype", "qmin", "qmax", "zero_point"),
    [(torch.quint8, 0, 255, 128), (torch.qint8, -128, 127, 0)],
)
@pytest.mark.parametrize("fake_quant", [FakeQuantize, EagerPotFakeQuantize])
def test_works_inside_fake_quantize(dtype, qmin, qmax, zero_point, fake_quant):
    """FakeQuantize forwards max_shift_amount to the observer and trains on its scale."""
    factory = fake_quant.with_args(
        observer=EagerPotObserver,
        quant_min=qmin,
        quant_max=qmax,
        dtype=dtype,
        qscheme=torch.per_tensor_symmetric,
        max_shift_amount=3,
    )
    fq = factory()
    assert isinstance(fq.activation_post_process, EagerPotObserver)
    assert fq.activation_post_process.max_shift_amount == 3
    x = torch.randn(256) * 0.01  # raw scale ~2**-12: clamped to 2**-3
    y = fq(x)
    assert fq.scale.item() == 2.0**-3
    assert fq.zero_point.item() == zero_point
    assert fq.activation_post_process.clamp_status == "underflow"
    grid = y / fq.scale
    assert torch.equal(grid, grid.round())  # training really sees the 2**-3 grid
    for clone in (copy.deepcopy(fq), pickle.loads(pickle.dumps(fq))):
        assert torch.equal(clone.scale, fq.scale)
        assert clone.activation_post_process.clamp_status == "underflow"


def pot_fake_quant() -> EagerPotFakeQuantize:
    return EagerPotFakeQuantize(
        observer=EagerPotObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_symmetric,
    )


def test_qat_step_of_pot_fake_quant_never_reads_a_tensor_on_the_host():
    """No `if tensor:` per step: on a GPU each would stall the device."""
    fq = pot_fake_quant()
    x = torch.randn(8, 4, requires_grad=True)
    with HostReads() as spy:
        fq(x).sum().backward()
        fq(x * 1e6)  # overflow bookkeeping too
    assert spy.reads == []
    # The spy does see reads: torch's FakeQuantize makes two per call.
    plain = FakeQuantize(
        observer=EagerPotObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_symmetric,
    )
    with HostReads() as spy:
        plain(x)
    assert spy.reads.count("__bool__") >= 2


def test_pot_fake_quant_switches_survive_a_checkpoint():
    """The host-side on/off mirrors follow the buffers when a state_dict is loaded (resume)."""
    frozen = pot_fake_quant()
    frozen(torch.randn(16))
    frozen.disable_observer()
    frozen.disable_fake_quant()
    restored = pot_fake_quant()
    restored.load_state_dict(frozen.state_dict())
    x = torch.randn(16) * 100
    assert torch.equal(restored(x), x)  # fake quant off
    assert torch.equal(restored.scale, frozen.scale)  # observer off: the scale did not move
    restored.enable_fake_quant()
    assert not torch.equal(restored(x), x)


def test_channels_last_activation_is_observed_in_memory_order_without_a_copy() -> None:
    """The per-tensor min/max of a channels_last activation reads its NHWC view (QAT's
    activations are channels_last: aminmax used to copy each one to contiguous first)."""
    from labquant.quant.pot import memory_order_view

    x = torch.randn(4, 8, 5, 5).to(memory_format=torch.channels_last) * 3
    view = memory_order_view(x)
    assert view.is_contiguous() and view.data_ptr() == x.data_ptr()
    assert memory_order_view(x.contiguous()).shape == x.shape  # contiguous: itself
    observed, reference = EagerPotObserver(), EagerPotObserver()
    observed(x)
    reference(x.contiguous())
    assert observed.min_val == reference.min_val == x.min()
    assert observed.max_val == reference.max_val == x.max()
    assert observed.calculate_qparams() == reference.calculate_qparams()
