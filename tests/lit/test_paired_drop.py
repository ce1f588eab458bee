"""The accuracy drop's paired 95 % interval, checked against the textbook formula."""

from __future__ import annotations

import math

import pytest
import torch

from labquant.tasks.evaluate import Evaluation, paired_drop


def _evaluation(correct: list[bool]) -> Evaluation:
    hits = torch.tensor(correct)
    return Evaluation(100.0 * float(hits.double().mean()), 0.0, [], hits)


def test_identical_predictions_have_no_interval() -> None:
    same = _evaluation([True, False, True, True])
    assert paired_drop(same, same) == {
        "acc_drop_ci95": 0.0,
        "only_fp32_correct": 0,
        "only_int8_correct": 0,
    }


def test_interval_is_the_paired_normal_interval() -> None:
    # 1,000 images: FP32 alone right on 30, int8 alone right on 20, the rest agree.
    fp32 = [True] * 30 + [False] * 20 + [True] * 600 + [False] * 350
    int8 = [False] * 30 + [True] * 20 + [True] * 600 + [False] * 350
    got = paired_drop(_evaluation(fp32), _evaluation(int8))
    n, b, c = 1000, 30, 20
    mean = (b - c) / n
    variance = (b + c - n * mean**2) / (n - 1)  # sample variance of the +1 / -1 / 0 differences
    assert got["only_fp32_correct"] == b and got["only_int8_correct"] == c
    assert got["acc_drop_ci95"] == pytest.approx(100 * 1.96 * math.sqrt(variance / n), abs=1e-4)
    # 50 images of disagreement: a drop of 1.0 pp comes with an interval of about +-1.4 pp.
    assert 1.3 < got["acc_drop_ci95"] < 1.5


def test_different_test_sets_give_no_interval() -> None:
    assert paired_drop(_evaluation([True, False]), _evaluation([True])) == {}
