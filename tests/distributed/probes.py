"""Test-only callbacks for the DDP runs, instantiated from the command line
(`+callbacks.probe._target_=tests.distributed.probes.ScalesPerRank`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl
import torch


class ScalesPerRank(pl.Callback):
    """Writes every fake-quant scale (and learned log2 threshold) of this rank at the end of
    training to `$LABQUANT_PROBE_DIR/scales_rank<r>.json`, so a test can compare the ranks."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = Path(os.environ["LABQUANT_PROBE_DIR"])
        scales = {
            name: module.scale.flatten().tolist()
            for name, module in pl_module.net.named_modules()
            if isinstance(getattr(module, "scale", None), torch.Tensor)
        }
        scales |= {  # qconfig.learn_scales: the thresholds themselves
            name: parameter.flatten().tolist()
            for name, parameter in pl_module.net.named_parameters()
            if name.endswith("log2_threshold")
        }
        path = folder / f"scales_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(scales))


class BatchNormUsesRunningStats(pl.Callback):
    """Puts every BatchNorm in eval mode for each training step: the step then does not depend
    on how the batch is split over ranks. On GPUs trainer.sync_batchnorm=true does that for
    real; torch's SyncBatchNorm refuses CPU tensors, so CPU tests use this instead."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *a) -> None:
        for module in pl_module.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


class WeightsAfterFirstStep(pl.Callback):
    """Rank 0 saves the network's weights after the first optimizer step to
    `$LABQUANT_PROBE_DIR/weights_world<W>.pt`."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *a) -> None:
        if trainer.global_step == 1 and trainer.is_global_zero:
            folder = Path(os.environ["LABQUANT_PROBE_DIR"])
            state = {k: v.detach().cpu().clone() for k, v in pl_module.net.state_dict().items()}
            torch.save(state, folder / f"weights_world{trainer.world_size}.pt")
