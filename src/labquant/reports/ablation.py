"""The ablation table: one row per job of a sweep, read from the jobs' own files.

A Hydra callback rebuilds it after every job (so a failing or killed job never loses the rows
before it) and once more at the end of the multirun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig, OmegaConf

from labquant.config.resolvers import register_resolvers
from labquant.reports.artifacts import read_json, write_atomic, write_csv, write_text
from labquant.reports.curves import read_epoch_metrics

COLUMNS = (
    "#",
    "learning rate",
    "scheduler",
    "weight decay",
    "momentum",
    "final val acc (%)",
    "best val acc (%)",
    "test acc (%)",
    "epochs",
    "wall time (s)",
    "status",
)


def describe_scheduler(cfg: DictConfig) -> str:
    scheduler = cfg.get("scheduler") or {}
    target = str(scheduler.get("_target_", ""))
    if not target:
        return "none"
    if target.endswith("StepLR"):
        return f"StepLR (x{scheduler.gamma} at epoch {scheduler.step_size})"
    if target.endswith("WarmupCosineAnnealingLR"):
        return f"WarmupCosineAnnealingLR (warmup {scheduler.warmup_epochs})"
    return target.rsplit(".", 1)[-1]


def job_dirs(sweep_dir: Path) -> list[Path]:
    dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra/config.yaml").is_file()]
    return sorted(dirs, key=lambda p: (len(p.name), p.name))


def job_row(job_dir: Path) -> dict[str, Any]:
    register_resolvers()  # the saved configs use ${lq.step_epoch:...}
    cfg = OmegaConf.load(job_dir / ".hydra/config.yaml")
    path = job_dir / "results.json"
    results: dict[str, Any] = read_json(path) if path.is_file() else {}
    status = results.get("status")
    if status == "complete":
        state = "ok"
    elif status == "failed":
        state = f"FAILED: {results.get('error', '?')}"
    else:
        state = "FAILED: no results.json (killed or still running)"
    return {
        "#": cfg.get("ablation_row") or "-",
        "job": job_dir.name,
        "learning rate": cfg.optimizer.lr,
        "scheduler": describe_scheduler(cfg),
        "weight decay": cfg.optimizer.weight_decay,
        "momentum": cfg.optimizer.momentum,
        "final val acc (%)": results.get("val_acc"),
        "best val acc (%)": results.get("best_val_acc"),
        "test acc (%)": results.get("test_acc"),
        "epochs": results.get("epochs"),
        "wall time (s)": results.get("wall_time_s"),
        "status": state,
        "max_epochs": cfg.trainer.max_epochs,
        "step_scaled": describe_scheduler(cfg).startswith("StepLR")
        and cfg.scheduler.step_size != 20,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if value >= 0.01 or value == 0 else f"{value:g}"
    return str(value).replace("|", "/")


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    notes = []
    if any(row["step_scaled"] for row in rows):
        row = next(row for row in rows if row["step_scaled"])
        notes.append(
            f"StepLR: the lab drops the lr at epoch 20 of 40; with trainer.max_epochs="
            f"{row['max_epochs']} that epoch is outside the budget, so the drop is scaled to "
            f"the same fraction: {row['scheduler']}."
        )
    notes.append(
        "Accuracies in %: final val = last epoch, best val = best epoch (its "
        "checkpoint is the one tested), test = best checkpoint on the test set."
    )
    return "\n".join(["# Ablation", "", *lines, "", *(f"- {n}" for n in notes), ""])


def plot_curves(sweep_dir: Path, rows: list[dict[str, Any]], out_png: Path) -> None:
    """Left: validation accuracy per epoch of every job; right: each row's best and final
    validation accuracy as bars, in the table's order."""
    fig, (ax, ax_bars) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    for row in rows:
        metrics = sweep_dir / row["job"] / "metrics.csv"
        points = read_epoch_metrics(metrics).get("val/acc", []) if metrics.is_file() else []
        if points:
            epochs, values = zip(*points, strict=True)
            label = (
                f"#{row['#']}: lr {row['learning rate']}, {row['scheduler']}, "
                f"wd {row['weight decay']}, m {row['momentum']}"
            )
            ax.plot([e + 1 for e in epochs], values, "-o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Ablation: validation accuracy per epoch")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    x = np.arange(len(rows))
    best = [
        row["best val acc (%)"] if row["best val acc (%)"] is not None else np.nan for row in rows
    ]
    final = [
        row["final val acc (%)"] if row["final val acc (%)"] is not None else np.nan for row in rows
    ]
    ax_bars.bar(x - 0.2, best, 0.4, label="best val acc")
    ax_bars.bar(x + 0.2, final, 0.4, label="final val acc")
    for i in np.flatnonzero(np.isnan(best) & np.isnan(final)):
        ax_bars.annotate("no result", (i, 0), ha="center", va="bottom", rotation=90, fontsize=8)
    ax_bars.set_xticks(x)
    ax_bars.set_xticklabels([f"#{row['#']}" for row in rows])
    ax_bars.set_xlabel("ablation row (table order)")
    ax_bars.set_ylabel("validation accuracy (%)")
    ax_bars.set_title("Best and final validation accuracy")
    ax_bars.grid(axis="y", alpha=0.3)
    ax_bars.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(out_png, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_ablation(sweep_dir: Path) -> list[dict[str, Any]]:
    """ablation.md, ablation.csv and ablation_curves.png in the sweep folder."""
    sweep_dir = Path(sweep_dir)
    rows = [job_row(job_dir) for job_dir in job_dirs(sweep_dir)]
    write_text(sweep_dir / "ablation.md", markdown(rows))
    write_csv(sweep_dir / "ablation.csv", rows, COLUMNS)
    plot_curves(sweep_dir, rows, sweep_dir / "ablation_curves.png")
    return rows


class SweepReportCallback(Callback):
    """Hydra callback that keeps a sweep folder's report current: after every job (a failing or
    killed job never loses the rows before it) and once more at the end of the multirun.
    Subclasses name the report's writer."""

    @staticmethod
    def write(sweep_dir: Path) -> Any:
        raise NotImplementedError

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            self.write(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.write(Path(config.hydra.sweep.dir))


class AblationTableCallback(SweepReportCallback):
    """Keeps the sweep's ablation table current."""

    write = staticmethod(write_ablation)
