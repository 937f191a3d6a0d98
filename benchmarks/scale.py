"""Scale-out on Ray: env steps/s through env actors, and learner throughput on 1 vs N ranks.

    python benchmarks/scale.py --device cpu                 # tiny: toy env + toy policy, local 2-CPU cluster
    python benchmarks/scale.py --device cuda --learners 2   # NCCL ranks, one GPU each (same tiny model)

Env: ``--workers`` Ray env actors × ``--envs`` ReachEnv (``--step-ms`` simulated cost per
step), stepped through the pool exactly as rollouts do, against the same pool on the
``process`` transport. Learner: the trainer's update (``update_policy`` on learner ranks)
over one collected batch, repeated, on 1 and on ``--learners`` ranks; rows/s = (episode,
chunk) rows per second, per rank. Prints one JSON line per measurement, with the placement.

``--size 7b`` (or ``tiny`` on a CPU): OpenVLA-OFT at the paper's shapes with random weights —
sampling at batch 8/32/64, the update with LoRA r=32 and fully fine-tuned with FSDP2 (offload,
activation checkpointing), flash-attn where it imports, and minutes per RL step on 8 GPUs
(benchmarks/scale_openvla.py).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def env_rate(transport, workers: int, envs: int, step_ms: float, rounds: int) -> float:
    from pushcut.envpool import EnvPool
    from pushcut.toys import ReachConfig, ReachEnv

    config = ReachConfig(step_delay_s=step_ms / 1000, max_steps=10 ** 6)
    with EnvPool(ReachEnv, config, num_workers=workers, envs_per_worker=envs, transport=transport) as pool:
        slots = range(pool.num_slots)
        pool.reset({s: ("reach_0", s % 30) for s in slots})
        actions = {s: np.zeros((1, 1), dtype=np.float32) for s in slots}
        pool.step(actions)  # warm
        t0 = time.perf_counter()
        for _ in range(rounds):
            pool.step(actions)
        return rounds * pool.num_slots / (time.perf_counter() - t0)


def learner_rate(args, manager, learners: int, repeats: int) -> tuple[float, float]:
    from pushcut.build import build_collector
    from pushcut.configio import load_config
    from pushcut.distributed import RayLearners
    from pushcut.envpool import EnvPool
    from pushcut.sampling import make_sampler
    from pushcut.toys import BinPolicy, BinPolicyConfig, ReachConfig, ReachEnv
    from pushcut.trainer import collect_batch

    cfg = load_config(None, ["env.type=reach", "policy.type=bins", f"policy.hidden={args.hidden}",
                             "algo.temperature=1.0", "train.batch_size=8", "train.minibatch_size=64",
                             "train.micro_batch_size=64", "train.backend=ray", f"train.learners={learners}",
                             f"train.learner_num_cpus={args.learner_cpus}", f"train.device={args.device}",
                             f"train.strategy={args.strategy}"], manager)
    policy = BinPolicy(BinPolicyConfig(hidden=args.hidden))
    with EnvPool(ReachEnv, ReachConfig(), num_workers=1, envs_per_worker=16, transport="inline") as pool:
        batch, _ = collect_batch(build_collector(cfg, pool, policy), make_sampler("uniform", pool.tasks(), 0, 8),
                                 cfg, None)
    rows = sum(ep.num_chunks for ep in batch)
    group = RayLearners(cfg, policy.to(args.device), torch.optim.AdamW(policy.parameters()), None, manager)
    try:
        gen = torch.Generator().manual_seed(0)
        group.update(batch, gen, rollout_version=0)  # warm: weights pushed, kernels loaded
        t0 = time.perf_counter()
        for i in range(repeats):
            group.update(batch, gen, rollout_version=i + 1)
        elapsed = time.perf_counter() - t0
    finally:
        group.close()
    return rows * repeats / elapsed, rows * repeats / elapsed / learners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--strategy", default="replicate", choices=["replicate", "fsdp2"],
                        help="how the learner ranks hold the model (train.strategy)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--step-ms", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--learners", type=int, default=2)
    parser.add_argument("--learner-cpus", type=float, default=0.5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", default="toy", choices=["toy", "tiny", "7b"],
                        help="toy: the paths above at toy size; tiny / 7b: OpenVLA-OFT sampling and updates "
                             "(benchmarks/scale_openvla.py)")
    args, _ = parser.parse_known_args()
    if args.size != "toy":
        import sys

        from scale_openvla import main as openvla_main

        openvla_main(sys.argv[1:])
        return
    args = parser.parse_args()
    os.environ.setdefault("PUSHCUT_DISABLE_PLUGIN_AUTOLOAD", "1")
    import ray

    from pushcut.envpool.transports.ray import RayTransport
    from pushcut.testing import registered_plugin
    from pushcut.toys import ToyPlugin

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    resources = ray.cluster_resources()
    placement = {"nodes": len(ray.nodes()), "cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0)}
    for name, transport in (("process", "process"), ("ray", RayTransport(num_cpus=0.5))):
        rate = env_rate(transport, args.workers, args.envs, args.step_ms, args.rounds)
        print(json.dumps({"what": "env_steps_per_s", "transport": name, "workers": args.workers,
                          "envs_per_worker": args.envs, "step_ms": args.step_ms, "value": round(rate, 1),
                          **placement}))
    with registered_plugin(ToyPlugin(), "toys") as manager:
        for n in sorted({1, args.learners}):
            total, per_rank = learner_rate(args, manager, n, args.repeats)
            print(json.dumps({"what": "learner_rows_per_s", "device": args.device, "learners": n,
                              "hidden": args.hidden, "value": round(total, 1), "per_rank": round(per_rank, 1),
                              **placement}))
    ray.shutdown()


if __name__ == "__main__":
    main()
