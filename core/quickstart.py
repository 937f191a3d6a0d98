"""``pushcut quickstart``: the paper's headline on a laptop.

demos (scripted expert, k per task) → SFT → greedy eval → GRPO → greedy eval,
on the embedded MuJoCo tabletop with the tiny VLA. Prints a per-task table of
success after SFT and after SFT+RL, and writes into the run directory:
``summary.json`` and ``videos/*.mp4``, plus everything a ``pushcut train`` run writes
(``success.png``, ``stages.png``, metrics, checkpoints). Each stage is skipped when
its output exists, so an interrupted quickstart continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from pushcut.checkpoint import list_checkpoints
from pushcut.config import RunConfig
from pushcut.configio import load_config
from pushcut.contracts import OBS_WRIST_IMAGE
from pushcut.demos import record_demo_file
from pushcut.rundir import RunDir
from pushcut.errors import ConfigError
from pushcut.evaluate import format_stages
from pushcut.plots import eval_reports
from pushcut.pluginmanager import get_plugin_manager
from pushcut.sft import run_sft
from pushcut.trainer import Trainer

log = logging.getLogger("pushcut")

QUICKSTART_SETS = ("sft.demos", "sft.wrist_image_key")
"""Keys the quickstart fills in itself, so a saved config differs from a fresh one there."""


def default_config_path() -> Path:
    return Path(str(files("pushcut.configs") / "quickstart.yaml"))


@dataclass(frozen=True)
class Stage:
    """One step of the quickstart: what it writes (it is skipped when that exists, unless ``always``),
    which stages' outputs it reads, the config sections that must not change once it has run (a rerun
    continues), and what the later stages take from its output whether it ran now or before."""

    name: str
    output: Callable[[RunDir], Path]
    depends_on: tuple[str, ...]
    fixes: tuple[str, ...]
    run: Callable[[RunConfig, RunDir], None]
    then: Callable[[RunConfig, RunDir], None] | None = None
    always: bool = False


def _record_demos(cfg: RunConfig, paths: RunDir) -> None:
    with get_plugin_manager().envs.get(cfg.env.type).build(cfg.env.options) as env:
        record_demo_file(env, cfg.env.type, cfg.sft.demos_per_task, paths.demos, noise=cfg.sft.demo_noise)


def _use_demos(cfg: RunConfig, paths: RunDir) -> None:
    """The demos the later stages train on: the ones just recorded, or a rerun's (checked to match)."""
    check_cached_demos(paths.demos, cfg)
    if not list_checkpoints(paths.root):  # once RL has begun, its config is the Trainer's to keep
        paths.save_config(cfg)
    cfg.sft.demos = (str(paths.demos),)
    if not cfg.sft.wrist_image_key and _has_wrist_images(paths.demos):
        cfg.sft.wrist_image_key = OBS_WRIST_IMAGE  # the env's wrist camera is on: SFT reads it from the demos too


def _rl(cfg: RunConfig, paths: RunDir) -> None:
    cfg.train.init_from = str(paths.sft_policy)
    cfg.train.eval_at_start = True  # the step-0 evaluation is the SFT policy's
    Trainer(cfg).run()


STAGES = (
    Stage("demos", lambda p: p.demos, (), ("env",), _record_demos, then=_use_demos),
    Stage("sft", lambda p: p.sft_policy, ("demos",), ("env", "policy", "sft", "seed"), lambda cfg, _: run_sft(cfg)),
    # RL continues from its own checkpoints, whose config the Trainer checks: it always runs
    Stage("rl", lambda p: p.summary, ("sft",), (), _rl, always=True),
)
"""demos (scripted expert, ``sft.demos_per_task`` per task) → SFT → GRPO with greedy evals before and after."""


def run_quickstart(overrides: list[str], config_path: str | Path | None = None) -> dict[str, Any]:
    cfg = load_config(config_path or default_config_path(), overrides)
    paths = RunDir(cfg.run_dir)
    done = [stage for stage in STAGES if stage.output(paths).exists()]
    fixed = tuple(dict.fromkeys(section for stage in done for section in stage.fixes))
    if fixed:  # a rerun continues the stages that have output; they must not change under it
        paths.check_continues(cfg, allowed=QUICKSTART_SETS, only=fixed)
    paths.root.mkdir(parents=True, exist_ok=True)
    if cfg.train.torch_threads:  # env workers share the cores: oversubscribed torch threads crawl
        torch.set_num_threads(cfg.train.torch_threads)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    outputs = {stage.name: stage.output for stage in STAGES}
    for stage in STAGES:
        if stage.always or not stage.output(paths).exists():
            missing = [name for name in stage.depends_on if not outputs[name](paths).exists()]
            if missing:
                raise ConfigError(f"quickstart stage {stage.name!r} needs the output of {', '.join(missing)}, "
                                  f"missing from {paths.root}; delete the run directory to start over")
            t = time.perf_counter()
            stage.run(cfg, paths)
            timings[f"{stage.name}_s"] = time.perf_counter() - t
        if stage.then is not None:
            stage.then(cfg, paths)
    timings["total_s"] = time.perf_counter() - t0

    summary = summarize(cfg, paths.root, timings)
    print_table(summary)
    return summary


