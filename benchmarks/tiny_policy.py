"""CPU speed of the tiny policy: act() throughput and one RL train step.

    python benchmarks/tiny_policy.py --threads 2
    python benchmarks/tiny_policy.py --threads 1 --set hidden_size=96 --set heads=3

Prints, per batch size, the median act() time at the rollout temperature and
chunks per second, then the median time of one training step at batch 64
(``log_probs`` forward + backward + AdamW step, as the RL update does it).
Medians over repeats, because shared machines make single timings noisy.
"""

from __future__ import annotations

import argparse
import ast
import statistics
import time

import numpy as np
import torch

from pushcut.contracts import ObsBatch
from pushcut.plugins.policies.tiny import TinyTokenVLA, TinyTokenVLAConfig

INSTRUCTIONS = ["push the red cube onto the green target", "lift the blue block", "slide the yellow cube left"]


def make_obs(config: TinyTokenVLAConfig, batch: int) -> ObsBatch:
    rng = np.random.default_rng(0)
    shape = (batch, config.image_size, config.image_size, 3)
    return ObsBatch(
        images=rng.integers(0, 256, shape, dtype=np.uint8),
        instructions=[INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(batch)],
        task_ids=["bench"] * batch,
        wrist_images=rng.integers(0, 256, shape, dtype=np.uint8) if config.use_wrist_image else None,
        states=rng.normal(size=(batch, config.state_dim)).astype(np.float32) if config.use_state else None,
    )


def median_seconds(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parse_overrides(items: list[str]) -> dict[str, object]:
    overrides: dict[str, object] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 64], help="act() batch sizes")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.6)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="TinyTokenVLAConfig override")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = TinyTokenVLAConfig(**parse_overrides(args.set))
    policy = TinyTokenVLA(config)
    params = sum(p.numel() for p in policy.parameters())
    print(f"tiny policy: {params:,} parameters, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"config: {config}")

    for batch in args.batches:
        obs = make_obs(config, batch)
        seconds = median_seconds(lambda: policy.act(obs, args.temperature), args.repeats)
        print(f"act       batch {batch:4d}: {seconds * 1e3:7.1f} ms  {batch / seconds:8.0f} chunks/s")

    obs = make_obs(config, args.train_batch)
    sample = policy.act(obs, args.temperature).sample
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)

    def train_step() -> None:
        scores = policy.log_probs(obs, sample, args.temperature)
        loss = -scores.log_probs.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = median_seconds(train_step, max(5, args.repeats // 3))
    print(f"train     batch {args.train_batch:4d}: {seconds * 1e3:7.1f} ms  (log_probs fwd+bwd+AdamW)")


if __name__ == "__main__":
    main()
