"""Env transport benchmark (issue 25, item 7): the same tabletop envs stepped through the
``process`` transport, the ``socket`` transport (``pushcut env serve`` on loopback) and, with
``--env-python``, ``process`` workers on another interpreter (a venv from
scripts/make_env_venv.sh).

Each transport holds ``--workers`` workers (processes or servers) × ``--envs`` envs. A round
resets every slot, then steps random chunks of ``--chunk`` actions until each episode has run
``--max-steps`` steps. All pools are open at once (an idle pool costs no CPU) and take their
rounds in turn, one warm-up round each, then ``--rounds`` measured rounds interleaved
(process, socket, other-py, process, ...), so a load change on a shared machine hits every
transport alike. Reported: env steps/s, the latency of one chunk request over all slots
(mean, p50, p95, ms), socket / process throughput over all rounds and the median of the
per-round ratios.

    MUJOCO_GL=egl python benchmarks/transport.py [--workers 2 --envs 4 --chunk 8 --image-size 64]
        [--env-python .venv-env/bin/python] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pushcut.configio import to_dict
from pushcut.envpool import EnvPool, EnvSpec, ProcessTransport, SocketTransport
from pushcut.plugins.envs.tabletop import TabletopConfig

PLUGIN = "pushcut.plugins.envs.tabletop"


class Meter:
    """Rounds of random chunks on one pool, and what they measured."""

    def __init__(self, pool: EnvPool, chunk: int, max_steps: int, seed: int = 0) -> None:
        self.pool, self.chunk, self.max_steps = pool, chunk, max_steps
        self.rng = np.random.default_rng(seed)
        self.tasks = [t.task_id for t in pool.tasks()]
        self.rounds = 0
        self.steps, self.wall, self.latencies = 0, 0.0, []
        self.round_rates: list[float] = []

    def round(self, keep: bool = True) -> None:
        pool, slots = self.pool, range(self.pool.num_slots)
        pool.reset({s: (self.tasks[s % len(self.tasks)], self.rounds * pool.num_slots + s) for s in slots})
        self.rounds += 1
        done = dict.fromkeys(slots, 0)
        active = set(done)
        t_round = time.perf_counter()
        steps, latencies = 0, []
        while active:
            actions = {s: self.rng.uniform(-1, 1, (min(self.chunk, self.max_steps - done[s]), 4)).astype(np.float32)
                       for s in active}
            t = time.perf_counter()
            out = pool.step(actions)
            latencies.append(time.perf_counter() - t)
            for s, res in out.items():
                steps += res.steps
                done[s] += res.steps
                if res.done or done[s] >= self.max_steps:
                    active.discard(s)
        wall = time.perf_counter() - t_round
        if keep:
            self.steps, self.wall = self.steps + steps, self.wall + wall
            self.latencies += latencies
            self.round_rates.append(steps / wall)

    def result(self) -> dict[str, float]:
        lat = np.array(self.latencies) * 1000
        return {"steps_per_s": self.steps / self.wall, "chunk_ms_mean": float(lat.mean()),
                "chunk_ms_p50": float(np.median(lat)), "chunk_ms_p95": float(np.percentile(lat, 95)),
                "env_steps": self.steps, "round_steps_per_s": self.round_rates}


def start_servers(n: int, envs: int, env_section: dict, python: str) -> tuple[list[subprocess.Popen], list[str]]:
    cfg = Path(tempfile.mkdtemp()) / "env.yaml"
    cfg.write_text(json.dumps({"env": env_section}))
    procs, addresses = [], []
    for _ in range(n):
        proc = subprocess.Popen([python, "-m", "pushcut.cli", "env", "serve", str(cfg), "--port", "0", "--envs",
                                 str(envs), "--plugin", PLUGIN], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        match = re.search(r"on (127\.0\.0\.1:\d+)", proc.stdout.readline() if ready else "")
        if not match:
            raise SystemExit("an env server did not start")
        procs.append(proc)
        addresses.append(match.group(1))
    return procs, addresses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2, help="worker processes / env servers")
    ap.add_argument("--envs", type=int, default=4, help="envs per worker / server")
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--env-python", default="", help="another venv's python for process workers (optional)")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()

    options = {"image_size": args.image_size, "jitter": 0.03}
    spec = EnvSpec("tabletop", to_dict(TabletopConfig(**options)), plugins=(PLUGIN,))
    transports = {"process": ProcessTransport()}
    procs, addresses = start_servers(args.workers, args.envs, {"type": "tabletop", **options}, sys.executable)
    transports["socket"] = SocketTransport(addresses)
    if args.env_python:
        transports["process-other-py"] = ProcessTransport(args.env_python)
    try:
        with contextlib.ExitStack() as stack:
            meters = {name: Meter(stack.enter_context(EnvPool(spec, num_workers=args.workers,
                                                             envs_per_worker=args.envs, transport=t)),
                                  args.chunk, args.max_steps)
                      for name, t in transports.items()}
            for m in meters.values():
                m.round(keep=False)  # warm-up
            for _ in range(args.rounds):
                for m in meters.values():
                    m.round()
            results = {name: m.result() for name, m in meters.items()}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    for name, r in results.items():
        print(f"{name:<16} {r['steps_per_s']:8.0f} steps/s   chunk request {r['chunk_ms_mean']:6.1f} ms mean, "
              f"{r['chunk_ms_p50']:6.1f} p50, {r['chunk_ms_p95']:6.1f} p95", flush=True)
    ratio = results["socket"]["steps_per_s"] / results["process"]["steps_per_s"]
    per_round = float(np.median(np.array(results["socket"]["round_steps_per_s"])
                                / np.array(results["process"]["round_steps_per_s"])))
    print(f"socket / process throughput: {ratio:.3f} over all rounds, {per_round:.3f} median of {args.rounds} "
          f"interleaved rounds ({args.workers} x {args.envs} envs, chunk {args.chunk}, {args.image_size} px)")
    summary = {"config": vars(args), "results": results, "socket_over_process": ratio,
               "socket_over_process_median_round": per_round}
    if "process-other-py" in results:
        summary["other_python_over_process"] = results["process-other-py"]["steps_per_s"] / results["process"]["steps_per_s"]
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
