"""compile=true: FP32 training through torch.compile still trains, tests and saves clean files."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it


@pytest.mark.slow
def test_compile_true_trains_through_the_compiled_module(compose_train, monkeypatch) -> None:
    compiled = []
    real_compile = torch.compile

    def eager_compile(module, **kwargs):
        # The eager backend runs TorchDynamo's capture without a C++ build: fast enough here.
        compiled.append(module)
        return partial(real_compile, backend="eager")(module, **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    from labquant.tasks.train import FP32_STATE_DICT, fit_fp32

    cfg = compose_train(*TINY, "trainer.max_epochs=2", "compile=true")
    results = fit_fp32(cfg)
    assert len(compiled) == 1
    assert results["test_acc"] > 20  # 10 classes: chance is 10 %
    out = Path(cfg.paths.output_dir)
    state = torch.load(out / FP32_STATE_DICT)
    assert not any("_orig_mod" in key for key in state)
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    keys = checkpoint["state_dict"].keys()
    assert not any("_orig_mod" in key for key in keys)
    assert {key.removeprefix("net.") for key in keys if key.startswith("net.")} == state.keys()
