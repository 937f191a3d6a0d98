"""Throughput of the LIBERO env plugin (real libero package, software or GPU GL).

Measures, on one task of LIBERO-Spatial:

* env steps per second of one env (one worker's worth) with 1 camera (agentview)
  and 2 cameras (+ wrist) at 128 and 224 px, with LIBERO's default rendering and
  with the speed knobs (shadows and reflections off), executing chunks of 8
  actions (cameras render once per chunk, as a chunked policy needs);
* the same with an image after every action (chunks of 1), the upstream cost;
* reset time: LIBERO's hard reset (scene rebuilt from XML) versus ``soft_reset``;
* pool scaling: aggregate steps/s of an EnvPool with 1 and 2 worker processes;
* ``--vs-raw``: pushcut's env side (EnvPool + RolloutCollector, a zero-cost policy) against
  the raw simulator stepped in plain worker processes (LIBERO's ``OffScreenRenderEnv`` with
  ``use_camera_obs=False``, rendering only the frames a chunked policy needs), both at the
  default pool (2 workers x 8 envs), rounds of 8 and 16 episodes taken interleaved (raw,
  pushcut, raw, pushcut, ...) so the shared machine's load falls on both alike.

    python benchmarks/libero.py                       # assets from $PUSHCUT_LIBERO_ASSETS or ../shared
    python benchmarks/libero.py --steps 160 --json out.json
    python benchmarks/libero.py --vs-raw --episodes 8 16 --rounds 3
    MUJOCO_GL=osmesa python benchmarks/libero.py

Actions are random in [-1, 1] (the arm moves and hits things); episodes restart
every 80 steps from the next stored initial state.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
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


# --------------------------------------------------------------------------- raw baseline


def _raw_worker(conn, assets: str, suite: str, size: int, wrist: bool) -> None:
    """A plain worker process holding raw LIBERO envs, no pushcut in the loop: per episode seed,
    reset, stored initial state, 10 no-op steps, one render per camera; then chunks of actions
    with one render per camera after each chunk (what a chunked policy needs)."""
    from pushcut.plugins.envs.libero import runtime

    runtime.import_libero("auto", Path(assets))
    import libero.libero.envs as lib_envs

    tasks = {t.name: t for t in runtime.suite_tasks(suite)}
    cameras = ["agentview", "robot0_eye_in_hand"] if wrist else ["agentview"]
    envs: list = []

    def frames(env) -> list:
        # several envs share this thread: make this env's GL context current, or it renders with another's
        env.env.sim._render_context_offscreen.gl_ctx.make_current()
        return [np.ascontiguousarray(env.env.sim.render(camera_name=c, width=size, height=size)[::-1, ::-1])
                for c in cameras]

    while True:
        msg = conn.recv()
        if msg is None:
            break
        task, inits, steps, chunk, seed = msg
        while len(envs) < len(inits):
            envs.append(lib_envs.OffScreenRenderEnv(bddl_file_name=tasks[task].bddl_file, camera_names=cameras,
                                                    camera_heights=size, camera_widths=size, use_camera_obs=False,
                                                    ignore_done=True))
        states = runtime.init_states(suite, task)
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        for env, init in zip(envs, inits):
            env.seed(0)
            env.reset()
            env.set_init_state(states[init])
            for _ in range(10):
                env.step([0, 0, 0, 0, 0, 0, -1])
            frames(env)
        done_steps = [0] * len(inits)
        active = list(range(len(inits)))
        while active:
            for i in list(active):
                actions = rng.uniform(-1, 1, (min(chunk, steps - done_steps[i]), 7))
                done = False
                for a in actions:
                    _, _, done, _ = envs[i].step(a)
                    done_steps[i] += 1
                    if done:
                        break
                frames(envs[i])
                if done or done_steps[i] >= steps:
                    active.remove(i)
        conn.send((sum(done_steps), time.perf_counter() - start))
    for env in envs:
        env.close()


class RawPool:
    """``workers`` raw worker processes; a round's episodes split evenly over them."""

    def __init__(self, assets: str, suite: str, size: int, wrist: bool, workers: int) -> None:
        from pushcut.envpool.transports.process import THREAD_VARS

        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        saved = {var: os.environ.get(var) for var in THREAD_VARS}
        # one simulator per core, as pushcut's workers run: without this, numpy's BLAS threads in
        # robosuite's controller fight over the cores and the raw side is the slower one
        os.environ.update(dict.fromkeys(THREAD_VARS, "1"))
        try:
            for _ in range(workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_raw_worker, args=(child, assets, suite, size, wrist), daemon=True)
                proc.start()
                self.conns.append(parent)
                self.procs.append(proc)
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value

    def run(self, task: str, inits: list[int], steps: int, chunk: int, seed: int) -> tuple[int, float]:
        start = time.perf_counter()
        share = [inits[w::len(self.conns)] for w in range(len(self.conns))]
        for w, conn in enumerate(self.conns):
            conn.send((task, share[w], steps, chunk, seed + w))
        total = sum(conn.recv()[0] for conn in self.conns)
        return total, time.perf_counter() - start

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)
        for proc in self.procs:
            proc.join(timeout=60)


