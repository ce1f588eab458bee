"""Multi-process training through Lightning's DDP, on the CPU (gloo): the epoch shards, the
configs, and real 2-process runs whose numbers must equal single-process ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import hydra.utils
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from labquant.checkpoints import load_checkpoint, net_state
from labquant.config.paths import CONF_DIR
from labquant.config.resolvers import register_resolvers
from labquant.data.synthetic import SyntheticDataModule
from labquant.data.tensors import EpochSeededRandomSampler, ShardedSequentialSampler
from labquant.models.resnet import small_resnet
from labquant.tasks.evaluate import evaluate
from tests.conftest import SHORTEST_LAB, TINY
from tests.reliability.runs import LAB, QUANTIZE, TRAIN, assert_ok, results, run_cli

pytestmark = pytest.mark.slow  # subprocesses, DDP or a whole lab: `pytest -m "not slow"` skips it

DDP = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


# --- shards


@pytest.mark.parametrize(("n", "world_size"), [(12, 2), (13, 2), (30, 3)])
def test_epoch_shards_are_disjoint_and_add_up_to_the_single_process_order(
    n: int, world_size: int
) -> None:
    single = EpochSeededRandomSampler(n, seed=7)
    single.set_epoch(3)
    order = list(single)
    shards = []
    for rank in range(world_size):
        sampler = EpochSeededRandomSampler(n, seed=7, rank=rank, world_size=world_size)
        sampler.set_epoch(3)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) == n // world_size  # every rank: same steps
    flat = [i for shard in shards for i in shard]
    assert len(flat) == len(set(flat))  # disjoint
    kept = n - n % world_size
    assert sorted(flat) == sorted(order[:kept])  # the union is the epoch's order
    # Each rank's first batch of b, together, is the single-process first batch of b * W.
    b = 2
    assert sorted(i for shard in shards for i in shard[:b]) == sorted(order[: b * world_size])


def test_evaluation_shards_cover_every_image_exactly_once() -> None:
    shards = [list(ShardedSequentialSampler(401, rank, 2)) for rank in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(401))  # no padding, no repeat


# --- configs


def compose_hydra(config_name: str, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    register_resolvers()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("config_name", ["train", "quantize", "lab"])
def test_trainer_ddp_composes_with_every_entry_point(config_name: str) -> None:
    cfg = compose_hydra(config_name, ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"])
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes) == ("ddp", 4, 2)
    assert cfg.trainer.use_distributed_sampler is False  # the DataModule shards itself
    plain = compose_hydra(config_name, ["trainer.strategy=ddp", "trainer.sync_batchnorm=true"])
    assert plain.trainer.strategy == "ddp" and plain.trainer.sync_batchnorm is True


@pytest.mark.parametrize(
    ("overrides", "gpus", "nodes"),
    [
        ([], 1, 1),
        (["trainer=ddp", "trainer.devices=4"], 4, 1),
        (["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"], 4, 2),
    ],
)
def test_slurm_launcher_agrees_with_the_trainer(
    overrides: list[str], gpus: int, nodes: int
) -> None:
    """The ablation on a cluster: one SLURM job per sweep job, one task per GPU."""
    cfg = compose_hydra("train", ["experiment=ablation", "hydra/launcher=slurm_gpu", *overrides])
    # What submitit receives: the launcher Hydra instantiates inside the composed config.
    params = hydra.utils.instantiate(cfg.hydra.launcher).params
    assert params["gpus_per_node"] == params["tasks_per_node"] == cfg.trainer.devices == gpus
    assert params["nodes"] == cfg.trainer.num_nodes == nodes
    GlobalHydra.instance().clear()


# --- real 2-process runs (gloo on the CPU)

FP32_DDP = [*TINY, "data.num_test=401", "trainer.max_epochs=2", "scheduler.warmup_epochs=1"]


@pytest.fixture(scope="module")
def ddp_fp32_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp") / "fp32"
    assert_ok(run_cli(TRAIN, *FP32_DDP, *DDP, run_dir=run_dir))
    return run_dir


@pytest.mark.slow
def test_two_process_test_accuracy_is_the_single_process_one_exactly(ddp_fp32_run: Path) -> None:
    got = results(ddp_fp32_run)
    assert (got["world_size"], got["global_batch_size"]) == (2, 2 * 64)
    assert got["test_images"] == 401  # odd on purpose: no image padded in, none repeated
    checkpoint = load_checkpoint(ddp_fp32_run / got["checkpoint"], "a test checkpoint")
    net = small_resnet(layers=[1, 1, 1], base_width=8)
    net.load_state_dict(net_state(checkpoint))
    dm = SyntheticDataModule(num_train=1200, num_test=401, val_size=200, seed=42)
    dm.setup("test")
    accuracy, _ = evaluate(net, dm.eval_dataloader())
    assert got["test_acc"] == round(accuracy, 4)  # results.json keeps 4 decimals
    # rank 1 wrote nothing of its own but the log Lightning's Hydra integration gives it
    events = [p.name for p in ddp_fp32_run.glob("events.out.tfevents.*")]
    assert len({name.split(".")[-2] for name in events}) == 1  # <time>.<host>.<pid>.<n>: one pid
    names = {p.name for p in ddp_fp32_run.iterdir() if p.name not in events}
    assert names <= {
        "checkpoints",
        "hparams.yaml",
        "metrics.csv",
        "results.json",
        "loss_accuracy.png",
        "model_fp32_state_dict.pt",
        "train.log",
        "train_ddp_process_1.log",
        ".hydra",
        ".labquant.lock",  # rank 0's lock on the run folder (rank 1 takes none)
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend",
    [
        ["backend=eager"],
        ["backend=pt2e", "backend.compile=false", "backend.onnx=false"],
        [
            "backend=eager",
            "qconfig=pot_w4a4",
            "qconfig.learn_scales=true",
            "quant.scale_lr=0.05",
            "quant.calibration_batches=2",
        ],
    ],
    ids=["eager", "pt2e", "eager-learned-exponents"],
)
def test_two_process_qat_keeps_scales_equal_on_every_rank_and_converts(
    ddp_fp32_run: Path, tmp_path: Path, backend: list[str]
) -> None:
    os.environ["LABQUANT_PROBE_DIR"] = str(tmp_path)
    fp32 = results(ddp_fp32_run)
    run_dir = tmp_path / "qat"
    result = run_cli(
        QUANTIZE,
        *FP32_DDP,
        *DDP,
        f"ckpt_path={ddp_fp32_run / fp32['checkpoint']}",
        "quant=qat",
        *backend,
        "quant.epochs=2",
        "quant.freeze_bn_epoch=1",
        "quant.freeze_observer_epoch=1",
        "quant.measure_latency=false",
        "+callbacks.probe._target_=tests.distributed.probes.ScalesPerRank",
        run_dir=run_dir,
    )
    del os.environ["LABQUANT_PROBE_DIR"]
    assert_ok(result)
    ranks = [json.loads((tmp_path / f"scales_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] and ranks[0] == ranks[1]
    thresholds = [name for name in ranks[0] if name.endswith("log2_threshold")]
    assert bool(thresholds) == ("qconfig.learn_scales=true" in backend)
    got = results(run_dir)
    assert got["world_size"] == 2 and got["status"] == "complete"
    assert 0 <= got["test_acc"] <= 100 and torch.isfinite(torch.tensor(got["acc_drop"]))


def probe(name: str, key: str) -> str:
    return f"+callbacks.{key}._target_=tests.distributed.probes.{name}"


@pytest.mark.slow
def test_two_processes_take_the_same_first_step_as_one_with_the_same_global_batch(
    tmp_path: Path,
) -> None:
    """Batch 64 in one process vs 32 + 32 in two: the same images (shards), the same
    augmentation (keyed by image), the gradients averaged: the same weights after one step."""
    os.environ["LABQUANT_PROBE_DIR"] = str(tmp_path)
    common = [
        *TINY,
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "scheduler.warmup_epochs=0",
        # fp32 on every CPU: with AMX the default is bf16-mixed, whose convolutions round a
        # batch of 64 and two of 32 differently (about 1e-3), which is not what this tests
        "trainer.precision=32-true",
        probe("BatchNormUsesRunningStats", "bn"),
        probe("WeightsAfterFirstStep", "weights"),
    ]
    try:
        assert_ok(run_cli(TRAIN, *common, "data.batch_size=64", run_dir=tmp_path / "one"))
        assert_ok(run_cli(TRAIN, *common, *DDP, "data.batch_size=32", run_dir=tmp_path / "two"))
    finally:
        del os.environ["LABQUANT_PROBE_DIR"]
    one = torch.load(tmp_path / "weights_world1.pt", weights_only=True)
    two = torch.load(tmp_path / "weights_world2.pt", weights_only=True)
    init = small_resnet(layers=[1, 1, 1], base_width=8).state_dict()
    moved = [k for k in one if one[k].is_floating_point() and not torch.equal(one[k], init[k])]
    assert moved  # the step changed the weights (the comparison is not of two untouched nets)
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, atol=1e-5, rtol=0, msg=key)


@pytest.mark.slow
def test_two_process_run_killed_and_resumed_ends_like_an_uninterrupted_one(
    ddp_fp32_run: Path, tmp_path: Path
) -> None:
    from tests.reliability.faults import SigkillAt, fault_overrides

    run_dir = tmp_path / "killed"
    killer = fault_overrides("killer", SigkillAt, epoch=1)  # both ranks die as epoch 1 starts
    try:
        killed = run_cli(TRAIN, *FP32_DDP, *DDP, *killer, run_dir=run_dir)
    finally:  # a rank left waiting on a dead peer would wait for gloo's timeout: end it
        subprocess.run(["pkill", "-9", "-f", f"hydra.run.dir={run_dir}"], check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run_dir / "results.json").exists()
    assert_ok(run_cli(TRAIN, *FP32_DDP, *DDP, "resume=true", run_dir=run_dir))
    want, got = results(ddp_fp32_run), results(run_dir)
    for key in ("test_acc", "test_loss", "val_acc", "best_val_acc", "epochs", "test_images"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


@pytest.mark.slow
def test_a_failure_under_ddp_ends_with_one_line_per_rank_and_a_failed_result(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        TRAIN, *TINY, *DDP, "trainer.max_epochs=3", "optimizer.lr=1e4", run_dir=run_dir
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = sorted(line for line in result.stderr.splitlines() if "error:" in line)
    assert 1 <= len(lines) <= 2  # each failing rank says it once; rank 1 names itself
    assert all(line.startswith("labquant-train: error: ") for line in lines)
    assert all("training diverged" in line and "optimizer.lr" in line for line in lines)
    assert sum("[rank 1]" not in line for line in lines) <= 1
    assert results(run_dir)["status"] == "failed"
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_lab_under_ddp_runs_fp32_and_qat_on_two_processes_and_reports(tmp_path: Path) -> None:
    """Every rank runs the same DDP stages in the same order (FP32, then QAT); PTQ, conversion
    and the report are rank 0's alone."""
    run_dir = tmp_path / "lab"
    result = run_cli(
        LAB,
        *TINY,
        *DDP,
        *SHORTEST_LAB,
        run_dir=run_dir,
        timeout=600,
    )
    assert_ok(result)
    assert results(run_dir / "fp32")["world_size"] == 2
    assert results(run_dir / "ptq_pot")["world_size"] == 1
    assert results(run_dir / "qat_pot")["world_size"] == 2
    assert (run_dir / "report.md").is_file() and not (run_dir / "results.json").exists()
