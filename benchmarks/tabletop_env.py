"""Throughput of the tabletop env on one CPU core.

Measures env steps per second for raw physics (no rendering), for the real
``TabletopEnv.step`` with a rendered 64 px observation after every action, and
for a few variants (chunked actions, wrist camera, recording video frames),
plus the time of ``reset``. Prints a table and, with ``--json``, writes the
numbers to a file.

    python benchmarks/tabletop_env.py                 # pinned to CPU 0
    python benchmarks/tabletop_env.py --steps 3000 --json out.json
    MUJOCO_GL=osmesa python benchmarks/tabletop_env.py

Random actions in [-1, 1]; each episode restarts after 60 steps, cycling over
tasks, so the arm keeps hitting objects as in early RL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from pushcut.plugins.envs.tabletop import TASK_IDS, TabletopConfig, TabletopEnv

EPISODE = 60


def _timed(fn: Callable[[], int], repeats: int) -> float:
    """Median rate (units per second) of ``fn``, which returns how many units it did."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def bench(steps: int, repeats: int, image_size: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(steps, 4))
    results: dict[str, float] = {}

    def episodes(env: TabletopEnv, chunk: int, record: bool = False, physics_only: bool = False) -> int:
        done = 0
        while done < steps:
            env.reset(TASK_IDS[(done // EPISODE) % len(TASK_IDS)], 0)
            for start in range(0, EPISODE, chunk):
                block = actions[done + start : done + start + chunk] if done + start < steps else None
                if block is None or len(block) == 0:
                    break
                if physics_only:
                    for a in block:
                        env.scene.step(a)
                else:
                    env.step(block, record=record)
            done += EPISODE
        return min(done, steps)

    with TabletopEnv(TabletopConfig(image_size=image_size, max_steps=10_000)) as env:
        env.reset(TASK_IDS[0], 0)  # creates the GL context outside the timing
        results["physics_steps_per_s"] = _timed(lambda: episodes(env, 1, physics_only=True), repeats)
        results["step_render_steps_per_s"] = _timed(lambda: episodes(env, 1), repeats)
        results["step_chunk8_steps_per_s"] = _timed(lambda: episodes(env, 8), repeats)
        results["step_record_video_steps_per_s"] = _timed(lambda: episodes(env, 8, record=True), repeats)
        def resets(n: int = 200) -> int:
            for k in range(n):
                env.reset(TASK_IDS[k % len(TASK_IDS)], k % 100)
            return n

        results["resets_per_s"] = _timed(resets, repeats)
        results["gl_backend"] = env._renderer.backend if env._renderer else "none"  # type: ignore[assignment]
    with TabletopEnv(TabletopConfig(image_size=image_size, wrist_camera=True, max_steps=10_000)) as env:
        env.reset(TASK_IDS[0], 0)
        results["step_render_wrist_steps_per_s"] = _timed(lambda: episodes(env, 1), repeats)
    results["render_over_physics_ratio"] = results["step_render_steps_per_s"] / results["physics_steps_per_s"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1800, help="env steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per row (the median is reported)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin to; -1 = no pinning")
    parser.add_argument("--json", type=str, default="", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    results = bench(args.steps, args.repeats, args.image_size)
    results["image_size"] = args.image_size
    results["machine"] = f"{platform.machine()} {platform.processor() or ''}".strip()
    results["cpus_pinned"] = args.cpu
    results["load_average_1min"] = os.getloadavg()[0]
    rows = [
        ("raw physics (no render)", "physics_steps_per_s"),
        (f"step + render {args.image_size}px obs", "step_render_steps_per_s"),
        (f"step + render {args.image_size}px obs + wrist", "step_render_wrist_steps_per_s"),
        ("step, chunks of 8 (1 obs / 8 steps)", "step_chunk8_steps_per_s"),
        ("step, chunks of 8, record=True (128px)", "step_record_video_steps_per_s"),
        ("reset", "resets_per_s"),
    ]
    print(f"tabletop env throughput (gl_backend={results['gl_backend']}, cpu={args.cpu}, "
          f"load avg {results['load_average_1min']:.2f})")
    for label, key in rows:
        print(f"  {label:44s} {results[key]:9.0f} /s")
    print(f"  {'ratio step+render / raw physics':44s} {results['render_over_physics_ratio']:9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
