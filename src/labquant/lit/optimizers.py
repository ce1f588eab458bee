"""One optimizer made of several, so that Lightning's automatic optimization can train the
network's weights with the recipe's optimizer and the learned log2 thresholds with Adam.

TQT (Jain et al. 2020) trains its thresholds with Adam: the gradient of a log2 threshold is
`scale * ln 2` times LSQ's, so under SGD its step shrinks with the scale (a 4-bit weight's
exponent never moves at any usable rate); Adam's step is the learning rate whatever the
gradient's size. Lightning drives one optimizer per step outside manual optimization, so the
two are presented as one `torch.optim.Optimizer`: their parameter groups and state are this
object's own (the same dicts), which keeps `state_dict()` / `load_state_dict()` (checkpoints,
resume), `zero_grad()`, the learning-rate schedulers and Lightning's device moves generic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.optim import Optimizer


class CompositeOptimizer(Optimizer):
    """Steps each inner optimizer over its own parameter groups, in order."""

    def __init__(self, optimizers: Sequence[Optimizer]) -> None:
        if not optimizers:
            raise ValueError("CompositeOptimizer needs at least one optimizer")
        self.optimizers = list(optimizers)
        groups = [group for optimizer in self.optimizers for group in optimizer.param_groups]
        super().__init__(groups, defaults={})
        self._link()

    def _link(self) -> None:
        """Point every inner optimizer at this one's groups (in order) and state."""
        start = 0
        for optimizer in self.optimizers:
            count = len(optimizer.param_groups)
            optimizer.param_groups = self.param_groups[start : start + count]
            optimizer.state = self.state
            start += count

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The generic load rebuilds the groups and state as new objects: relink them."""
        super().load_state_dict(state_dict)
        self._link()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """The closure (forward and backward) runs once, then every inner optimizer steps."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss
