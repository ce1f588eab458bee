import itertools
import math

import pytest
import torch

from labquant.errors import ConfigError
from labquant.lit.schedulers import WarmupCosineAnnealingLR

BASE, MIN, WARMUP, EPOCHS, STEPS = 0.1, 1e-5, 2, 10, 50


def _scheduler() -> WarmupCosineAnnealingLR:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    return WarmupCosineAnnealingLR(opt, WARMUP, EPOCHS, min_lr=MIN, steps_per_epoch=STEPS)


def _lr_after(steps: int) -> float:
    sched = _scheduler()
    for _ in range(steps):
        sched.optimizer.step()
        sched.step()
    return sched.get_last_lr()[0]


def test_warmup_start_is_small_but_not_zero() -> None:
    warmup_steps = WARMUP * STEPS
    assert _lr_after(0) == pytest.approx(BASE / warmup_steps)


def test_warmup_end_reaches_base_lr() -> None:
    warmup_steps = WARMUP * STEPS
    assert _lr_after(warmup_steps - 1) == pytest.approx(BASE)
    assert _lr_after(warmup_steps) == pytest.approx(BASE)  # cosine starts at the top


def test_middle_of_cosine_is_halfway() -> None:
    warmup_steps, total = WARMUP * STEPS, EPOCHS * STEPS
    middle = warmup_steps + (total - warmup_steps) // 2
    assert _lr_after(middle) == pytest.approx((BASE + MIN) / 2)


def test_end_is_min_lr_and_stays() -> None:
    total = EPOCHS * STEPS
    assert _lr_after(total) == pytest.approx(MIN)
    assert _lr_after(total + 7) == pytest.approx(MIN)


def test_schedule_is_monotone_after_warmup() -> None:
    sched = _scheduler()
    lrs = [sched.lr_at(s, BASE) for s in range(EPOCHS * STEPS + 1)]
    warm = WARMUP * STEPS
    assert all(a < b for a, b in itertools.pairwise(lrs[:warm]))
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :], strict=False))
    assert not any(math.isnan(v) for v in lrs)


@pytest.mark.parametrize("warmup", [10, 12, -1])
def test_bad_warmup_is_a_config_error(warmup: int) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    with pytest.raises(ConfigError, match=r"scheduler\.warmup_epochs"):
        WarmupCosineAnnealingLR(opt, warmup, EPOCHS, steps_per_epoch=STEPS)
