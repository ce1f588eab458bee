"""`labquant-sensitivity` on a tiny network: a layer made fragile is ranked first and kept at
8 bits, the proposal fits its budget, and its qconfig file is one the lab accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from labquant.config.groups import load_group_option
from labquant.config.instantiate import instantiate
from labquant.errors import ConfigError
from labquant.quant.plan import build_plan
from labquant.tasks.sensitivity import sensitivity
from labquant.tasks.train import fit_fp32
from tests.conftest import TINY, compose_config

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it

BIN = Path(sys.executable).parent
ONE_STAGE = [*TINY, "model.layers=[1,1]"]  # conv1, layer1 (2 convs), layer2 (3), fc: 7 layers
FRAGILE = "layer1.0.conv2"


@pytest.fixture(scope="module")
def fragile_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny network whose FRAGILE layer holds one weight 80x the layer's largest: at
    4 bits with a min/max range that outlier takes the whole code range and every other weight
    of the layer rounds to zero, while at 8 bits the layer keeps most of its resolution."""
    out = tmp_path_factory.mktemp("fragile") / "fp32"
    cfg = compose_config("train", [*ONE_STAGE, "trainer.max_epochs=2"], out)
    results = fit_fp32(cfg)
    GlobalHydra.instance().clear()
    path = out / results["checkpoint"]
    checkpoint = torch.load(path, weights_only=True)
    weight = checkpoint["state_dict"][f"net.{FRAGILE}.weight"]
    weight[0, 0, 1, 1] = 80 * weight.abs().max()
    fragile = out / "fragile.ckpt"
    torch.save(checkpoint, fragile)
    return fragile


@pytest.mark.slow
def test_a_fragile_layer_is_ranked_first_and_kept_at_8_bits(fragile_checkpoint, tmp_path):
    out = tmp_path / "sens"
    overrides = [
        *ONE_STAGE,
        f"ckpt_path={fragile_checkpoint}",
        "qconfig.range=minmax",
        "quant.calibration_batches=2",
        "budget.packed_size_mib=0.004",
    ]
    results = sensitivity(compose_config("sensitivity", overrides, out))
    GlobalHydra.instance().clear()
    assert results["split"] == "val" and results["val_images"] == 200
    assert results["ranking"][0] == FRAGILE
    rows = {row["name"]: row for row in results["layers"]}
    worst = rows[FRAGILE]["only_low"]["sqnr_db"]
    assert all(worst < row["only_low"]["sqnr_db"] - 3 for n, row in rows.items() if n != FRAGILE)
    proposal = results["proposal"]
    assert FRAGILE in proposal["high"] and proposal["low"]
    assert proposal["packed_size_mib"] <= 0.004
    assert proposal["estimated_packed_size_mib"] == proposal["packed_size_mib"]
    # Files: the ranking, its figure, a TensorBoard run, and a qconfig the lab can load.
    for name in ("sensitivity.json", "sensitivity.md", "sensitivity.png", "results.json"):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*"))
    assert json.loads((out / "sensitivity.json").read_text())["ranking"] == results["ranking"]
    qconfig_file = out / "qconfig" / f"{proposal['name']}.yaml"
    spec = instantiate(load_group_option("qconfig", str(qconfig_file)), "qconfig")
    assert spec.name == "pot_w4a8_mixed" and spec.range_method == "minmax"
    plan = build_plan(spec)
    assert plan.layer(FRAGILE).weight.bits == 8
    assert {plan.layer(name).weight.bits for name in proposal["low"]} == {4}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("budget.packed_size_mib=0", "budget.packed_size_mib=0 must be > 0"),
        ("budget.max_drop_pp=-1", "budget.max_drop_pp=-1 must be > 0"),
        ("budget.packed_size_mib=0.0001", "is below the smallest size this qconfig reaches"),
        ("budget.max_drop_pp=1", "budget.max_drop_pp=1 is set beside budget.packed_size_mib"),
        ("qconfig=pot", "qconfig=pot is 8 bits everywhere"),
        ("qconfig=x86", "qconfig=x86 is not a power-of-two qconfig"),
        ("+qconfig.layer_bits={fc:{weight:8}}", "qconfig.layer_bits is what labquant-sensitivity"),
        ("data.val_size=1", "labquant-sensitivity scores every layer on the validation split"),
    ],
)
def test_bad_input_is_one_line_before_any_work(fragile_checkpoint, tmp_path, override, needle):
    out = tmp_path / "run"
    both = ["budget.packed_size_mib=0.004"] if "max_drop_pp=1" in override else []
    cfg = compose_config(
        "sensitivity", [*ONE_STAGE, f"ckpt_path={fragile_checkpoint}", *both, override], out
    )
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError) as caught:
        sensitivity(cfg)
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    assert not any(out.iterdir()), "nothing is written before the checks pass"


def test_the_command_line_refuses_a_bad_budget_with_exit_2(fragile_checkpoint, tmp_path):
    out = tmp_path / "run"
    run = subprocess.run(
        [str(BIN / "labquant-sensitivity"), *ONE_STAGE, f"ckpt_path={fragile_checkpoint}",
         "budget.packed_size_mib=0", f"hydra.run.dir={out}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.startswith("labquant-sensitivity:")]
    assert lines == [
        "labquant-sensitivity: error: budget.packed_size_mib=0 must be > 0; "
        "e.g. budget.packed_size_mib=0.1"
    ], run.stderr[-2000:]
    assert not (out / "results.json").exists() and not (out / "sensitivity.json").exists()
