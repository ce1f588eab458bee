"""quant/pt2e/conv_bn.py: the PT2E QAT graph's conv-BN fold has torchao's forward bit for bit,
its weight gradients exactly and gamma's within the eps term while BN trains; with frozen
statistics, and at convert, it is torchao's graph exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from labquant.quant.pt2e import conv_bn
from labquant.quant.pt2e.backend import PT2EBackend
from labquant.quant.qconfigs import power_of_two
from tests.hw.test_integer_reference import small_weight_net
from tests.quant.test_conv_bn_fold import assert_fold_gradients, buffers, step

DETACH = torch.ops.aten.detach.default


def prepared_pair(monkeypatch) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same QAT graph twice: labquant's (divisors detached while BN trains) and torchao's
    (the sync switched off while it is prepared and trained)."""
    net = small_weight_net("basic", seed=3)
    with torch.no_grad():  # BN away from its defaults, one gamma negative
        generator = torch.Generator().manual_seed(0)
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(-0.2, 1.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    backend = PT2EBackend(compile=False, onnx=False)
    example = torch.randn(2, 3, 32, 32)
    ours = backend.prepare_qat(copy.deepcopy(net).train(), power_of_two(), example)
    with monkeypatch.context() as patched:
        patched.setattr(conv_bn, "sync_fold_divisors", lambda gm: 0)
        theirs = backend.prepare_qat(copy.deepcopy(net).train(), power_of_two(), example)
    return ours, theirs


def detaches(gm: torch.nn.Module) -> int:
    return sum(node.target is DETACH for node in gm.graph.nodes)


def test_batch_statistics_same_forward_same_weight_gradients_gamma_within_eps(monkeypatch):
    ours, theirs = prepared_pair(monkeypatch)
    folds = sum(isinstance(m, torch.nn.Conv2d) for m in small_weight_net("basic", 3).modules())
    assert detaches(ours) == folds and detaches(theirs) == 0
    x = torch.randn(16, 3, 32, 32)
    (out, grads), (want, want_grads) = step(ours, x), step(theirs, x)
    assert torch.equal(out, want)
    assert buffers(ours).keys() == buffers(theirs).keys()
    for name, tensor in buffers(theirs).items():
        assert torch.equal(buffers(ours)[name], tensor), name
    gammas = [n for n in grads if n.split(".")[-2].startswith("bn") or "downsample.1" in n]
    assert_fold_gradients(grads, want_grads, [n for n in gammas if n.endswith(".weight")])


@pytest.mark.parametrize("switch", ["freeze", "eval"])
def test_frozen_statistics_and_eval_are_torchaos_graph(monkeypatch, switch):
    ours, theirs = prepared_pair(monkeypatch)
    backend = PT2EBackend(compile=False, onnx=False)
    if switch == "eval":
        ours.eval()
        assert detaches(ours) == 0
        ours.train()
        assert detaches(ours) > 0  # back on when BN trains again
        return
    for net in (ours, theirs):
        backend.freeze_bn_stats(net)
        net.eval()
        net.train()  # frozen statistics survive the switch, and so does torchao's fold
    assert detaches(ours) == 0
    x = torch.randn(16, 3, 32, 32)
    (out, grads), (want, want_grads) = step(ours, x), step(theirs, x)
    assert torch.equal(out, want)
    for name, grad in want_grads.items():
        assert torch.equal(grads[name], grad), name


def test_convert_after_batch_statistics_training_is_the_same_int8_program(monkeypatch):
    ours, theirs = prepared_pair(monkeypatch)
    x = torch.randn(16, 3, 32, 32)
    for net in (ours, theirs):
        net(x)
    backend = PT2EBackend(compile=False, onnx=False)
    spec = power_of_two()
    int8_ours, int8_theirs = (backend.convert(net, spec, x[:2]) for net in (ours, theirs))
    assert detaches(ours) > 0  # convert works on an eval copy: the prepared graph still trains
    assert torch.equal(int8_ours(x), int8_theirs(x))
