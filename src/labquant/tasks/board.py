"""Each stage's TensorBoard run, written once the stage's results are known.

A stage folder is one run: its event files lie in the folder itself (conf/logger), so
`tensorboard --logdir <lab folder>` names the runs by stage (fp32, ptq_pot, qat_pot, ...) and
shows them side by side. The HPARAMS tab has one row per stage with the SAME short set of keys
(`STAGE_HPARAMS`; FP32 with explicit values: backend fp32, qconfig none, 32 bits), so the table
and the parallel coordinates compare every stage, FP32 included; the full config is a text entry.
Beside them: the stage's figures and the weight histograms of its quantized layers. PTQ trains
nothing, so this is its only TensorBoard run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from torch import nn
from torch.utils.tensorboard.summary import hparams as hparams_summary

from labquant.config.instantiate import instantiate
from labquant.reports.curves import loss_accuracy_figure, read_epoch_metrics
from labquant.reports.figures import qat_scales_figure, sqnr_bar_figure, stage_label
from labquant.reports.sensitivity import sensitivity_figure, sensitivity_markdown

# Every stage's HPARAMS row has exactly these keys, in this order (a missing one would drop the
# stage from the parallel-coordinates view). "none": the setting does not apply to the stage.
STAGE_HPARAMS = ("stage", "model", "backend", "qconfig", "weight_bits", "activation_bits",
                 "granularity", "exponent", "range", "max_shift_amount", "mixed_layers",
                 "learn_scales", "epochs", "lr", "batch_size", "seed")  # fmt: skip
NOT_APPLICABLE = "none"
FP32_BITS = 32
NUMERIC_HPARAMS = frozenset({"weight_bits", "activation_bits", "mixed_layers", "epochs", "lr",
                             "batch_size", "seed"})  # fmt: skip
# The keys TensorBoard ticks by default: it shows 5, those marked `differs` first.
LEAD_HPARAMS = frozenset({"stage", "backend", "qconfig", "weight_bits", "activation_bits"})
# The HPARAMS tab's metric columns: scalars under results/, logged at the stage's last step.
# Every stage has each of them (FP32's packed size: every parameter at 32 bits): the parallel
# coordinates view leaves out a run that lacks one.
STAGE_METRICS = ("test_acc", "acc_drop", "size_mib", "packed_size_mib")


def stage_logger(cfg: DictConfig) -> TensorBoardLogger | None:
    """The run's TensorBoard logger as conf/logger configures it; None when switched off."""
    config = (cfg.get("logger") or {}).get("tensorboard")
    return instantiate(config, "logger.tensorboard") if config else None


def stage_figures(results: dict[str, Any], metrics_csv: Path | None) -> dict[str, Figure]:
    """figures/<name> of one stage: curves (trained stages), SQNR bars, QAT scale heat map."""
    label = f"{results.get('model', '')} {stage_label(results)}".strip()
    series = read_epoch_metrics(metrics_csv) if metrics_csv and metrics_csv.is_file() else {}
    figures: dict[str, Figure] = {}
    if series.get("train/loss"):
        figures["loss_accuracy"] = loss_accuracy_figure(series, f"{label}: loss and accuracy")
    if results.get("layers"):
        figures["sqnr_layers"] = sqnr_bar_figure(results["layers"], f"{label}: per-layer SQNR")
    order = [layer["name"] for layer in results.get("layers") or []]  # network order
    scales = qat_scales_figure(series, f"{label}: fake-quant scales over QAT epochs", order)
    if scales is not None:
        figures["qat_scales"] = scales
    return figures


