"""OmegaConf resolvers used by the configs; registered on import of labquant.cli (also in the
worker processes of parallel launchers, which import the task function)."""

from __future__ import annotations

from omegaconf import OmegaConf


def step_epoch(step: int, max_epochs: int, reference_epochs: int = 40) -> int:
    """The StepLR epoch, kept where it is when it falls inside the budget, else scaled.

    The lab steps at epoch 20 of 40; with a shorter budget (say 10 epochs) the drop would never
    happen, so it moves to the same fraction of the budget: round(10 * 20 / 40) = 5.
    """
    if step < max_epochs:
        return step
    return max(1, round(max_epochs * step / reference_epochs))


def warmup_epochs(warmup: int, max_epochs: int) -> int:
    """The default warmup, capped at half the budget so short runs (tests, sweeps with
    trainer.max_epochs=2) still have a cosine phase; an explicit value is never changed."""
    return min(warmup, max_epochs // 2)


def register_resolvers() -> None:
    for name, resolver in (("lq.step_epoch", step_epoch), ("lq.warmup_epochs", warmup_epochs)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register_resolvers()
