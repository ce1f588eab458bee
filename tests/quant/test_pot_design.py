"""The power-of-two design space (quant/pot.py): widths, per-channel shifts, exponent rules and
range methods, the same on both backends, down to the saved int8 files and the integer program."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from labquant.hw import reference
from labquant.hw.program import check_program
from labquant.quant.eager.backend import EagerBackend
from labquant.quant.eager.observers import EagerPotChannelObserver, EagerPotObserver
from labquant.quant.layers import packed_bytes
from labquant.quant.pot import LogHistogram, code_range, quantization_error
from labquant.quant.pt2e.backend import PT2EBackend
from labquant.quant.pt2e.observers import PT2EPotObserver, PT2EPotWeightObserver
from labquant.quant.qconfigs import power_of_two
from tests.hw.test_integer_reference import small_weight_net
from tests.quant.test_observers import assert_power_of_two

BACKENDS = {"eager": EagerBackend, "pt2e": lambda: PT2EBackend(compile=False, onnx=False)}


def weight_observer(bits: int, per_channel: bool, backend: str = "eager", **method):
    qmin, qmax = code_range(bits, signed=True)
    common = {"quant_min": qmin, "quant_max": qmax, **method}
    if backend == "pt2e":
        return PT2EPotWeightObserver(one_scale=not per_channel, **common)
    if per_channel:
        return EagerPotChannelObserver(**common)
    return EagerPotObserver(dtype=torch.qint8, weights=True, **common)


def fake_quantized(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int, zp: int = 0):
    scale = scale.reshape(-1, *([1] * (x.dim() - 1))) if scale.numel() > 1 else scale
    return (torch.clamp(torch.round(x / scale) + zp, qmin, qmax) - zp) * scale


def outlier_tensor(seed: int = 0) -> torch.Tensor:
    """Heavy-tailed rows (Laplace): min/max's range is set by a few outliers, which a 4-bit
    grid pays for with every other value."""
    torch.manual_seed(seed)
    return torch.distributions.Laplace(0.0, 0.05).sample((16, 256))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("backend", ["eager", "pt2e"])
def test_every_width_gives_power_of_two_scales_and_codes_in_its_range(bits, per_channel, backend):
    torch.manual_seed(bits)
    w = torch.randn(8, 3, 3, 3) * torch.logspace(-3, 1, 8).reshape(-1, 1, 1, 1)
    observer = weight_observer(bits, per_channel, backend, max_shift_amount=10)
    observer(w)
    scale, zero_point = observer.calculate_qparams()
    assert_power_of_two(scale, 10)
    assert not zero_point.any()
    assert scale.numel() in (1, 8)
    assert (scale.unique().numel() > 1) == per_channel  # channels 1e-3..10 need their own shift
    qmin, qmax = code_range(bits, signed=True)
    codes = torch.round(w / scale.reshape(-1, 1, 1, 1)).clamp(qmin, qmax)
    # The range is used: a power of two rounded in the log domain wastes under one bit.
    assert codes.abs().max() >= (qmax + 1) / 2
    assert (qmin, qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_ceil_never_clips_the_observed_max_and_round_can(bits):
    qmin, qmax = code_range(bits, signed=True)
    clipped_by_round = 0
    for seed in range(40):
        torch.manual_seed(seed)
        # Ranges the shifter reaches (scales <= 1), so only the rule decides what clips.
        x = torch.randn(256) * float(torch.rand(1) * 0.15 + 0.002)
        for exponent in ("ceil", "round"):
            observer = weight_observer(bits, False, exponent=exponent)
            observer(x)
            scale, _ = observer.calculate_qparams()
            error = (fake_quantized(x, scale, qmin, qmax) - x).abs().max()
            if exponent == "ceil":
                assert error <= scale / 2, (seed, scale)
            else:
                clipped_by_round += int(error > scale / 2)
    assert clipped_by_round > 0  # round picks a finer scale that clips some maxima


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("backend", ["eager", "pt2e"])
def test_mse_never_worse_than_min_max_and_strictly_better_with_an_outlier(per_channel, backend):
    qmin, qmax = code_range(4, signed=True)

    def error(x, range_method):
        observer = weight_observer(4, per_channel, backend, range_method=range_method)
        observer(x)
        scale, _ = observer.calculate_qparams()
        return float((fake_quantized(x, scale, qmin, qmax) - x).pow(2).sum())

    for seed in range(10):
        x = torch.randn(16, 64) * (seed + 1) * 0.1
        assert error(x, "mse") <= error(x, "minmax")
    x = outlier_tensor()
    assert error(x, "mse") < 0.95 * error(x, "minmax")


def test_activation_mse_and_percentile_use_the_whole_calibration_set():
    """The histogram of two batches is that of both together (exact counts), so the scale
    does not depend on how the calibration set was cut into batches."""
    torch.manual_seed(0)
    batches = [torch.randn(4000) * 0.5, torch.randn(4000) * 0.5 + 0.2]
    batches[1][0] = 6.0  # a rare outlier in the second batch only
    whole = LogHistogram.empty()
    LogHistogram.add(whole, torch.cat(batches))
    for range_method in ("mse", "percentile"):
        method = {"range_method": range_method, "percentile": 99.9}
        split = EagerPotObserver(quant_min=0, quant_max=15, **method)
        joined = EagerPotObserver(quant_min=0, quant_max=15, **method)
        for batch in batches:
            split(batch)
        joined(torch.cat(batches))
        assert torch.equal(split.histogram, whole)
        assert torch.equal(split.calculate_qparams()[0], joined.calculate_qparams()[0])
        minmax = EagerPotObserver(quant_min=0, quant_max=15)
        minmax(torch.cat(batches))
        # Both ignore the outlier that min/max stretches the 4-bit range for.
        assert split.calculate_qparams()[0] < minmax.calculate_qparams()[0]
    values = LogHistogram.values().reshape(1, -1)
    counts = whole.reshape(1, -1)
    chosen = EagerPotObserver(range_method="mse", quant_min=0, quant_max=15)
    chosen(torch.cat(batches))
    scale, zp = chosen.calculate_qparams()
    best = quantization_error(values, counts, scale, int(zp), 0, 15)
    for n in range(0, 9):
        other = quantization_error(values, counts, torch.tensor([2.0**-n]), int(zp), 0, 15)
        assert best <= other


def test_percentile_of_the_histogram_is_within_one_bin_of_the_exact_one():
    torch.manual_seed(0)
    x = torch.randn(100_000)
    counts = LogHistogram.empty()
    LogHistogram.add(counts, x)
    exact = torch.quantile(x.abs(), 0.999)
    estimate = LogHistogram.percentile(counts, 99.9, unsigned=False)
    assert exact <= estimate <= exact * 2 ** (1 / LogHistogram.PER_OCTAVE) * 1.0001


@pytest.mark.parametrize("range_method", ["minmax", "percentile", "mse"])
def test_eager_and_pt2e_observers_give_the_same_scales(range_method):
    torch.manual_seed(0)
    x = outlier_tensor()
    for per_channel in (False, True):
        scales = []
        for backend in ("eager", "pt2e"):
            observer = weight_observer(4, per_channel, backend, range_method=range_method)
            observer(x)
            scales.append(observer.calculate_qparams()[0].expand(16))
        torch.testing.assert_close(scales[0], scales[1], rtol=0, atol=0)
    acts = [
        EagerPotObserver(range_method=range_method, quant_min=0, quant_max=15),
        PT2EPotObserver(range_method=range_method, quant_min=0, quant_max=15),
    ]
    for observer in acts:
        for batch in x.split(4):
            observer(batch)
    assert torch.equal(acts[0].calculate_qparams()[0], acts[1].calculate_qparams()[0])


def calibrated(backend_name: str, spec, x: torch.Tensor, seed: int = 3):
    backend = BACKENDS[backend_name]()
    net = small_weight_net("basic", seed=seed)
    prepared = backend.prepare_ptq(copy.deepcopy(net), spec, x[:2])
    with torch.no_grad():
        for batch in x.split(8):
            prepared(batch)
    int8 = backend.convert(prepared, spec, x[:2])
    return backend, net, prepared, int8


def expanded_shifts(layers: list[dict]) -> dict[str, tuple]:
    """Each layer's weight shift per output channel and its output shift (a per-channel list
    whose values are all equal may be written as one number)."""
    found = {}
    for row in layers:
        weight = row["shift"]["weight"]
        weight = weight if isinstance(weight, list) else [weight] * row["out_channels"]
        found[row["name"]] = (tuple(weight), row["shift"]["activation"], row["zero_point"])
    return found


@pytest.mark.parametrize(
    "settings",
    [
        {"weight_bits": 4, "granularity": "per_channel", "range": "mse"},
        {"weight_bits": 4, "activation_bits": 4, "range": "percentile", "exponent": "ceil"},
    ],
)
def test_eager_and_pt2e_give_the_same_shifts_for_the_same_calibration(settings):
    torch.manual_seed(1)
    x = torch.randn(32, 3, 8, 8)
    spec = power_of_two(**settings)
    tables = {}
    for name in BACKENDS:
        backend, net, prepared, int8 = calibrated(name, spec, x)
        tables[name] = backend.layer_table(net, prepared, int8, x[:8])
    assert expanded_shifts(tables["eager"]) == expanded_shifts(tables["pt2e"])
    for row in tables["eager"]:
        assert row["bits"] == {"weight": spec.weight_bits, "activation": spec.activation_bits}
    if spec.per_channel:  # some layer really has several shifts
        assert any(isinstance(row["shift"]["weight"], list) for row in tables["eager"])


def saved_weight_codes(backend_name: str, backend, int8, folder: Path) -> list[torch.Tensor]:
    """The int8 weight codes as the stage's saved file holds them."""
    saved = backend.save(int8, folder)
    if backend_name == "eager":
        state = torch.load(folder / saved["int8_state_dict"], weights_only=True)
        values = [v[0] if isinstance(v, tuple) else v for v in state.values()]  # linear: packed
        return [
            v.int_repr() for v in values
            if isinstance(v, torch.Tensor) and v.is_quantized and v.dtype == torch.qint8
        ]  # fmt: skip
    program = torch.export.load(folder / saved["int8_pt2"])
    tensors = [*program.state_dict.values(), *program.constants.values()]
    return [t for t in tensors if isinstance(t, torch.Tensor) and t.dtype == torch.int8]


