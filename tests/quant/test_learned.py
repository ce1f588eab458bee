"""Learned power-of-two exponents (qconfig.learn_scales, quant/learned.py): the threshold's
gradient, its exact power-of-two forward, the freeze, checkpoints, both backends alike, the
optimizer group and the integer export."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from labquant.hw import reference
from labquant.hw.program import check_program
from labquant.lit.module import ClassifierModule
from labquant.quant.backend import start_learned_scales
from labquant.quant.eager.backend import EagerBackend
from labquant.quant.eager.qconfigs import eager_qconfig
from labquant.quant.learned import LearnedThresholdCore
from labquant.quant.plan import build_plan
from labquant.quant.pt2e.backend import PT2EBackend
from labquant.quant.pt2e.quantizer import _spec as pt2e_spec
from labquant.quant.qconfigs import power_of_two
from tests.hw.test_integer_reference import small_weight_net
from tests.quant.test_observers import assert_power_of_two
from tests.quant.test_pot_design import outlier_tensor

BACKENDS = {"eager": EagerBackend, "pt2e": lambda: PT2EBackend(compile=False, onnx=False)}
W4A4 = {"weight_bits": 4, "activation_bits": 4, "granularity": "per_channel", "learn_scales": True}


def weight_fake_quant(backend: str, **settings) -> LearnedThresholdCore:
    """One learned weight fake-quantizer as each backend's prepare builds it."""
    spec = power_of_two(learn_scales=True, **settings)
    if backend == "eager":
        module = eager_qconfig(spec, qat=True).weight()
    else:
        module = pt2e_spec(True, build_plan(spec).default.weight).observer_or_fake_quant_ctr()
    assert isinstance(module, LearnedThresholdCore)
    return module


def started(module: LearnedThresholdCore, x: torch.Tensor) -> LearnedThresholdCore:
    """Calibrate on `x` (what start_learning's batches do), then learn."""
    with torch.no_grad():
        module(x)
    module.start_learning()
    return module


def shifts(module: LearnedThresholdCore) -> list[int]:
    scale = module.calculate_qparams()[0].flatten()
    assert_power_of_two(scale)
    return [round(-math.log2(float(s))) for s in scale]


@pytest.mark.parametrize("backend", ["eager", "pt2e"])
def test_a_threshold_moves_to_a_lower_error_with_an_exact_power_of_two_in_range(backend):
    """Laplace rows with outliers at 4 bits: min/max clips nothing and wastes the grid, so the
    learned threshold falls (the shift grows) and the squared error drops; every forward's
    scale is exactly 2**-n with n in 0..max_shift_amount."""
    x = outlier_tensor()
    module = started(weight_fake_quant(backend, weight_bits=4, range="minmax"), x)
    first = shifts(module)
    optimizer = torch.optim.Adam([module.log2_threshold], lr=0.05)
    errors = []
    for _ in range(60):
        optimizer.zero_grad()
        error = (module(x) - x).pow(2).mean()
        error.backward()
        optimizer.step()
        errors.append(error.item())
        assert_power_of_two(module.scale)
        n = -torch.log2(module.scale)
        assert bool(((n >= 0) & (n <= module.max_shift_amount)).all())
    assert shifts(module)[0] > first[0]
    assert errors[-1] < 0.7 * errors[0], (errors[0], errors[-1])

    # Pushed far past either end, the shift stays in range and the threshold within half a
    # bucket of it; the observer's clamp flag records the press.
    for push, n_expected in ((100.0, 0), (-100.0, module.max_shift_amount)):
        with torch.no_grad():
            module.log2_threshold.fill_(push)
        module(x).sum().backward()
        assert set(shifts(module)) == {n_expected}
        edge = module.log2_divisor - n_expected
        assert abs(float(module.log2_threshold) - edge) <= 0.5 + 1e-6
    assert bool(module.activation_post_process.clamp_overflow)
    assert bool(module.activation_post_process.clamp_underflow)


def test_the_threshold_gradient_is_lsq_times_scale_ln2_on_a_hand_computed_case():
    """3-bit codes -4..3, scale 2**-2, x = [0.3, -0.74, 2.0, 0.05], loss = sum of the output:
    x/s = [1.2, -2.96, 8, 0.2] rounds to [1, -3, 3 (clipped), 0], so LSQ's d out / d s summed
    is (1-1.2) + (-3+2.96) + 3 + (0-0.2) = 2.56, times its gradient scale 1/sqrt(4 * 3);
    d s / d log2 threshold = s ln 2; x's straight-through gradient is 1 where not clipped."""
    module = weight_fake_quant("eager", weight_bits=3, granularity="per_tensor")
    x = torch.tensor([0.3, -0.74, 2.0, 0.05], requires_grad=True)
    with torch.no_grad():
        module(x.detach())
    module.start_learning()
    with torch.no_grad():  # shift 2: threshold log2(3.5) - 2 (3.5: half of 3 - (-4))
        module.log2_threshold.fill_(math.log2(3.5) - 2)
    out = module(x)
    assert float(module.scale) == 0.25
    torch.testing.assert_close(out.detach(), torch.tensor([0.25, -0.75, 0.75, 0.0]))
    out.sum().backward()
    expected = 2.56 / math.sqrt(4 * 3) * 0.25 * math.log2(math.e) ** -1
    assert float(module.log2_threshold.grad) == pytest.approx(expected, rel=1e-5)
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 1.0]


