"""RoboTwin 2.0 throughput through pushcut's env transport, RoboTwin in its own venv.

Per worker, for each shader x camera size: observations/s (a reset's get_obs and a render) and
chunk steps/s (chunks of 25 joint targets executed as one planned path, plus the observation
after each). Then pool scaling: the same chunk load on 1 and 2 process workers.

    MUJOCO_GL=egl python benchmarks/robotwin.py --python .venv-robotwin/bin/python \
        --assets ../shared/robotwin-assets --shaders default,rt --sizes 64x48,320x240

Runs on the stand-in Piper assets by default (embodiment [piper, piper, 0.6], fingers allowed to
touch); --embodiment aloha-agilex with RoboTwin's real assets.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from pushcut.configio import build_dataclass, to_dict
from pushcut.envpool import EnvPool, EnvSpec, ProcessTransport
from pushcut.plugins.envs.robotwin.config import RobotwinConfig

REPO = Path(__file__).resolve().parents[1]


def make_spec(args, shader: str, size: tuple[int, int]) -> EnvSpec:
    embodiment = ["piper", "piper", 0.6] if args.embodiment == "piper" else [args.embodiment]
    options = {"tasks": [args.task], "assets_dir": args.assets, "embodiment": embodiment,
               "allowed_collisions": [["link7", "link8"]] if args.embodiment == "piper" else [],
               "camera_width": size[0], "camera_height": size[1], "shader": shader, "shadows": not args.no_shadows,
               "num_init_states": 10, "num_eval_init_states": 2}
    return EnvSpec("robotwin", to_dict(build_dataclass(RobotwinConfig, options, "env")),
                   plugins=("pushcut.plugins.envs.robotwin",))


def chunks(pool: EnvPool, obs: dict, rng: np.random.Generator) -> dict:
    """Chunks of 25 from each slot's state towards a random joint target inside the limits."""
    spec = pool.action_spec
    low, high = np.asarray(spec.low), np.asarray(spec.high)
    out = {}
    for slot, o in obs.items():
        target = low + rng.uniform(0.3, 0.7, spec.action_dim) * (high - low)
        out[slot] = np.linspace(o["state"], target, 26)[1:].astype(np.float32)
    return out


def per_worker(args, shader: str, size: tuple[int, int]) -> dict:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with EnvPool(make_spec(args, shader, size), num_workers=1, envs_per_worker=1,
                 transport=ProcessTransport(args.python, startup_timeout_s=600), timeout_s=900) as pool:
        start_s = time.perf_counter() - t0
        t = time.perf_counter()
        obs = pool.reset({0: (args.task, 0)})
        reset_s = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(args.renders):
            pool.render([0])
        obs_per_s = args.renders / (time.perf_counter() - t)
        t = time.perf_counter()
        steps = 0
        for _ in range(args.chunks):
            result = pool.step(chunks(pool, obs, rng))[0]
            steps += result.steps
            obs = {0: result.observation}
        elapsed = time.perf_counter() - t
    return {"shader": shader, "size": f"{size[0]}x{size[1]}", "start_s": round(start_s, 1),
            "reset_s": round(reset_s, 2), "obs_per_s": round(obs_per_s, 2),
            "chunks_per_s": round(args.chunks / elapsed, 3), "env_steps_per_s": round(steps / elapsed, 1)}


def scaling(args, workers: int, size: tuple[int, int]) -> dict:
    rng = np.random.default_rng(1)
    with EnvPool(make_spec(args, args.shaders[0], size), num_workers=workers, envs_per_worker=1,
                 transport=ProcessTransport(args.python, startup_timeout_s=600), timeout_s=900) as pool:
        obs = pool.reset({s: (args.task, s) for s in range(workers)})
        t = time.perf_counter()
        steps = 0
        for _ in range(args.chunks):
            results = pool.step(chunks(pool, obs, rng))
            steps += sum(r.steps for r in results.values())
            obs = {s: r.observation for s, r in results.items()}
        elapsed = time.perf_counter() - t
    return {"workers": workers, "size": f"{size[0]}x{size[1]}", "chunks_per_s": round(workers * args.chunks / elapsed, 3),
            "env_steps_per_s": round(steps / elapsed, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", default=os.environ.get("PUSHCUT_ROBOTWIN_PYTHON", str(REPO / ".venv-robotwin/bin/python")))
    p.add_argument("--assets", default=os.environ.get("PUSHCUT_ROBOTWIN_ASSETS", str(REPO.parent / "shared/robotwin-assets")))
    p.add_argument("--embodiment", default="piper", help="piper (the stand-in pair) or a dual-arm embodiment name")
    p.add_argument("--task", default="stack_blocks_two")
    p.add_argument("--shaders", default="default", help="comma-separated: default, minimal, rt")
    p.add_argument("--sizes", default="64x48,320x240", help="comma-separated WxH camera sizes")
    p.add_argument("--no-shadows", action="store_true", help="render without shadows (faster on CPU)")
    p.add_argument("--renders", type=int, default=10)
    p.add_argument("--chunks", type=int, default=6)
    p.add_argument("--workers", default="1,2", help="pool sizes for the scaling run (empty: skip)")
    args = p.parse_args()
    args.shaders = args.shaders.split(",")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rows = []
    for shader in args.shaders:
        for size in sizes:
            rows.append(per_worker(args, shader, size))
            print(json.dumps(rows[-1]), flush=True)
    for workers in [int(w) for w in args.workers.split(",") if w]:
        print(json.dumps(scaling(args, workers, sizes[0])), flush=True)


if __name__ == "__main__":
    main()
