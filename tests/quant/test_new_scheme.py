"""A scheme added the way docs/architecture.md says ("Where a new scheme goes"): a Scheme class
(quant/scheme/<name>.py; here in the test) and a qconfig factory with its YAML (here a config
dict naming the factory by `_target_`), and nothing else. Power-of-two scales restricted to even
exponents go through PTQ and the integer export unchanged in any backend file."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from omegaconf import OmegaConf

from labquant.config.instantiate import instantiate
from labquant.hw import reference
from labquant.hw.program import check_program
from labquant.quant.pt2e.backend import PT2EBackend
from labquant.quant.qconfigs import QConfigSpec, power_of_two
from labquant.quant.scheme import PowerOfTwo
from tests.hw.test_integer_reference import small_weight_net


@dataclass(frozen=True)
class EvenPowerOfTwo(PowerOfTwo):
    """2**-n with n even: every requantization shift is a multiple of two."""

    name: ClassVar[str] = "power_of_two_even"

    def integer_shift(self, shift: torch.Tensor, exponent: str) -> torch.Tensor:
        n = super().integer_shift(shift, exponent)
        top = self.max_shift_amount - self.max_shift_amount % 2
        return torch.clamp(2 * torch.round(n / 2), 0, top)


def even_power_of_two(**settings: Any) -> QConfigSpec:
    """The qconfig factory: power_of_two's settings, the even-exponent scheme."""
    spec = power_of_two(**settings)
    return replace(spec, scheme=EvenPowerOfTwo(spec.scheme.max_shift_amount))


def test_an_even_exponent_scheme_runs_ptq_and_the_integer_export(tmp_path: Path) -> None:
    option = OmegaConf.create({
        "_target_": f"{__name__}.even_power_of_two", "name": "pot_even", "weight_bits": 4,
        "granularity": "per_channel", "activations": "unsigned",
    })  # fmt: skip
    spec: QConfigSpec = instantiate(option, "qconfig")
    assert spec.scheme.name == "power_of_two_even" and spec.describe()["scheme"] == spec.scheme.name
    backend = PT2EBackend(compile=False, onnx=False)
    torch.manual_seed(2)
    x = torch.randn(8, 3, 8, 8)
    prepared = backend.prepare_ptq(small_weight_net("basic", seed=3), spec, x)
    with torch.no_grad():
        prepared(x)
    int8 = backend.convert(prepared, spec, x)
    rows = backend.layer_table(small_weight_net("basic", seed=3), prepared, int8, x)
    exponents = set()
    for row in rows:
        for scale in [*np.atleast_1d(row["weight_scale"]).tolist(), row["scale"]]:
            exponents.add(-math.log2(scale))
    assert exponents and all(n == round(n) and round(n) % 2 == 0 for n in exponents)
    assert len(exponents) > 1  # the restriction, not one degenerate shift

    saved = backend.save(int8, tmp_path)
    exported = backend.integer_export(None, spec, tmp_path, saved, (8, 8))
    assert check_program(exported.program) == []
    ours = reference.run(exported.program, x.numpy())
    for name, codes in exported.layer_codes(x).items():
        np.testing.assert_array_equal(ours.codes[name], codes, err_msg=name)
