"""A TorchFunctionMode that records tensor-to-Python reads and ops whose output size depends on
the data: each is a device sync on a GPU, so a CPU test can prove the hot loop has none."""

from __future__ import annotations

from typing import Any

from torch.overrides import TorchFunctionMode

HOST_READS = frozenset(
    {"__bool__", "item", "__float__", "__int__", "__index__", "tolist", "numpy"}
    | {"unique", "unique_consecutive", "nonzero", "masked_select", "bincount"}
)


class HostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))