def vs_raw(assets: str, episodes: list[int], rounds: int, steps: int, size: int, wrist: bool,
           workers: int, envs_per_worker: int, pipeline: bool = False) -> dict:
    """pushcut's env side against raw worker processes, interleaved round by round."""
    import torch

    from pushcut.contracts import ActionSample
    from pushcut.plugins.rewards.env_success import EnvSuccess
    from pushcut.rollout import RolloutCollector, StartState

    suite = "libero_spatial"
    task = suite_tasks(suite)[0].name
    config = LiberoConfig(assets_dir=assets, suite=suite, tasks=(task,), image_size=size, render_size=0,
                          wrist_camera=wrist, gripper_convention="libero", max_steps=steps)
    rng = np.random.default_rng(0)

    def act(obs, temperature):
        n = len(obs)
        return ActionSample(rng.uniform(-1, 1, (n, CHUNK, 7)).astype(np.float32), {"x": torch.zeros(n, 1)},
                            torch.zeros(n, 1), torch.ones(n, 1, dtype=torch.bool))

    raw = RawPool(assets, suite, size, wrist, workers)
    rows: list[dict] = []
    try:
        with EnvPool(LiberoEnv, config, num_workers=workers, envs_per_worker=envs_per_worker,
                     timeout_s=900) as pool:
            collector = RolloutCollector(pool, act, EnvSuccess(), steps, pipeline=pipeline)
            for r in range(rounds + 1):  # round 0 builds every scene on both sides: not reported
                for n in episodes:
                    inits = [(r * 7 + k // 8) % 40 for k in range(n)]  # groups of 8 from one start state
                    raw_steps, raw_s = raw.run(task, inits, steps, CHUNK, r)
                    starts = [StartState(task, inits[k]) for k in range(0, n, 8)]
                    batch, stats = collector.collect(starts, 8, 1.0)
                    lost = sum(not ep.ok for ep in batch)
                    row = {"round": r, "episodes": n, "raw_steps_per_s": raw_steps / raw_s,
                           "pushcut_steps_per_s": stats.env_steps / stats.wall_s, "lost": lost,
                           "load": os.getloadavg()[0]}
                    row["ratio"] = row["pushcut_steps_per_s"] / row["raw_steps_per_s"]
                    print(f"  round {r}{' (warm-up)' if r == 0 else ''}, {n:2d} episodes: raw "
                          f"{row['raw_steps_per_s']:5.1f} steps/s, pushcut {row['pushcut_steps_per_s']:5.1f} "
                          f"steps/s, ratio {row['ratio']:.3f}, lost {lost}, load {row['load']:.2f}", flush=True)
                    if r:
                        rows.append(row)
    finally:
        raw.close()
    summary = {n: statistics.median(x["ratio"] for x in rows if x["episodes"] == n) for n in episodes}
    print("  median pushcut / raw: " + ", ".join(f"{n} episodes {v:.3f}" for n, v in summary.items()), flush=True)
    return {"rounds": rows, "median_ratio": summary, "steps": steps, "size": size, "wrist": wrist,
            "workers": workers, "envs_per_worker": envs_per_worker, "pipeline": pipeline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80, help="env steps per measurement")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per row (the median is reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224], help="image sizes (px)")
    parser.add_argument("--pool-chunks", type=int, default=10, help="chunks of 8 per pool measurement")
    parser.add_argument("--assets", type=str, default="", help=f"LIBERO assets folder (default ${ASSETS_ENV_VAR})")
    parser.add_argument("--json", type=str, default="", help="also write the results to this JSON file")
    parser.add_argument("--vs-raw", action="store_true", help="only pushcut vs raw worker processes (see above)")
    parser.add_argument("--episodes", type=int, nargs="+", default=[8, 16], help="--vs-raw: episodes per round")
    parser.add_argument("--rounds", type=int, default=3, help="--vs-raw: measured rounds (after one warm-up)")
    parser.add_argument("--episode-steps", type=int, default=64, help="--vs-raw: policy steps per episode")
    parser.add_argument("--size", type=int, default=256, help="--vs-raw: camera size (px), no resize")
    parser.add_argument("--workers", type=int, default=2, help="--vs-raw: worker processes per side")
    parser.add_argument("--envs-per-worker", type=int, default=8, help="--vs-raw: pushcut's envs per worker")
    parser.add_argument("--pipeline", action="store_true", help="--vs-raw: pushcut with rollout.pipeline")
    args = parser.parse_args()
    print(f"LIBERO env throughput (MUJOCO_GL={os.environ.get('MUJOCO_GL', 'egl')}, {os.cpu_count()} cpus, "
          f"load avg {os.getloadavg()[0]:.2f})", flush=True)
    if args.vs_raw:
        results = vs_raw(_assets(args.assets), args.episodes, args.rounds, args.episode_steps, args.size, True,
                         args.workers, args.envs_per_worker, args.pipeline)
    else:
        results = bench(_assets(args.assets), args.steps, args.repeats, args.sizes, args.pool_chunks)
    results["machine"] = f"{platform.machine()} {platform.processor() or ''}".strip()
    results["load_average_1min_after"] = os.getloadavg()[0]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
