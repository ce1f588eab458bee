"""A throwaway third backend, PTQ only, to show the seam: one module plus one YAML
(conf/backend/toy.yaml, written by the test into a copy of conf/) and nothing else changed.

Its "int8" model is the FP32 network with every conv / linear weight rounded to a symmetric
per-tensor 8-bit grid (activations stay float): enough to be a different result, trivially."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from labquant.quant.backend import check_mode
from labquant.quant.qconfigs import QConfigSpec
from labquant.reports.artifacts import file_size_mib, serialized_mib, write_torch

INT8_FILE = "model_int8_toy.pt"


class RoundedWeights:
    def __init__(self, net: nn.Module) -> None:
        self.net = net.eval()

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.net(x)


class RoundedWeightsBackend:
    name = "toy"
    modes = ("ptq",)
    stage_suffix = "_toy"

    def check(self, qconfig: QConfigSpec, mode: str = "ptq") -> None:
        check_mode(self, mode)

    def prepare_ptq(self, net: nn.Module, qconfig: QConfigSpec, example: Tensor) -> nn.Module:
        prepared = copy.deepcopy(net).eval()
        prepared.toy_prepared = True  # nothing to observe: the weights decide the grid
        return prepared

    def is_prepared(self, net: nn.Module) -> bool:
        return bool(getattr(net, "toy_prepared", False))

    def convert(self, prepared: nn.Module, qconfig: QConfigSpec, example: Tensor) -> Any:
        net = copy.deepcopy(prepared).cpu().eval()
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, nn.Conv2d | nn.Linear):
                    step = m.weight.abs().max() / 127
                    m.weight.copy_(torch.round(m.weight / step) * step)
        return RoundedWeights(net)

    def layer_table(self, fp32_net, prepared, int8, batch) -> list[dict[str, Any]]:
        return []

    def layer_weights(self, prepared: nn.Module, names: list[str]) -> dict[str, Tensor]:
        return {}

    def save(self, int8: RoundedWeights, folder: Path) -> dict[str, Any]:
        write_torch(folder / INT8_FILE, int8.net.state_dict())
        return {"size_mib": file_size_mib(folder / INT8_FILE), "int8_toy": INT8_FILE}

    def load(self, folder: Path, saved: dict[str, Any]) -> RoundedWeights:
        raise NotImplementedError("the toy backend's files are not read back")

    def runtimes(self, folder: Path, saved: dict[str, Any]) -> dict[str, Any]:
        return {}

    def artifact_sizes(self, int8: RoundedWeights) -> dict[str, float]:
        return {"int8_mib": serialized_mib(int8.net.state_dict())}
