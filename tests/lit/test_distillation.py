"""QAT's knowledge distillation: the student learns the FP32 teacher's function, the teacher
stays frozen and out of checkpoints, optimizer and `.train()`."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from labquant.lit.module import ClassifierModule, distillation_loss


def test_distillation_loss_is_zero_exactly_when_the_student_matches() -> None:
    teacher = torch.randn(16, 10)
    assert distillation_loss(teacher, teacher, temperature=2.0).abs().item() < 1e-6
    # A shift of every logit by a constant is the same distribution: still zero.
    assert distillation_loss(teacher + 3.0, teacher, temperature=1.0).abs().item() < 1e-5
    assert distillation_loss(torch.randn(16, 10), teacher, temperature=1.0).item() > 0.01


def _module(teacher: nn.Module | None, weight: float, seed: int = 0) -> ClassifierModule:
    torch.manual_seed(seed)
    return ClassifierModule(
        net=nn.Linear(8, 4),
        optimizer=functools.partial(torch.optim.SGD, lr=0.5),
        num_classes=4,
        teacher=teacher,
        distill_weight=weight,
    )


def test_the_teacher_is_frozen_and_outside_the_module() -> None:
    teacher = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4))
    module = _module(teacher, weight=1.0)
    module.train()
    assert not teacher.training  # its BatchNorm keeps the FP32 statistics
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("teacher") for k in module.state_dict())
    assert sum(p.numel() for p in module.parameters()) == 8 * 4 + 4  # the student only


def _agreement(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (student(x).argmax(1) == teacher(x).argmax(1)).float().mean().item()


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_distillation_pulls_the_student_to_the_teacher_not_the_labels(weight: float) -> None:
    """Labels that contradict the teacher: with weight 1 the student learns the teacher's
    answers and ignores the labels; with weight 0 (no distillation) it learns the labels."""
    torch.manual_seed(1)
    teacher = nn.Linear(8, 4).eval()
    x = torch.randn(512, 8)
    labels = (teacher(x).argmax(1) + 1).remainder(4).detach()  # never the teacher's answer
    module = _module(teacher, weight=weight, seed=2)
    trainer = pl.Trainer(
        max_epochs=15,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(TensorDataset(x, labels), batch_size=64, shuffle=True))
    agreement = _agreement(module.net, teacher, x)
    if weight:
        assert agreement > 0.9
    else:
        assert agreement < 0.1
