"""CompositeOptimizer (lit/optimizers.py): SGD for the weights and Adam for the learned
thresholds behind one Optimizer, stepping exactly as the two would alone, through a scheduler
and a checkpoint round trip."""

from __future__ import annotations

import copy

import torch

from labquant.lit.optimizers import CompositeOptimizer


def parameters(seed: int = 0) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.nn.Parameter(torch.randn(5, generator=generator))
    thresholds = torch.nn.Parameter(torch.randn(3, generator=generator))
    return weights, thresholds


def loss(weights: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    return (weights**2).sum() + 1e-4 * (thresholds**3).sum()  # a tiny threshold gradient


def composite(weights, thresholds) -> CompositeOptimizer:
    return CompositeOptimizer([
        torch.optim.SGD([weights], lr=0.1, momentum=0.9, weight_decay=5e-4),
        torch.optim.Adam([{"params": [thresholds], "lr": 0.01, "weight_decay": 0.0}]),
    ])  # fmt: skip


def test_each_group_steps_as_its_own_optimizer_would_and_the_closure_runs_once():
    weights, thresholds = parameters()
    alone_w, alone_t = (p.detach().clone().requires_grad_() for p in (weights, thresholds))
    optimizer = composite(weights, thresholds)
    sgd = torch.optim.SGD([alone_w], lr=0.1, momentum=0.9, weight_decay=5e-4)
    adam = torch.optim.Adam([alone_t], lr=0.01)
    calls = []

    def closure():
        calls.append(1)
        optimizer.zero_grad()
        value = loss(weights, thresholds)
        value.backward()
        return value

    for _ in range(4):
        optimizer.step(closure)
        for single in (sgd, adam):
            single.zero_grad()
        loss(alone_w, alone_t).backward()
        sgd.step()
        adam.step()
    assert len(calls) == 4
    assert torch.equal(weights, alone_w) and torch.equal(thresholds, alone_t)
    # Adam's step is its learning rate whatever the gradient's size (about 1e-4 here).
    start = parameters()[1]
    assert float((thresholds - start).abs().min()) > 0.03


def test_a_scheduler_and_a_state_dict_round_trip_continue_like_an_uninterrupted_run():
    def run(steps: int, resume_at: int | None = None):
        weights, thresholds = parameters()
        optimizer = composite(weights, thresholds)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2 * steps)
        for step in range(steps):
            if step == resume_at:  # a fresh process loads the checkpoint
                saved = copy.deepcopy((optimizer.state_dict(), scheduler.state_dict()))
                weights = torch.nn.Parameter(weights.detach().clone())
                thresholds = torch.nn.Parameter(thresholds.detach().clone())
                optimizer = composite(weights, thresholds)
                scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2 * steps)
                optimizer.load_state_dict(saved[0])
                scheduler.load_state_dict(saved[1])
            optimizer.zero_grad()
            loss(weights, thresholds).backward()
            optimizer.step()
            scheduler.step()
        return weights, thresholds, optimizer

    weights, thresholds, optimizer = run(6)
    resumed_w, resumed_t, resumed = run(6, resume_at=3)
    assert torch.equal(weights, resumed_w) and torch.equal(thresholds, resumed_t)
    # The scheduler scaled both groups, each from its own base rate.
    lrs = [group["lr"] for group in resumed.param_groups]
    assert lrs == [group["lr"] for group in optimizer.param_groups]
    assert abs(lrs[0] / lrs[1] - 10.0) < 1e-9 and lrs[0] < 0.1
    sgd, adam = resumed.optimizers
    assert sgd.state is resumed.state and adam.state is resumed.state
    assert adam.param_groups[0] is resumed.param_groups[1]
