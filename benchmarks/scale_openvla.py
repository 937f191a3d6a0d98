"""The GPU benchmark of the paper's workload: OpenVLA-OFT at its LIBERO shapes, random weights.

Run through ``python benchmarks/scale.py --device cuda --size 7b`` (or ``--size tiny`` on a CPU, to
check the script). One JSON line per figure:

* ``sampling`` — the 56-token parallel decode (chunk 8 × 7 action dims) at batch 8 / 32 / 64 and the
  rollout temperature: chunks/s, ms per chunk, peak memory;
* ``update`` — one optimiser step (``pushcut.learner.update_policy`` on a batch of sampled chunks):
  tokens/s and peak memory, for LoRA r = 32 in one process, and for full fine-tuning with FSDP2 at
  world size 1 (``train.strategy=fsdp2``, optimizer state and parameter shards offloaded to the
  CPU, activation checkpointing, bf16-mixed on CUDA);
* ``attention`` — the sampling figure again with flash-attn 2, when ``flash_attn`` imports;
* ``estimate`` — minutes per RL step of the paper's LIBERO config on 8 GPUs, from the figures
  above, with its formula (the env's own time is not in it: add LIBERO's, docs/performance.md).

Weights are random (``benchmarks/openvla.py`` builds them in the original checkpoint layout);
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import openvla as ovb  # noqa: E402  (benchmarks/openvla.py: random checkpoints in the original layout)

PAPER = {"batch": 64, "samples": 8, "max_steps": 512, "chunk": 8, "action_dim": 7, "gpus": 8}
"""SimpleVLA-RL's LIBERO run (configs/libero_openvla_oft.yaml): start states × samples per state,
env steps per episode, actions per chunk, GPUs."""


def peak(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def policy_args(args: argparse.Namespace, **changes) -> argparse.Namespace:
    base = dict(device=args.device, size=args.size, chunk=PAPER["chunk"], action_dim=PAPER["action_dim"],
                mode="parallel", train=False, lora_rank=0, freeze_vision=False)
    return argparse.Namespace(**{**base, **changes})


def sampling(policy, args: argparse.Namespace, label: str) -> dict[int, float]:
    """Seconds per act call at each batch size; prints a line per batch."""
    out = {}
    for batch in args.batches:
        obs = ovb.observations(batch, ovb.SIZES[args.size]["image"])
        with torch.inference_mode():
            policy.act(obs, 1.6)
            reset_peak(args.device)
            ovb.sync(args.device)
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                policy.act(obs, 1.6)
            ovb.sync(args.device)
        per_call = (time.perf_counter() - t0) / args.repeats
        out[batch] = per_call
        print(json.dumps({"what": label, "size": args.size, "device": args.device, "batch": batch,
                          "chunks_per_s": round(batch / per_call, 1), "ms_per_chunk": round(1000 * per_call / batch, 2),
                          "peak_gib": peak(args.device)}), flush=True)
    return out


def chunk_batch(policy, args: argparse.Namespace, n: int):
    """An EpisodeBatch of ``n`` one-chunk episodes sampled from ``policy``, in two groups with mixed rewards."""
    from pushcut.batch import Episode, EpisodeBatch

    obs = ovb.observations(n, ovb.SIZES[args.size]["image"])
    with torch.no_grad():
        out = policy.act(obs, 1.6)
    episodes = []
    for k in range(n):
        ep = Episode("t", obs.instructions[k], k, k * 2 // n)
        ep.add_step({"image": obs.images[k]}, {key: v[k].cpu() for key, v in out.sample.items()},
                    out.log_probs[k].cpu(), out.mask[k].cpu())
        ep._finalize()
        ep.success = ep.reward = k % 2 == 0
        episodes.append(ep)
    batch = EpisodeBatch(episodes, n // 2)
    return batch.with_advantages(torch.tensor([1.0 if k % 2 == 0 else -1.0 for k in range(n)]))


def update(args: argparse.Namespace, directory: Path, label: str, lora_rank: int, sharded: bool) -> float:
    """Tokens/s of one optimiser step over ``args.update_batch`` chunks; prints the line."""
    from pushcut.configio import load_config
    from pushcut.learner import Shards, update_policy

    reset_peak(args.device)
    policy = ovb.build_policy(policy_args(args, train=True, lora_rank=lora_rank, freeze_vision=bool(lora_rank)),
                              directory)
    batch = chunk_batch(policy.eval(), args, args.update_batch)
    shards = None
    if sharded:
        import torch.distributed as dist

        from pushcut.distributed import shard_policy

        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29561")
            dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo", rank=0, world_size=1)
        shard_policy(policy, "bf16-mixed" if args.device.startswith("cuda") else "float32",
                     offload=args.device.startswith("cuda"), activation_checkpointing=True)
        shards = Shards(0, 1, sharded=True)
    cfg = load_config(None, ["policy.type=openvla", f"policy.checkpoint={directory}", "policy.unnorm_key=bench",
                             f"train.minibatch_size={args.update_batch}", f"train.micro_batch_size={args.micro_batch}",
                             "train.lr=5e-6", "algo.temperature=1.6"])
    optimizer = torch.optim.AdamW(list(policy.trainable_parameters()), lr=cfg.train.lr)
    tokens = args.update_batch * PAPER["chunk"] * PAPER["action_dim"]
    update_policy(policy, optimizer, batch, cfg, torch.Generator().manual_seed(0), shards=shards)  # warm-up
    reset_peak(args.device)
    ovb.sync(args.device)
    t0 = time.perf_counter()
    update_policy(policy, optimizer, batch, cfg, torch.Generator().manual_seed(1), shards=shards)
    ovb.sync(args.device)
    seconds = time.perf_counter() - t0
    trainable = sum(p.numel() for p in policy.trainable_parameters())
    print(json.dumps({"what": "update", "how": label, "size": args.size, "device": args.device,
                      "trainable_m": round(trainable / 1e6, 1), "chunks": args.update_batch,
                      "micro_batch": args.micro_batch, "tokens_per_s": round(tokens / seconds, 1),
                      "peak_gib": peak(args.device)}), flush=True)
    del policy, optimizer
    return tokens / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="tiny", choices=["tiny", "7b"])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--update-batch", type=int, default=16, help="chunks per optimiser step")
    parser.add_argument("--micro-batch", type=int, default=8)
    args, _ = parser.parse_known_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ovb.checkpoint_dir(directory, args.size, PAPER["action_dim"])
        policy = ovb.build_policy(policy_args(args), directory).eval()
        per_call = sampling(policy, args, "sampling")
        del policy
        try:
            import flash_attn  # noqa: F401

            flash = True
        except ImportError:
            flash = False
            print(json.dumps({"what": "attention", "flash_attn": "not installed: SDPA only"}), flush=True)
        if flash:
            policy = ovb.build_policy(policy_args(args, attn_implementation="flash_attention_2"), directory)
            sampling(policy.eval(), args, "sampling_flash_attn")
            del policy
        lora = update(args, directory, "lora_r32", lora_rank=32, sharded=False)
        full = update(args, directory, "full_fsdp2_world1_offload_ac", lora_rank=0, sharded=True)
    # minutes per RL step on 8 GPUs: every GPU samples for its share of the episodes, one act call per chunk
    episodes = PAPER["batch"] * PAPER["samples"]
    calls = PAPER["max_steps"] // PAPER["chunk"]
    per_gpu_batch = episodes // PAPER["gpus"]
    act_s = per_call.get(per_gpu_batch, per_call[max(per_call)] * per_gpu_batch / max(per_call))
    tokens = episodes * calls * PAPER["chunk"] * PAPER["action_dim"]
    rollout_min = calls * act_s / 60
    update_min = {k: tokens / (v * PAPER["gpus"]) / 60 for k, v in (("lora", lora), ("full", full))}
    print(json.dumps({"what": "estimate", "size": args.size, "device": args.device,
                      "formula": "rollout = (max_steps / chunk) act calls x s/act at batch (64 x 8 / 8 GPUs); "
                                 "update = 64 x 8 episodes x (512 / 8) chunks x 56 tokens / (tokens/s x 8 GPUs); "
                                 "the env's own step time is not included",
                      "rollout_min": round(rollout_min, 2), "update_min_lora": round(update_min["lora"], 2),
                      "update_min_full": round(update_min["full"], 2),
                      "rl_step_min_full": round(rollout_min + update_min["full"], 2),
                      "simplevla_rl_reported_min": 45}), flush=True)


if __name__ == "__main__":
    main()
