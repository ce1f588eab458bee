"""Eager-mode torch.ao.quantization: the lab's original flow, deprecated upstream.

Every torch.ao.quantization call of labquant lives in this subpackage (model fusion aside, which
sits next to the blocks in models/)."""

from labquant.quant.eager.backend import EagerBackend, EagerInt8Model

__all__ = ["EagerBackend", "EagerInt8Model"]