def batches(seed: int, count: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 3, 8, 8, generator=generator),
         torch.randint(0, 10, (8,), generator=generator))
        for _ in range(count)
    ]  # fmt: skip


def learned_net(backend_name: str, spec, seed: int = 3):
    """A tiny QAT network whose thresholds started from 4 calibration batches."""
    backend = BACKENDS[backend_name]()
    data = batches(seed)
    prepared = backend.prepare_qat(small_weight_net("basic", seed=seed).train(), spec, data[0][0])
    assert start_learned_scales(prepared, (x for x, _ in data[:4])) > 0
    return backend, prepared, data


def train_steps(net: nn.Module, data, lr: float, weights_lr: float = 0.0) -> None:
    thresholds = [p for n, p in net.named_parameters() if n.endswith("log2_threshold")]
    others = [p for n, p in net.named_parameters() if not n.endswith("log2_threshold")]
    optimizer = torch.optim.SGD(
        [{"params": thresholds, "lr": lr}, {"params": others, "lr": weights_lr}]
    )
    for x, y in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()


def thresholds_of(net: nn.Module) -> list[torch.Tensor]:
    learned = [m for m in net.modules() if isinstance(m, LearnedThresholdCore)]
    return [m.log2_threshold.detach().clone() for m in learned]


@pytest.mark.parametrize("backend_name", ["eager", "pt2e"])
def test_exponents_are_constant_after_the_freeze_and_survive_a_checkpoint(backend_name):
    spec = power_of_two(**W4A4)
    backend, prepared, data = learned_net(backend_name, spec)
    before = thresholds_of(prepared)
    train_steps(prepared, data, lr=50.0)
    moved = thresholds_of(prepared)
    assert any(not torch.equal(a, b) for a, b in zip(before, moved, strict=True))

    backend.set_observers(prepared, False)  # quant.freeze_observer_epoch
    frozen = {name: m.calculate_qparams()[0] for name, m in prepared.named_modules()
              if isinstance(m, LearnedThresholdCore)}  # fmt: skip
    train_steps(prepared, data, lr=50.0, weights_lr=0.01)
    for name, module in prepared.named_modules():
        if isinstance(module, LearnedThresholdCore):
            assert torch.equal(module.calculate_qparams()[0], frozen[name]), name
            assert module.log2_threshold.grad is not None  # in the graph: DDP reduces it
            assert not module.log2_threshold.grad.any(), name

    # A fresh prepare (thresholds not started, of size 0) takes them from the state_dict.
    _, fresh, _ = learned_net(backend_name, spec, seed=5)
    fresh.load_state_dict(copy.deepcopy(prepared.state_dict()))
    for a, b in zip(thresholds_of(prepared), thresholds_of(fresh), strict=True):
        assert torch.equal(a, b)
    x = data[0][0]
    prepared.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), prepared(x), rtol=0, atol=0)


def layer_shifts(backend, net, prepared, spec, x) -> dict[str, tuple]:
    int8 = backend.convert(prepared, spec, x[:2])
    table = backend.layer_table(net, prepared, int8, x)
    found = {}
    for row in table:
        weight = row["shift"]["weight"]
        weight = weight if isinstance(weight, list) else [weight] * row["out_channels"]
        found[row["name"]] = (tuple(weight), row["shift"]["activation"])
    return found


def weight_thresholds(backend_name: str, prepared: nn.Module) -> dict[str, torch.Tensor]:
    """Each layer's learned weight threshold by the layer's name (eager: `conv1.weight_fake_quant`;
    pt2e: the fake-quant whose input is `conv1.weight`)."""
    if backend_name == "eager":
        pairs = [(n.removesuffix(".weight_fake_quant"), m) for n, m in prepared.named_modules()
                 if n.endswith("weight_fake_quant")]  # fmt: skip
    else:
        from labquant.quant.pt2e.inspect import named_fake_quants

        pairs = [
            (n.removesuffix(".weight"), m)
            for n, m in named_fake_quants(prepared)
            if n.endswith(".weight")
        ]  # fmt: skip (its names: `conv1.weight`)
    return {name: m.log2_threshold.detach().clone() for name, m in pairs}


