"""Added latency of the robot bridge per chunk: the same sim robot (tabletop behind the safety layer)
stepped through the ``process`` transport (a spawned worker) and through ``pushcut robot serve`` on
loopback (the ``socket`` transport), unpaced; then the socket path paced at a control rate, to show
how close a chunk comes to chunk / control_hz.

    MUJOCO_GL=egl python benchmarks/robot_bridge.py --chunks 200 --chunk 8 --hz 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from pushcut.configio import to_dict
from pushcut.envpool import EnvPool
from pushcut.envpool.transports.socket import SocketTransport
from pushcut.envpool.spec import EnvSpec
from pushcut.plugins.envs.real import RealEnvConfig, SafetyConfig
from pushcut.plugins.envs.real.launch import RobotServerProcess

SAFETY = {"workspace_low": [-0.25, -0.22, 0.03], "workspace_high": [0.25, 0.2, 0.24], "max_delta": [1, 1, 1, 2],
          "watchdog_ms": 5000}


def robot_options(image_size: int, hz: float) -> dict:
    return {"control_hz": hz, "safety": SAFETY,
            "driver": {"type": "sim", "env": {"type": "tabletop", "image_size": image_size, "tasks": ["push_red_to_target"]}}}


def time_chunks(pool: EnvPool, chunks: int, chunk: int, seed: int = 0) -> list[float]:
    """Seconds per ``pool.step`` of one chunk, resetting whenever an episode ends."""
    rng = np.random.default_rng(seed)
    task = pool.tasks()[0]
    pool.reset({0: (task.task_id, 0)})
    times = []
    for _ in range(chunks):
        actions = rng.uniform(-1, 1, (chunk, 4)).astype(np.float32)
        t = time.perf_counter()
        result = pool.step({0: actions})[0]
        times.append(time.perf_counter() - t)
        if result.done:
            pool.reset({0: (task.task_id, 0)})
    return times


def summary(name: str, times: list[float]) -> dict:
    ms = [1e3 * t for t in times[5:]]  # the first chunks warm caches and the GL context
    row = {"path": name, "median_ms": statistics.median(ms), "mean_ms": statistics.fmean(ms),
           "p95_ms": float(np.percentile(ms, 95))}
    print(f"{name:<34} median {row['median_ms']:7.2f} ms   mean {row['mean_ms']:7.2f} ms   p95 {row['p95_ms']:7.2f} ms")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--hz", type=float, default=10.0, help="control rate of the paced run (0 = skip it)")
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")

    from pushcut.configio import build_dataclass

    options = robot_options(args.image_size, 0.0)
    config = build_dataclass(RealEnvConfig, options, "env")
    from pushcut.pluginmanager import get_plugin_manager

    spec = EnvSpec.from_registry("real", config, get_plugin_manager())
    with EnvPool(spec, num_workers=1, envs_per_worker=1, transport="process") as pool:
        process = summary("process transport (spawned worker)", time_chunks(pool, args.chunks, args.chunk))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "robot.yaml"
        path.write_text(yaml.safe_dump({"env": {"type": "real", **to_dict(config)}}))
        with RobotServerProcess(path, ["--port", "0"]) as server:
            transport = SocketTransport([server.address])
            with EnvPool(EnvSpec("real", {}), num_workers=1, envs_per_worker=1, transport=transport) as pool:
                socket_row = summary("pushcut robot serve, loopback", time_chunks(pool, args.chunks, args.chunk))
        print(f"added by the robot server over loopback: {socket_row['median_ms'] - process['median_ms']:+.2f} ms "
              f"per chunk of {args.chunk} (median)")
        if args.hz:
            options = robot_options(args.image_size, args.hz)
            path.write_text(yaml.safe_dump({"env": {"type": "real", **options}}))
            with RobotServerProcess(path, ["--port", "0"]) as server:
                with EnvPool(EnvSpec("real", {}), num_workers=1, envs_per_worker=1,
                             transport=SocketTransport([server.address])) as pool:
                    chunks = max(10, min(args.chunks, 30))
                    paced = summary(f"robot serve paced at {args.hz:g} Hz", time_chunks(pool, chunks, args.chunk))
            ideal = 1e3 * args.chunk / args.hz
            print(f"paced chunk: ideal {ideal:.1f} ms (chunk / control_hz); measured median {paced['median_ms']:.1f} ms "
                  f"({paced['median_ms'] - ideal:+.2f} ms)")


if __name__ == "__main__":
    main()