def check_cached_demos(path: Path, cfg: RunConfig) -> None:
    """A rerun reuses the run's demo file (and the SFT policy cloned from it); refuse one
    recorded with another ``sft.demos_per_task`` or ``sft.demo_noise`` than the config asks for."""
    import h5py

    with h5py.File(path, "r") as f:
        data = f["data"]
        noise = float(data.attrs.get("dart_noise", 0.0))
        counts: dict[str, int] = {}
        for name in data:
            task = str(data[name].attrs.get("task_id", ""))
            counts[task] = counts.get(task, 0) + 1
    per_task = sorted(set(counts.values()))
    if per_task != [cfg.sft.demos_per_task] or noise != cfg.sft.demo_noise:
        raise ConfigError(
            f"{path} holds demos recorded with sft.demos_per_task={'/'.join(map(str, per_task))}, "
            f"sft.demo_noise={noise:g}, but the config asks for sft.demos_per_task="
            f"{cfg.sft.demos_per_task}, sft.demo_noise={cfg.sft.demo_noise:g}; the quickstart reuses a run's demos "
            f"and SFT policy, so pick a fresh run_dir (or delete {path.parent})"
        )


def _has_wrist_images(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        return any(OBS_WRIST_IMAGE in group["obs"] for group in f["data"].values())


def summarize(cfg: RunConfig, run_dir: Path, timings: dict[str, float]) -> dict[str, Any]:
    reports = eval_reports(run_dir)
    sft, rl = reports[0], reports[-1]
    per_task = {
        task: {
            "sft_success": sft["per_task"][task]["success_rate"],
            "rl_success": rl["per_task"][task]["success_rate"],
            "episodes": rl["per_task"][task]["episodes"],
            **{f"{when}_failures_by_stage": report["per_task"][task]["failures_by_stage"]
               for when, report in (("sft", sft), ("rl", rl)) if "failures_by_stage" in report["per_task"][task]},
        }
        for task in rl["per_task"]
    }
    previous = {}
    summary_path = RunDir(run_dir).summary
    if summary_path.exists():
        previous = json.loads(summary_path.read_text()).get("timings", {})
    summary = {
        "sft_success": sft["success_rate"],
        "rl_success": rl["success_rate"],
        "improvement": rl["success_rate"] - sft["success_rate"],
        "per_task": per_task,
        "episodes_per_task": min(r["episodes"] for r in per_task.values()),
        "eval_temperature": cfg.eval.temperature,
        "seeds": {"run": cfg.seed, "policy_init": getattr(cfg.policy.options, "seed", None)},
        "demos_per_task": cfg.sft.demos_per_task,
        "rl_iterations": cfg.train.iterations,
        "eval_steps": [r["step"] for r in reports],
        "timings": {**previous, **{k: round(v, 1) for k, v in timings.items()}},
        "videos": sorted(str(p) for p in RunDir(run_dir).videos.glob("*.mp4")),
    }
    tmp = summary_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(summary_path)
    return summary


def print_table(summary: dict[str, Any]) -> None:
    print(f"\n{'task':<26} {'SFT':>6} {'SFT+RL':>7} {'episodes':>9}")
    for task, row in summary["per_task"].items():
        print(f"{task:<26} {row['sft_success']:>6.2f} {row['rl_success']:>7.2f} {row['episodes']:>9d}")
    print(f"{'mean':<26} {summary['sft_success']:>6.2f} {summary['rl_success']:>7.2f}")
    staged = {task: row for task, row in summary["per_task"].items()
              if "sft_failures_by_stage" in row and "rl_failures_by_stage" in row}
    if staged:
        print("\nfailed episodes by the furthest stage they reached, SFT → SFT+RL:")
        for task, row in staged.items():
            sft, rl = (format_stages(row[f"{when}_failures_by_stage"]) for when in ("sft", "rl"))
            print(f"{task:<26} {sft}  →  {rl}")
    print(f"\nimprovement: {100 * summary['improvement']:+.1f} points; total time {summary['timings'].get('total_s', 0):.0f} s")