def test_eager_and_pt2e_learn_the_same_exponents_from_the_same_batches():
    """Same network, calibration batches and SGD steps on the thresholds: the thresholds move
    by up to 0.3 (log2) and every weight threshold agrees within 0.01 (0.7 % of its scale; the
    backends fold BatchNorm in different float orders, and the error reaches the fc most),
    and every converted weight and activation shift agrees exactly."""
    spec = power_of_two(**W4A4)
    found = {}
    for name in BACKENDS:
        backend, prepared, data = learned_net(name, spec)
        start = weight_thresholds(name, prepared)
        train_steps(prepared, data, lr=300.0)
        net = small_weight_net("basic", seed=3)
        shifts_after = layer_shifts(backend, net, prepared, spec, data[0][0])
        found[name] = (start, weight_thresholds(name, prepared), shifts_after)
    (start, eager, eager_shifts), (_, pt2e, pt2e_shifts) = found["eager"], found["pt2e"]
    assert eager.keys() == pt2e.keys() and eager
    assert max(float((start[k] - eager[k]).abs().max()) for k in eager) > 0.1  # they moved
    for layer, value in eager.items():
        torch.testing.assert_close(pt2e[layer], value, rtol=0, atol=1e-2, msg=layer)
    assert eager_shifts == pt2e_shifts


@pytest.mark.parametrize("scale_optimizer", ["recipe", "adam"])
@pytest.mark.parametrize("scale_lr", [None, 0.5])
def test_thresholds_have_their_own_optimizer_group_without_weight_decay(scale_lr, scale_optimizer):
    """One group for the weights (the recipe's SGD), one for the thresholds: no weight decay,
    quant.scale_lr (unset: the recipe's lr), stepped by SGD (`recipe`) or Adam (`adam`)."""
    spec = power_of_two(**W4A4)
    _, prepared, _ = learned_net("eager", spec)
    optimizer_factory = lambda params: torch.optim.SGD(params, lr=0.01, weight_decay=5e-4)  # noqa: E731
    module = ClassifierModule(
        net=prepared,
        optimizer=optimizer_factory,
        scale_lr=scale_lr,
        scale_optimizer=scale_optimizer,
    )
    optimizer = module.configure_optimizers()
    weights, thresholds = optimizer.param_groups
    count = sum(isinstance(m, LearnedThresholdCore) for m in prepared.modules())
    assert len(thresholds["params"]) == count and count > 0
    assert thresholds["weight_decay"] == 0.0 and weights["weight_decay"] == 5e-4
    assert thresholds["lr"] == (0.01 if scale_lr is None else scale_lr)
    assert weights["lr"] == 0.01
    every = {id(p) for p in prepared.parameters()}
    assert {id(p) for p in weights["params"] + thresholds["params"]} == every
    if scale_optimizer == "recipe":
        assert isinstance(optimizer, torch.optim.SGD)
    else:
        sgd, adam = optimizer.optimizers
        assert isinstance(sgd, torch.optim.SGD) and isinstance(adam, torch.optim.Adam)
        assert sgd.param_groups == [weights] and adam.param_groups == [thresholds]


@pytest.mark.parametrize("backend_name", ["eager", "pt2e"])
def test_the_integer_export_of_learned_exponents_is_bit_exact(tmp_path, backend_name):
    """After the thresholds moved (some exponents changed), convert ships those exponents and
    the integer-only program computes torch's int8 codes exactly, layer by layer."""
    spec = power_of_two(**W4A4, snap_bias=True)
    backend, prepared, data = learned_net(backend_name, spec)
    before = {n: m.calculate_qparams()[0].clone() for n, m in prepared.named_modules()
              if isinstance(m, LearnedThresholdCore)}  # fmt: skip
    train_steps(prepared, data, lr=1000.0)
    backend.set_observers(prepared, False)
    after = {n: m.calculate_qparams()[0] for n, m in prepared.named_modules()
             if isinstance(m, LearnedThresholdCore)}  # fmt: skip
    assert any(not torch.equal(before[n], after[n]) for n in after)  # an exponent changed
    x = torch.cat([batch for batch, _ in data])
    int8 = backend.convert(prepared, spec, x[:2])
    net = small_weight_net("basic", seed=3)
    table = backend.layer_table(net, prepared, int8, x[:8])
    shipped = {row["name"]: row["shift"]["weight"] for row in table}
    saved = backend.save(int8, tmp_path)
    exported = backend.integer_export(net, spec, tmp_path, saved, (8, 8))
    assert check_program(exported.program) == []
    ours = reference.run(exported.program, x.numpy())
    theirs = exported.layer_codes(x)
    assert theirs.keys() == ours.codes.keys() and theirs
    for name, codes in theirs.items():
        np.testing.assert_array_equal(ours.codes[name], codes.reshape(ours.codes[name].shape),
                                      err_msg=name)  # fmt: skip
    weight_shifts = {op["name"]: op["weight_shift"] for op in exported.program.ops
                     if "weight_shift" in op}  # fmt: skip
    assert weight_shifts.keys() == shipped.keys()
    for name, shift in shipped.items():  # the exponents training ended with, in the program
        assert weight_shifts[name] == shift, name
