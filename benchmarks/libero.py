"""Throughput of the LIBERO env plugin (real libero package, software or GPU GL).

Measures, on one task of LIBERO-Spatial:

* env steps per second of one env (one worker's worth) with 1 camera (agentview)
  and 2 cameras (+ wrist) at 128 and 224 px, with LIBERO's default rendering and
  with the speed knobs (shadows and reflections off), executing chunks of 8
  actions (cameras render once per chunk, as a chunked policy needs);
* the same with an image after every action (chunks of 1), the upstream cost;
* reset time: LIBERO's hard reset (scene rebuilt from XML) versus ``soft_reset``;
* pool scaling: aggregate steps/s of an EnvPool with 1 and 2 worker processes.

    python benchmarks/libero.py                       # assets from $PUSHCUT_LIBERO_ASSETS or ../shared
    python benchmarks/libero.py --steps 160 --json out.json
    MUJOCO_GL=osmesa python benchmarks/libero.py

Actions are random in [-1, 1] (the arm moves and hits things); episodes restart
every 80 steps from the next stored initial state.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# Run as a script, this file's folder is sys.path[0] and this file would shadow the libero package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

from pushcut.envpool import EnvPool  # noqa: E402
from pushcut.plugins.envs.libero import LiberoConfig, LiberoEnv  # noqa: E402
from pushcut.plugins.envs.libero.runtime import ASSETS_ENV_VAR, suite_tasks  # noqa: E402

EPISODE = 80
CHUNK = 8


def _assets(path: str) -> str:
    if path:
        return path
    if os.environ.get(ASSETS_ENV_VAR):
        return os.environ[ASSETS_ENV_VAR]
    return str(Path(__file__).resolve().parents[1].parent / "shared" / "libero-assets" / "assets")


def _config(assets: str, size: int, wrist: bool, knobs: bool, **extra) -> LiberoConfig:
    return LiberoConfig(assets_dir=assets, image_size=size, render_size=0, wrist_camera=wrist,
                        shadows=not knobs, reflections=not knobs, soft_reset=extra.pop("soft_reset", knobs),
                        max_steps=10_000, gripper_convention="libero", **extra)


def _steps_per_s(env: LiberoEnv, task: str, steps: int, chunk: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    rates = []
    for r in range(repeats):
        done, elapsed, init = 0, 0.0, r
        while done < steps:
            env.reset(task, init % 50)  # not timed
            init += 1
            start = time.perf_counter()
            for _ in range(0, min(EPISODE, steps - done), chunk):
                env.step(rng.uniform(-1, 1, (chunk, 7)))
            elapsed += time.perf_counter() - start
            done += min(EPISODE, steps - done)
        rates.append(done / elapsed)
    return statistics.median(rates)


def _reset_s(env: LiberoEnv, task: str, repeats: int) -> float:
    times = []
    for k in range(repeats):
        start = time.perf_counter()
        env.reset(task, k)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _pool_steps_per_s(config: LiberoConfig, task: str, workers: int, chunks: int) -> float:
    rng = np.random.default_rng(0)
    with EnvPool(LiberoEnv, config, num_workers=workers, envs_per_worker=1, timeout_s=600) as pool:
        pool.reset({slot: (task, slot) for slot in range(workers)})  # builds the scenes, not timed
        start = time.perf_counter()
        for _ in range(chunks):
            pool.step({slot: rng.uniform(-1, 1, (CHUNK, 7)) for slot in range(workers)})
        elapsed = time.perf_counter() - start
    return workers * chunks * CHUNK / elapsed


def bench(assets: str, steps: int, repeats: int, sizes: list[int], pool_chunks: int) -> dict:
    task = suite_tasks("libero_spatial")[0].name
    results: dict = {"task": task, "per_env": [], "resets": {}, "pool": {}}
    for size in sizes:
        for wrist in (False, True):
            for knobs in (False, True):
                with LiberoEnv(_config(assets, size, wrist, knobs, tasks=(task,))) as env:
                    env.reset(task, 0)  # scene build outside the timing
                    row = {"size": size, "cameras": 2 if wrist else 1, "speed_knobs": knobs,
                           "steps_per_s_chunk8": _steps_per_s(env, task, steps, CHUNK, repeats)}
                    if size == sizes[0]:
                        row["steps_per_s_chunk1"] = _steps_per_s(env, task, steps // 2, 1, 1)
                    results["per_env"].append(row)
                    print(f"  {size:4d} px, {row['cameras']} camera(s), knobs {'on ' if knobs else 'off'}: "
                          f"{row['steps_per_s_chunk8']:6.1f} steps/s (chunks of 8)"
                          + (f", {row['steps_per_s_chunk1']:6.1f} (image every step)" if "steps_per_s_chunk1" in row
                             else ""), flush=True)
    for soft in (False, True):
        with LiberoEnv(_config(assets, sizes[0], True, False, soft_reset=soft, tasks=(task,))) as env:
            env.reset(task, 0)
            results["resets"]["soft" if soft else "hard"] = _reset_s(env, task, max(3, repeats))
    print(f"  reset: hard {results['resets']['hard']:.2f} s, soft {results['resets']['soft']:.2f} s", flush=True)
    config = _config(assets, sizes[0], True, False, tasks=(task,))
    for workers in (1, 2):
        results["pool"][workers] = _pool_steps_per_s(config, task, workers, pool_chunks)
        print(f"  pool, {workers} worker(s): {results['pool'][workers]:6.1f} steps/s in all", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80, help="env steps per measurement")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per row (the median is reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224], help="image sizes (px)")
    parser.add_argument("--pool-chunks", type=int, default=10, help="chunks of 8 per pool measurement")
    parser.add_argument("--assets", type=str, default="", help=f"LIBERO assets folder (default ${ASSETS_ENV_VAR})")
    parser.add_argument("--json", type=str, default="", help="also write the results to this JSON file")
    args = parser.parse_args()
    print(f"LIBERO env throughput (MUJOCO_GL={os.environ.get('MUJOCO_GL', 'egl')}, {os.cpu_count()} cpus, "
          f"load avg {os.getloadavg()[0]:.2f})", flush=True)
    results = bench(_assets(args.assets), args.steps, args.repeats, args.sizes, args.pool_chunks)
    results["machine"] = f"{platform.machine()} {platform.processor() or ''}".strip()
    results["load_average_1min_after"] = os.getloadavg()[0]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