@pytest.mark.parametrize("backend_name", ["eager", "pt2e"])
@pytest.mark.parametrize(("bits", "granularity"), [(4, "per_channel"), (2, "per_tensor")])
def test_low_width_weight_codes_read_back_from_the_saved_file(
    tmp_path, backend_name, bits, granularity
):
    torch.manual_seed(2)
    x = torch.randn(16, 3, 8, 8)
    spec = power_of_two(weight_bits=bits, granularity=granularity, range="mse")
    backend, _, _, int8 = calibrated(backend_name, spec, x)
    codes = saved_weight_codes(backend_name, backend, int8, tmp_path)
    net = small_weight_net("basic", seed=3)
    assert len(codes) == sum(isinstance(m, nn.Conv2d | nn.Linear) for m in net.modules())
    qmin, qmax = code_range(bits, signed=True)
    for layer in codes:
        assert qmin <= int(layer.min()) and int(layer.max()) <= qmax
    assert min(int(c.min()) for c in codes) == qmin  # the narrowed range is really used


@pytest.mark.parametrize("backend_name", ["eager", "pt2e"])
@pytest.mark.parametrize(
    "settings",
    [
        {"weight_bits": 4, "activation_bits": 4, "granularity": "per_channel", "range": "mse"},
        {"weight_bits": 4, "granularity": "per_tensor", "range": "percentile"},
        {"weight_bits": 3, "activation_bits": 6, "activations": "unsigned", "exponent": "floor"},
    ],
)
def test_the_integer_reference_matches_torch_at_every_width(tmp_path, backend_name, settings):
    torch.manual_seed(1)
    x = torch.randn(24, 3, 8, 8)
    spec = power_of_two(**settings)
    backend, net, _, int8 = calibrated(backend_name, spec, x)
    saved = backend.save(int8, tmp_path)
    exported = backend.integer_export(net, spec, tmp_path, saved, (8, 8))
    program = exported.program
    assert check_program(program) == []
    ranges = {tuple(op["out_range"]) for op in program.ops if "out_range" in op}
    assert ranges == ({(0, 2**spec.activation_bits - 1)} if spec.activation_bits < 8 else set())
    per_channel = [op for op in program.ops if isinstance(op.get("weight_shift"), list)]
    assert bool(per_channel) == spec.per_channel
    ours = reference.run(program, x.numpy())
    theirs = exported.layer_codes(x)
    assert theirs.keys() == ours.codes.keys()
    for name, codes in theirs.items():
        np.testing.assert_array_equal(ours.codes[name], codes.reshape(ours.codes[name].shape),
                                      err_msg=name)  # fmt: skip
        assert int(codes.max()) <= 2**spec.activation_bits - 1


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_packed_size_is_the_hand_computed_bytes(granularity):
    """W4: 4 bits per weight, an int32 bias per output channel, a one-byte weight shift per
    tensor (or per channel), and the output's one-byte shift and zero point, for each conv and
    the fc."""
    torch.manual_seed(1)
    x = torch.randn(16, 3, 8, 8)
    spec = power_of_two(weight_bits=4, granularity=granularity)
    backend, net, prepared, int8 = calibrated("eager", spec, x)
    layers = backend.layer_table(net, prepared, int8, x[:8])
    expected = 0
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            channels = module.weight.shape[0]
            shifts = channels if granularity == "per_channel" else 1
            expected += math.ceil(module.weight.numel() / 2) + 4 * channels + shifts + 2
    assert sum(packed_bytes(row, spec.scheme, spec.per_channel) for row in layers) == expected


@pytest.mark.parametrize("backend_name", ["eager", "pt2e"])
def test_qat_fake_quantizes_at_the_declared_widths(backend_name):
    torch.manual_seed(0)
    x = torch.randn(8, 3, 8, 8)
    spec = power_of_two(weight_bits=4, activation_bits=4, granularity="per_channel")
    backend = BACKENDS[backend_name]()
    prepared = backend.prepare_qat(small_weight_net("basic", seed=3).train(), spec, x[:2])
    prepared(x).sum().backward()
    fake_quants = [
        m for m in prepared.modules() if hasattr(m, "activation_post_process") and
        hasattr(m, "quant_max") and m.activation_post_process is not m
    ]  # fmt: skip
    widths = {(int(m.quant_min), int(m.quant_max)) for m in fake_quants}
    assert widths == {(-8, 7), (0, 15)}
    for m in fake_quants:
        assert_power_of_two(m.scale)
    grads = [p.grad for p in prepared.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