def float_layer_weights(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every conv / linear weight of a float network (FP32 training's histograms); an int8
    stage's come from its backend (`layer_weights`)."""
    return {
        name: module.weight.detach().float().cpu()
        for name, module in net.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    }


def stage_hparams(cfg: DictConfig, results: dict[str, Any]) -> dict[str, str | int | float]:
    """The stage's HPARAMS row: `STAGE_HPARAMS`, each with a value in every stage."""
    stage = results["stage"]
    if stage == "fp32":
        trained = (cfg.trainer.max_epochs, cfg.optimizer.lr)
    elif stage == "qat":
        trained = (cfg.quant.epochs, cfg.quant.lr)
    else:  # PTQ trains nothing
        trained = (0, 0.0)
    float_stage = stage == "fp32"
    row: dict[str, Any] = {
        "stage": stage,
        "model": results.get("model") or NOT_APPLICABLE,
        "backend": "fp32" if float_stage else results.get("backend"),
        "qconfig": NOT_APPLICABLE if float_stage else results.get("qconfig"),
        "weight_bits": FP32_BITS if float_stage else results.get("weight_bits"),
        "activation_bits": FP32_BITS if float_stage else results.get("activation_bits"),
        "granularity": results.get("granularity"),
        "exponent": results.get("exponent"),
        "range": results.get("range"),
        "max_shift_amount": results.get("max_shift_amount"),
        "mixed_layers": len(results.get("layer_bits") or {}),
        # qconfig.learn_scales: exponents learned by QAT (true) or chosen by the observers
        "learn_scales": None if float_stage else str(bool(results.get("learn_scales"))).lower(),
        "epochs": int(trained[0] or 0),
        "lr": float(trained[1] or 0.0),
        "batch_size": int(cfg.data.batch_size),
        "seed": int(cfg.seed),
    }
    return {key: column_value(key, row[key]) for key in STAGE_HPARAMS}


def column_value(key: str, value: Any) -> Any:
    """One type per column: TensorBoard makes a column of mixed types a string column."""
    if key in NUMERIC_HPARAMS:
        return value
    return NOT_APPLICABLE if value is None else str(value)


def stage_experiment() -> Summary:
    """The HPARAMS tab's columns, the same in every stage's run: TensorBoard reads the first
    experiment it finds for all runs (torch's `hparams` would write each stage's own metrics,
    and without one TensorBoard takes every scalar of every run as a metric column)."""
    infos = [
        api_pb2.HParamInfo(
            name=key,
            type=api_pb2.DATA_TYPE_FLOAT64 if key in NUMERIC_HPARAMS else api_pb2.DATA_TYPE_STRING,
            differs=key in LEAD_HPARAMS,  # only orders the columns: TensorBoard ticks 5
        )
        for key in STAGE_HPARAMS
    ]
    metrics = [
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=f"results/{k}")) for k in STAGE_METRICS
    ]
    data = plugin_data_pb2.HParamsPluginData(
        experiment=api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)
    )
    metadata = hparams_metadata.create_summary_metadata(data)
    return Summary(value=[Summary.Value(tag=hparams_metadata.EXPERIMENT_TAG, metadata=metadata)])


def log_stage(
    cfg: DictConfig,
    results: dict[str, Any],
    metrics_csv: Path | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    step: int = 0,
) -> None:
    """Figures, weight histograms, the full config as text and the HPARAMS row of one
    finished stage; `step` is the stage's last step on the TensorBoard axis."""
    logger = stage_logger(cfg)
    if logger is None:
        return
    writer = logger.experiment
    for tag, figure in stage_figures(results, metrics_csv).items():
        writer.add_figure(f"figures/{tag}", figure, global_step=step, close=True)
    for name, weight in (weights or {}).items():
        writer.add_histogram(f"weights/{name}", weight, global_step=step)
    writer.add_text("config", config_text(cfg), global_step=step)
    hparams = stage_hparams(cfg, results)
    metrics = {
        f"results/{k}": float(results[k]) for k in STAGE_METRICS if results.get(k) is not None
    }
    log_hparams_row(writer, hparams, metrics, step, stage_experiment())
    # One hparams.yaml for every stage (the CSV logger of a trained stage wrote `{}` there).
    save_hparams_to_yaml(Path(logger.log_dir) / logger.NAME_HPARAMS_FILE, hparams)
    logger.finalize("success")


def config_text(cfg: DictConfig) -> str:
    """The resolved config as TensorBoard's TEXT tab shows it (markdown: a YAML code block)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    shown = {k: v for k, v in resolved.items() if k not in ("hydra", "paths")}  # type: ignore[union-attr]
    # Four spaces make a markdown code block: TensorBoard keeps the YAML's indentation.
    return "\n".join("    " + line for line in OmegaConf.to_yaml(shown).splitlines())


def log_hparams_row(
    writer: Any,
    hparams: dict[str, Any],
    metrics: dict[str, float],
    step: int,
    experiment: Summary | None = None,
) -> None:
    """The HPARAMS row, its `experiment` (the columns) and its metric scalars at `step`.
    Lightning's `log_hyperparams` writes the metrics at step 0, where they would sit as single
    points far left of every curve."""
    _, session_start, session_end = hparams_summary(hparams, metrics)
    for summary in (experiment, session_start, session_end):
        if summary is not None:
            writer.file_writer.add_summary(summary)
    for tag, value in metrics.items():
        writer.add_scalar(tag, value, global_step=step)


def log_sensitivity(cfg: DictConfig, results: dict[str, Any]) -> None:
    """labquant-sensitivity's TensorBoard run: the bar figure, the table as text, and per layer
    the validation accuracy and logits SQNR with only it at the low width and only it at 8."""
    logger = stage_logger(cfg)
    if logger is None:
        return
    writer = logger.experiment
    writer.add_figure("figures/sensitivity", sensitivity_figure(results), global_step=0, close=True)
    writer.add_text("sensitivity", sensitivity_markdown(results), global_step=0)
    for row in results["layers"]:
        for side in ("only_low", "only_high"):
            writer.add_scalar(f"{side}_val_acc/{row['name']}", row[side]["val_acc"], 0)
            writer.add_scalar(f"{side}_sqnr_db/{row['name']}", row[side]["sqnr_db"], 0)
    proposal = results.get("proposal") or {}
    hparams = {"qconfig": results["qconfig"], "backend": results["backend"]}
    metrics = {
        f"results/proposal_{key}": float(proposal[key])
        for key in ("val_acc", "val_drop_pp", "packed_size_mib")
        if proposal.get(key) is not None
    }
    log_hparams_row(writer, hparams, metrics, step=0)
    logger.finalize("success")
