"""Rollout-engine benchmarks (issue: GRPO engine, "Speed").

1. Overhead: with a zero-cost policy, collector throughput (env steps/s) versus
   the same env pool stepped directly with random chunks, in the same run.
2. Overlap: with policy time about equal to env time, the pipelined schedule
   (two lanes on disjoint workers; the policy serves one while the other steps)
   versus the sequential one, rounds interleaved, median of the per-round ratios.
3. Balance: one group of 8 episodes on the default pool (2 workers x 8 envs)
   versus a 2 x 4 pool, interleaved: equal when a round's episodes are spread
   over the workers (before, all 8 landed on worker 0: 0.57x).

The env is the toy ReachEnv with an artificial per-step cost (sleep), so the
numbers measure the framework, not a simulator; pass --env-cost to change it.

    python benchmarks/rollout.py [--workers 4 --envs-per-worker 4 --env-cost 0.002]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from pushcut.envpool import EnvPool
from pushcut.plugins.rewards.env_success import EnvSuccess
from pushcut.rollout import RolloutCollector, StartState
from pushcut.toys import BinPolicy, BinPolicyConfig, ReachConfig, ReachEnv


def direct(pool: EnvPool, chunk: int, rounds: int, max_steps: int, seed: int = 0) -> tuple[int, float]:
    """Step every slot with random chunks, resetting at episode end: the pool's own throughput."""
    rng = np.random.default_rng(seed)
    steps = 0
    t0 = time.perf_counter()
    for r in range(rounds):
        pool.reset({s: ("reach_0", (r * pool.num_slots + s) % 30) for s in range(pool.num_slots)})
        lengths = dict.fromkeys(range(pool.num_slots), 0)
        active = set(range(pool.num_slots))
        while active:
            out = pool.step({s: rng.uniform(-1, 1, (min(chunk, max_steps - lengths[s]), 1)).astype(np.float32)
                             for s in active})
            for s, res in out.items():
                steps += res.steps
                lengths[s] += res.steps
                if res.done or lengths[s] >= max_steps:
                    active.discard(s)
    return steps, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--envs-per-worker", type=int, default=4)
    ap.add_argument("--env-cost", type=float, default=0.002, help="seconds per env step")
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    env_cfg = ReachConfig(step_delay_s=args.env_cost, max_steps=args.max_steps, tolerance=0.02, num_init_states=40)
    results: dict[str, float] = {}
    with EnvPool(ReachEnv, env_cfg, num_workers=args.workers, envs_per_worker=args.envs_per_worker) as pool:
        n = pool.num_slots
        direct(pool, args.chunk, 1, args.max_steps)  # warm-up
        steps, secs = direct(pool, args.chunk, args.rounds, args.max_steps)
        results["direct_steps_per_s"] = steps / secs

        zero = BinPolicy(BinPolicyConfig(chunk_size=args.chunk, zero_cost=True))
        collector = RolloutCollector.for_policy(pool, zero, EnvSuccess())
        starts = [StartState("reach_0", i % 30) for i in range(n * args.rounds)]
        _, stats = collector.collect(starts, 1, 1.0)
        results["collector_steps_per_s"] = stats.env_steps / stats.wall_s
        results["overhead_ratio"] = results["collector_steps_per_s"] / results["direct_steps_per_s"]

        # overlap: policy time per observation chosen so that one policy call over a
        # lane takes about as long as that lane's env step (chunk × env_cost per worker)
        per_worker_env_s = args.envs_per_worker * args.chunk * args.env_cost
        cost = per_worker_env_s / (n / 2)
        slow = BinPolicy(BinPolicyConfig(chunk_size=args.chunk, zero_cost=True, cost_s=cost))
        starts = [StartState("reach_0", i % 30) for i in range(n * 2)]
        walls: dict[str, list[float]] = {"sequential": [], "pipelined": []}
        for _ in range(args.rounds):
            for name, pipeline in (("sequential", False), ("pipelined", True)):
                col = RolloutCollector.for_policy(pool, slow, EnvSuccess(), pipeline=pipeline)
                _, st = col.collect(starts, 1, 1.0)
                walls[name].append(st.wall_s)
                assert st.failed == 0, st.failures
        for name, w in walls.items():
            results[f"{name}_wall_s"] = statistics.median(w)
        results["pipeline_speedup"] = statistics.median(
            s / p for s, p in zip(walls["sequential"], walls["pipelined"]))
        results["pipeline_ideal_speedup"] = 2.0  # policy and env costs equal and fully overlapped
    # balance: one group of 8 on 2 x 8 (the default pool) vs 2 x 4
    zero = BinPolicy(BinPolicyConfig(chunk_size=args.chunk, zero_cost=True))
    rates: dict[int, list[float]] = {8: [], 4: []}
    with EnvPool(ReachEnv, env_cfg, num_workers=2, envs_per_worker=8) as wide, \
            EnvPool(ReachEnv, env_cfg, num_workers=2, envs_per_worker=4) as narrow:
        for r in range(args.rounds):
            for per, p in ((8, wide), (4, narrow)):
                _, st = RolloutCollector.for_policy(p, zero, EnvSuccess()).collect([StartState("reach_0", r)], 8, 1.0)
                rates[per].append(st.env_steps / st.wall_s)
    results["group_of_8_on_2x8_steps_per_s"] = statistics.median(rates[8])
    results["group_of_8_on_2x4_steps_per_s"] = statistics.median(rates[4])
    results["balance_ratio_2x8_over_2x4"] = statistics.median(a / b for a, b in zip(rates[8], rates[4]))
    results.update(vars(args))
    results["load_average_1min"] = os.getloadavg()[0]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
