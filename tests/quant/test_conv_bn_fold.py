"""quant/eager/conv_bn.py: the eager QAT conv-BN fold has torch's forward bit for bit, torch's
weight gradients exactly, gamma's within the eps term, and torch's own fold once BatchNorm
uses its running statistics."""

from __future__ import annotations

import copy

import torch
from torch.ao.nn.intrinsic.qat.modules.conv_fused import _ConvBnNd

from labquant.quant.eager.backend import EagerBackend
from labquant.quant.eager.conv_bn import scale_free_fold
from labquant.quant.qconfigs import power_of_two
from tests.hw.test_integer_reference import small_weight_net


def prepared_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same QAT-prepared network twice: labquant's fold, and torch's (the instance
    attribute removed, so the class's method runs)."""
    net = small_weight_net("basic", seed=3)
    torch.manual_seed(0)
    with torch.no_grad():  # BN away from its defaults, one gamma negative
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(-0.2, 1.5)
                module.running_var.uniform_(0.5, 2.0)
                module.running_mean.uniform_(-0.5, 0.5)
    ours = EagerBackend().prepare_qat(net.train(), power_of_two(), torch.randn(2, 3, 32, 32))
    theirs = copy.deepcopy(ours)
    folds = [m for m in theirs.modules() if isinstance(m, _ConvBnNd)]
    for module in folds:
        del module._forward_approximate
    assert folds
    return ours, theirs


def step(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = net(x)
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return out.detach(), grads


def buffers(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """BatchNorm's running statistics, by name."""
    return {n: b.clone() for n, b in net.named_buffers() if "running" in n}


def assert_fold_gradients(
    grads: dict[str, torch.Tensor], want: dict[str, torch.Tensor], gammas: list[str]
) -> None:
    """Every gradient is torch's exactly but the BN gammas', which differ by the dropped term
    (eps / (var + eps) of the division's gradient) and do differ: the fold is in use."""
    assert grads.keys() == want.keys() and gammas
    for name, grad in grads.items():
        if name in gammas:
            torch.testing.assert_close(grad, want[name], rtol=1e-3, atol=1e-6, msg=name)
        else:
            assert torch.equal(grad, want[name]), name
    assert any(not torch.equal(grads[n], want[n]) for n in gammas)


def test_batch_statistics_same_forward_same_weight_gradients_gamma_within_eps():
    ours, theirs = prepared_pair()
    assert all(
        m._forward_approximate.__func__ is scale_free_fold
        for m in ours.modules()
        if isinstance(m, _ConvBnNd)
    )
    x = torch.randn(16, 3, 32, 32)
    (out, grads), (want, want_grads) = step(ours, x), step(theirs, x)
    assert torch.equal(out, want)
    for name, tensor in buffers(theirs).items():
        assert torch.equal(buffers(ours)[name], tensor), name
    assert_fold_gradients(grads, want_grads, [n for n in grads if n.endswith("bn.weight")])


def test_running_statistics_run_torchs_own_fold_exactly():
    ours, theirs = prepared_pair()
    for net in (ours, theirs):
        EagerBackend().freeze_bn_stats(net)
    x = torch.randn(16, 3, 32, 32)
    (out, grads), (want, want_grads) = step(ours, x), step(theirs, x)
    assert torch.equal(out, want)
    for name, grad in want_grads.items():
        assert torch.equal(grads[name], grad), name


def test_a_deep_copy_folds_with_its_own_modules():
    ours, _ = prepared_pair()
    copied = copy.deepcopy(ours)
    for module in copied.modules():
        if isinstance(module, _ConvBnNd):
            assert module._forward_approximate.__self__ is module
