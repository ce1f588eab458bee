"""Golden vectors: the standalone checker passes on the reference's own outputs and fails on a
file with one code changed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from labquant.hw import reference
from labquant.hw.golden import CHECKER_FILE, GOLDEN_FILE, write_golden
from labquant.quant.eager.integer import integer_program
from tests.hw.test_integer_reference import converted

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it


def test_checker_passes_on_reference_outputs_and_fails_on_one_changed_code(tmp_path) -> None:
    torch.manual_seed(2)
    x = torch.randn(3, 3, 8, 8)
    program = integer_program(converted("basic", "unsigned", "ptq", x), (8, 8))
    result = reference.run(program, x.numpy())
    write_golden(tmp_path, program, x.numpy(), result)
    layers = [op["output"] for op in program.ops if op["op"] != "quantize"]
    theirs = {name: result.codes[name] for name in layers}
    np.savez(tmp_path / "good.npz", input_codes=result.codes["quant"], **theirs)
    bad = dict(theirs)
    bad["layer2.0.conv1"] = bad["layer2.0.conv1"].copy()
    bad["layer2.0.conv1"][1, 2, 0, 0] ^= 1
    np.savez(tmp_path / "bad.npz", **bad)

    def check(name: str) -> subprocess.CompletedProcess:
        # The checker is standalone: run as a script from the golden folder, numpy only.
        command = [sys.executable, "-I", CHECKER_FILE, GOLDEN_FILE, name]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)

    good = check("good.npz")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "golden check: passed" in good.stdout
    failed = check("bad.npz")
    assert failed.returncode == 1
    assert "FAIL layer2.0.conv1: 1 of" in failed.stdout
    assert "skipped input_codes" in failed.stdout
