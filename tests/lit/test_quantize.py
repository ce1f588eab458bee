"""PTQ / QAT stages end to end on a trained checkpoint: power-of-two scales read back from the
saved int8 file, int8 vs FP32 agreement, file size (kill-and-resume: tests/reliability)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from labquant.tasks.quantize import quantize
from tests.conftest import QUANT_MODEL, compose_config, held_out_images, trained_fp32_net


def _quantize(tmp: Path, checkpoint: Path, *overrides: str) -> dict:
    cfg = compose_config(
        "quantize",
        [*QUANT_MODEL, f"ckpt_path={checkpoint}", "quant.fp32_paths=[eager]", *overrides],
        tmp,
    )
    return quantize(cfg)


@pytest.fixture(scope="module")
def ptq_pot(fp32_checkpoint_run: tuple[dict, Path], tmp_path_factory: pytest.TempPathFactory):
    fp32, run = fp32_checkpoint_run
    out = tmp_path_factory.mktemp("ptq_pot")
    results = _quantize(
        out, run / fp32["checkpoint"], "quant=ptq", "qconfig=pot", "quant.calibration_batches=8"
    )
    return results, out


def _all_scales(state_dict: dict) -> list[float]:
    scales: list[float] = []
    for key, value in state_dict.items():
        if key.endswith(".scale"):
            scales.append(float(value))
        elif isinstance(value, torch.Tensor) and value.is_quantized:
            if value.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                scales.append(float(value.q_scale()))
            else:
                scales += [float(s) for s in value.q_per_channel_scales()]
    return scales


def test_every_pot_scale_is_an_exact_power_of_two(ptq_pot) -> None:
    results, out = ptq_pot
    state_dict = torch.load(out / results["int8_state_dict"], weights_only=False)
    scales = _all_scales(state_dict)
    weight_scales = [
        k for k, v in state_dict.items() if isinstance(v, torch.Tensor) and v.is_quantized
    ]
    assert len(scales) > 20 and weight_scales  # activations and weights both read back
    for scale in scales:
        mantissa, _ = math.frexp(scale)
        n = -math.log2(scale)
        assert mantissa == 0.5, scale  # exactly 2**k
        assert 0 <= n <= results["max_shift_amount"] and n == int(n), scale


def test_results_json_of_a_quantization_stage(ptq_pot) -> None:
    results, out = ptq_pot
    for key in (
        "stage",
        "qconfig",
        "test_acc",
        "fp32_test_acc",
        "acc_drop",
        "size_mib",
        "fp32_size_mib",
        "layers",
        "wall_time_s",
    ):
        assert key in results, key
    assert results["stage"] == "ptq" and results["qconfig"] == "pot"
    assert results["acc_drop"] == pytest.approx(results["fp32_test_acc"] - results["test_acc"])
    assert results["size_mib"] == pytest.approx(
        (out / "model_int8_state_dict.pt").stat().st_size / 2**20
    )
    layer = results["layers"][0]
    assert {"name", "scale", "zero_point", "weight_scale", "clamp", "sqnr_db"} <= set(layer)
    assert all(
        math.isfinite(layer["sqnr_db"]) and layer["sqnr_db"] > 5 for layer in results["layers"]
    )


@pytest.mark.parametrize("qconfig", ["x86", "pot"])
def test_int8_agrees_with_fp32_and_is_small(
    fp32_checkpoint_run, tmp_path: Path, qconfig: str
) -> None:
    fp32, run = fp32_checkpoint_run
    results = _quantize(
        tmp_path,
        run / fp32["checkpoint"],
        "quant=ptq",
        f"qconfig={qconfig}",
        "quant.calibration_batches=16",
        "quant.measure_latency=false",
    )
    int8 = torch.jit.load(tmp_path / "model_int8.pt")
    net = trained_fp32_net(fp32, run)
    x = held_out_images()  # test images of the same task, never trained or calibrated on
    with torch.inference_mode():
        agree = (int8(x).argmax(1) == net(x).argmax(1)).float().mean().item()
    assert agree >= 0.95, agree
    assert results["size_mib"] <= 0.27 * results["fp32_size_mib"]
