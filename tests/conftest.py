"""Shared fixtures: composing the real Hydra configs, and finding the real CIFAR-10 subset."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from torch.ao.quantization import QConfig

from labquant.config.groups import load_group_option
from labquant.config.instantiate import instantiate
from labquant.config.paths import CONF_DIR
from labquant.config.resolvers import register_resolvers
from labquant.quant.eager.qconfigs import eager_qconfig, engine_for
from labquant.quant.qconfigs import QConfigSpec

REPO_ROOT = Path(__file__).resolve().parents[1]

# A tiny, fast training setup for tests: synthetic data, a 3-stage ResNet of width 8.
TINY = [
    "data=synthetic",
    "data.num_train=1200",
    "data.num_test=400",
    "data.val_size=200",
    "data.batch_size=64",
    "model=small",
    "model.layers=[1,1,1]",
    "model.base_width=8",
    "callbacks.progress_bar=null",
    "trainer.enable_model_summary=false",
]


def cifar10_mini_root() -> Path | None:
    """`LABQUANT_CIFAR10_MINI`, else ../shared/data/cifar10-mini beside the repo, else None."""
    candidates = [
        os.environ.get("LABQUANT_CIFAR10_MINI"),
        REPO_ROOT.parent / "shared/data/cifar10-mini",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "cifar-10-batches-py").is_dir():
            return Path(candidate)
    return None


def compose_config(config_name: str, overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """Compose a real config as the CLI would, with the run folder set to `output_dir`."""
    GlobalHydra.instance().clear()
    register_resolvers()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def compose_train(tmp_path: Path) -> Callable[..., DictConfig]:
    def _compose(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        return compose_config("train", overrides, output_dir or tmp_path / "run")

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def tiny_fp32_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One real FP32 run of the TINY setup, shared by the training and quantization tests."""
    from labquant.tasks.train import fit_fp32

    out = tmp_path_factory.mktemp("fp32") / "run"
    cfg = compose_config("train", [*TINY, "trainer.max_epochs=4", "scheduler.warmup_epochs=1"], out)
    results = fit_fp32(cfg)
    GlobalHydra.instance().clear()
    return results, out


# The tiny lab (FP32 -> PTQ pot -> QAT pot), shared by the lab, report and TensorBoard tests.
# The shortest lab over any data and model: one epoch per training stage, no latency timing.
SHORTEST_LAB = [
    "trainer.max_epochs=1",
    "scheduler.warmup_epochs=0",
    "lab.qat.epochs=1",
    "lab.qat.freeze_bn_epoch=0",
    "lab.qat.freeze_observer_epoch=1",
    "lab.ptq.calibration_batches=2",
    "lab.ptq.measure_latency=false",
    "lab.qat.measure_latency=false",
]

TINY_LAB = [
    *TINY,
    "trainer.max_epochs=2",
    "scheduler.warmup_epochs=1",
    "lab.qat.epochs=1",
    "lab.qat.freeze_bn_epoch=0",
    "lab.qat.freeze_observer_epoch=1",
    "lab.ptq.calibration_batches=4",
    "lab.ptq.measure_latency=true",
    "lab.ptq.fp32_paths=[eager]",  # an Inductor compile costs 30-60 s
    "lab.qat.fp32_paths=[eager]",
]


@pytest.fixture(scope="session")
def tiny_lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny lab folder; tests that change it work on a copy."""
    from labquant.tasks.lab import run_lab

    out = tmp_path_factory.mktemp("lab") / "lab"
    run_lab(compose_config("lab", TINY_LAB, out))
    GlobalHydra.instance().clear()
    return out


# Four stages of width 20..160: about the smallest of these ResNets whose int8 file is <= 0.27
# of FP32 for x86 too (fixed per-layer overhead, per-channel scales, dominates smaller ones).
QUANT_MODEL = [*TINY, "model.layers=[1,1,1,1]", "model.base_width=20"]


@pytest.fixture(scope="session")
def fp32_checkpoint_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """A trained FP32 checkpoint for the quantization tests."""
    from labquant.tasks.train import fit_fp32

    out = tmp_path_factory.mktemp("fp32w32") / "run"
    cfg = compose_config(
        "train", [*QUANT_MODEL, "trainer.max_epochs=6", "scheduler.warmup_epochs=1"], out
    )
    results = fit_fp32(cfg)
    GlobalHydra.instance().clear()
    return results, out


def qconfig_spec(name: str, **overrides: object) -> QConfigSpec:
    """conf/qconfig/<name>.yaml built as the pipelines build it (`qconfig=<name>`)."""
    cfg = OmegaConf.merge(load_group_option("qconfig", name), overrides)
    return instantiate(cfg, f"qconfig={name}")


def get_qconfig(name: str, qat: bool, max_shift_amount: int | None = None) -> QConfig:
    """The eager backend's torch.ao QConfig for `qconfig=<name>`."""
    overrides = {} if max_shift_amount is None else {"max_shift_amount": max_shift_amount}
    return eager_qconfig(qconfig_spec(name, **overrides), qat=qat)


def backend_for(name: str) -> str:
    """The quantized engine the eager backend runs `qconfig=<name>` on."""
    return engine_for(qconfig_spec(name))


def trained_fp32_net(fp32: dict, run: Path) -> nn.Module:
    """The FP32 network of `fp32_checkpoint_run`, with its trained weights, in eval mode."""
    from labquant.models import build_resnet

    net = build_resnet(**fp32["arch"]).eval()
    net.load_state_dict(torch.load(run / "model_fp32_state_dict.pt"))
    return net


def held_out_images() -> torch.Tensor:
    """Normalized test images of the same synthetic task: never trained or calibrated on."""
    from labquant.data.augment import normalize
    from labquant.data.synthetic import SyntheticDataModule

    held_out = SyntheticDataModule(num_train=1200, num_test=512, val_size=200)
    held_out.setup()
    return normalize(held_out.arrays("test")[0])
