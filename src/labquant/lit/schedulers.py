"""Learning-rate schedules stepped once per optimizer step (smooth warmup even for short runs)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from labquant.config.schema import check_warmup_epochs
from labquant.errors import ConfigError


class WarmupCosineAnnealingLR(LRScheduler):
    """Linear warmup to the base lr over `warmup_epochs`, then cosine decay to `min_lr`.

    Stepped per optimizer step: `lr(s) = base * (s + 1) / W` for `s < W` (so the first step
    already learns), then `min_lr + (base - min_lr) * (1 + cos(pi * (s - W) / (T - W))) / 2`,
    reaching `min_lr` at `T = max_epochs * steps_per_epoch` and staying there.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_epochs: float,
        max_epochs: int,
        min_lr: float = 1e-5,
        steps_per_epoch: int = 1,
        last_epoch: int = -1,
    ) -> None:
        check_warmup_epochs(warmup_epochs, max_epochs)
        if steps_per_epoch < 1:
            raise ConfigError(f"steps_per_epoch={steps_per_epoch} must be >= 1")
        self.warmup_steps = round(warmup_epochs * steps_per_epoch)
        self.total_steps = max_epochs * steps_per_epoch
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int, base_lr: float) -> float:
        """Closed-form lr for a given step (used by get_lr and by tests)."""
        if step < self.warmup_steps:
            return base_lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch, base) for base in self.base_lrs]
