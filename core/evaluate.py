"""Evaluation on held-out start states: greedy (one episode each) or sampled, per-task success, videos."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pushcut.config import EVAL_SPLITS, EvalConfig
from pushcut.batch import Episode
from pushcut.contracts import INFO_STAGE, NO_STAGE
from pushcut.rollout import RolloutCollector
from pushcut.sampling import StartState

log = logging.getLogger("pushcut")


def eval_starts(collector: RolloutCollector, max_init_states: int = 0, split: str = "eval") -> list[StartState]:
    """Every task's ``split`` of initial states ("eval" or "train"), the first ``max_init_states``
    of each when > 0."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    starts = []
    for task in collector.tasks.values():
        states = task.eval_init_states if split == "eval" else task.train_init_states
        starts.extend(StartState(task.task_id, s) for s in (states[:max_init_states] if max_init_states else states))
    return starts


def write_video(frames: list[np.ndarray], path: Path, fps: int = 10) -> Path:
    """Write RGB frames (H, W, 3) uint8 as an H.264 MP4."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    # macro_block_size=1 keeps small frames (e.g. 64 px) at their size instead of padding with a warning
    with imageio.get_writer(str(path), fps=fps, codec="libx264", quality=7, macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(np.asarray(frame, dtype=np.uint8))
    return path


def evaluate(
    collector: RolloutCollector,
    config: EvalConfig,
    *,
    seed: int = 0,
    video_dir: Path | None = None,
    video_prefix: str = "eval",
    split: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """``config.samples_per_state`` rollouts per eval start state (``config.max_init_states`` per
    task, 0: all) at ``config.temperature`` (0: greedy); ``config.videos_per_task`` MP4s at
    ``config.fps`` into ``video_dir`` when it is given. ``split`` overrides ``config.split``
    (a training run's evaluations always use the held-out states).

    ``split`` "train" evaluates on the initial states RL trains on instead of the held-out
    ones; the gap between the two shows how much a policy fits its training states.

    The episodes draw from their own torch random stream seeded with ``seed``, so a
    sampled eval repeats exactly and leaves the caller's stream (a training run's
    rollouts) as it was. Sampled videos are named ``<video_prefix>_T<temperature>_…``.

    Returns ``(report, videos)``: report has ``success_rate`` (mean over tasks),
    ``per_task`` {task_id: {"success_rate", "episodes", "successes"}, plus
    "failures_by_stage" where the env names stages (see :func:`summarize`)}, ``episodes``,
    ``failed`` (episodes lost to env failures, excluded from the rates), ``temperature``,
    ``samples_per_state`` and ``split``. Videos show the first episode of the first start
    states; a train-split eval names them ``<video_prefix>_train_…``.
    """
    split = config.split if split is None else split
    max_init_states, videos_per_task, fps = config.max_init_states, config.videos_per_task, config.fps
    temperature, samples_per_state = config.temperature, config.samples_per_state
    starts = eval_starts(collector, max_init_states, split)
    first_of_task: dict[str, list[int]] = defaultdict(list)
    for k, s in enumerate(starts):
        if len(first_of_task[s.task_id]) < videos_per_task:
            first_of_task[s.task_id].append(k * samples_per_state)  # episode k * G is start k's first
    wanted = {k for ks in first_of_task.values() for k in ks} if video_dir is not None else set()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        batch, stats = collector.collect(starts, group_size=samples_per_state, temperature=temperature,
                                         record=lambda k: k in wanted, progress=progress)
    episodes = batch.episodes
    report = summarize(episodes, {t.task_id: t.stages for t in collector.tasks.values()})
    report["temperature"] = float(temperature)
    report["samples_per_state"] = int(samples_per_state)
    report["split"] = split
    report["env_steps"] = stats.env_steps
    report["wall_s"] = round(stats.wall_s, 3)
    videos = []
    if split != "eval":
        video_prefix = f"{video_prefix}_{split}"
    if temperature:
        video_prefix = f"{video_prefix}_T{temperature:g}"
    if video_dir is not None:
        for k in sorted(wanted):
            ep = episodes[k]
            if ep.frames:
                tag = "success" if ep.success else "fail"
                name = f"{video_prefix}_{ep.task_id}_init{ep.init_state}_{tag}.mp4"
                try:
                    videos.append(write_video(ep.frames, Path(video_dir) / name, fps))
                except Exception as exc:  # a video is a nicety: never lose a run's results over it
                    log.warning("could not write %s: %s: %s", name, type(exc).__name__, exc)
    return report, videos


def summarize(episodes: list[Episode], stages: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """Per-task and mean success of ``episodes``. For a task with ``stages`` (its
    :attr:`TaskSpec.stages`), ``failures_by_stage`` counts the unsuccessful episodes by the
    furthest stage they reached (``info["stage"]``), from ``none`` up, in the task's order."""
    stages = stages or {}
    per_task: dict[str, dict[str, Any]] = {}
    for ep in episodes:
        row = per_task.setdefault(ep.task_id, {"episodes": 0, "successes": 0, "failed": 0})
        if stages.get(ep.task_id):
            row.setdefault("failures_by_stage", dict.fromkeys((NO_STAGE, *stages[ep.task_id]), 0))
        if ep.ok:
            row["episodes"] += 1
            row["successes"] += int(ep.success)
            if not ep.success and "failures_by_stage" in row:
                stage = ep.final_info.get(INFO_STAGE, NO_STAGE)
                row["failures_by_stage"][stage] = row["failures_by_stage"].get(stage, 0) + 1
        else:
            row["failed"] += 1
            lost = row.setdefault("lost", {})  # why, as the pool said it (which worker, what happened)
            reason = (ep.failure or "unknown")[:300]
            lost[reason] = lost.get(reason, 0) + 1
    for row in per_task.values():
        row["success_rate"] = row["successes"] / row["episodes"] if row["episodes"] else float("nan")
    rates = [r["success_rate"] for r in per_task.values() if r["episodes"]]
    return {
        "success_rate": float(np.mean(rates)) if rates else float("nan"),
        "per_task": dict(sorted(per_task.items())),
        "episodes": sum(r["episodes"] for r in per_task.values()),
        "failed": sum(r["failed"] for r in per_task.values()),
    }


def stage_reach(episodes: list[Episode], stages: Mapping[str, tuple[str, ...]]) -> dict[str, dict[str, float]]:
    """For each task with ``stages``: the share of its usable episodes that got at least as far as
    each stage (a success counts as reaching them all), in the task's order. Rises before success does."""
    reach: dict[str, dict[str, float]] = {}
    for task, names in stages.items():
        eps = [ep for ep in episodes if ep.ok and ep.task_id == task]
        if not names or not eps:
            continue
        order = {name: i for i, name in enumerate(names)}
        furthest = [len(names) if ep.success else order.get(ep.final_info.get(INFO_STAGE, NO_STAGE), -1) for ep in eps]
        reach[task] = {name: sum(f >= i for f in furthest) / len(eps) for i, name in enumerate(names)}
    return reach


def format_stages(failures_by_stage: Mapping[str, int]) -> str:
    """``none 10 · grasped 4 · lifted 2``: failed episodes by the furthest stage they reached."""
    return " · ".join(f"{stage} {n}" for stage, n in failures_by_stage.items())


def eval_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Flatten a report into ``eval/*`` metrics."""
    metrics = {"eval/success_rate": report["success_rate"], "eval/episodes": float(report["episodes"]),
               "eval/temperature": float(report["temperature"])}
    for task, row in report["per_task"].items():
        metrics[f"eval/success/{task}"] = row["success_rate"]
    return metrics


def write_report(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
    return path
