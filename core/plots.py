"""The pictures of a training run: ``success.png`` (success curves) and ``stages.png``
(the share of rollouts reaching each task stage), drawn from its ``metrics.jsonl`` and
``evals/step_*.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pushcut.events import MetricsFile
from pushcut.rundir import RunDir

log = logging.getLogger("pushcut")


def plot_run(run_dir: Path, temperature: float) -> list[Path]:
    """Draw every picture of the run in ``run_dir``; a picture that fails is logged, never raised."""
    written = []
    for plot in (plot_curves, plot_stages):
        try:
            out = plot(run_dir, temperature)
        except Exception as exc:  # a picture is a nicety: never lose a finished run over it
            log.warning("could not draw %s for %s: %s: %s", plot.__name__, run_dir, type(exc).__name__, exc)
            continue
        if out is not None:
            written.append(out)
    return written


def eval_reports(run_dir: Path) -> list[dict[str, Any]]:
    """The run's evaluation reports (``evals/step_*.json``), in step order."""
    return [json.loads(p.read_text()) for p in sorted(RunDir(run_dir).evals.glob("step_*.json"))]


def plot_curves(run_dir: Path, temperature: float = 1.6) -> Path:
    """success.png: eval success (mean and per task) and rollout success over RL iterations."""
    plt = _pyplot()
    records = MetricsFile(run_dir).read()
    reports = eval_reports(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if reports:
        steps = [r["step"] for r in reports]
        for task in reports[-1]["per_task"]:
            ax.plot(steps, [r["per_task"].get(task, {}).get("success_rate", np.nan) for r in reports],
                    lw=1, alpha=0.45, label=task)
        ax.plot(steps, [r["success_rate"] for r in reports], "k-o", lw=2.5,
                label=f"eval mean ({_decoding(reports[-1])})")
    roll = [(r["step"], r["rollout/success_rate"]) for r in records if r.get("rollout/success_rate") is not None]
    if roll:
        ax.plot(*zip(*roll), "--", color="tab:red", lw=1.5, label=f"rollout (T={temperature:g})")
    ax.set_xlabel("RL iteration (0 = before RL)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    ax.set_title(f"{run_dir.name}: GRPO with binary rewards")
    return _save(plt, fig, RunDir(run_dir).success_plot)


def plot_stages(run_dir: Path, temperature: float = 1.6) -> Path | None:
    """stages.png: one panel per task with stages, showing the share of RL rollouts that reached
    each stage over the iterations, next to rollout and greedy eval success. None if no task has stages."""
    records = [r for r in MetricsFile(run_dir).read() if r.get("rollout/success_rate") is not None]
    reached: dict[str, list[str]] = {}
    for key in dict.fromkeys(k for r in records for k in r if k.startswith("rollout/reached/")):  # logged order
        task, stage = key.removeprefix("rollout/reached/").rsplit("/", 1)
        reached.setdefault(task, []).append(stage)
    if not reached:
        return None
    plt = _pyplot()
    reports = eval_reports(run_dir)
    smooth = 5  # iterations: each holds only a few groups of each task
    cols = min(4, len(reached))
    rows = -(-len(reached) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), dpi=110, squeeze=False, sharey=True)
    for ax, (task, stages) in zip(axes.flat, sorted(reached.items())):
        for i, stage in enumerate(stages):
            ax.plot(*trailing_mean(records, f"rollout/reached/{task}/{stage}", smooth), lw=1.2,
                    color=plt.cm.viridis(0.15 + 0.6 * i / max(1, len(stages) - 1)), label=f"reached {stage}")
        ax.legend(fontsize=6, loc="upper left")
        ax.plot(*trailing_mean(records, f"rollout/success/{task}", smooth), "--", color="tab:red", lw=1.5)
        evals = [(r["step"], r["per_task"][task]["success_rate"]) for r in reports if task in r["per_task"]]
        if evals:
            ax.plot(*zip(*evals), "ko", ms=4)
        ax.set_title(task, fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(reached):]:
        ax.axis("off")
    fig.legend(handles=[plt.Line2D([], [], ls="--", color="tab:red", label=f"rollout success (T={temperature:g})"),
                        plt.Line2D([], [], ls="", marker="o", color="k", ms=4,
                                   label=f"eval success ({_decoding(reports[-1]) if reports else 'greedy'})")],
               loc="lower right", fontsize=7)
    fig.supxlabel("RL iteration", fontsize=9)
    fig.suptitle(f"share of RL rollouts that reached each stage (mean of the last {smooth} iterations)", fontsize=10)
    return _save(plt, fig, RunDir(run_dir).stages_plot)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _decoding(report: dict[str, Any]) -> str:
    temperature = report.get("temperature", 0.0)
    return "greedy" if not temperature else f"T={temperature:g}"


def trailing_mean(records: list[dict[str, Any]], key: str, window: int) -> tuple[list[int], list[float]]:
    """(steps, values) of metric ``key``, each value the mean over the last ``window`` logged ones
    (iterations that did not log it, or logged NaN, are skipped)."""
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    values = [v for _, v in points]
    return [s for s, _ in points], [float(np.mean(values[max(0, i + 1 - window):i + 1])) for i in range(len(values))]
