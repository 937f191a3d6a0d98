"""FSDP2 learners on the tiny VLA (SigLIP encoder + Llama decoder, sharded per layer), 2 gloo ranks.

The ranks are plain torch.multiprocessing processes (no Ray: the Ray placement is covered with the
toy policy in test_distributed.py); both join before the test returns, pass or fail.

Tolerance: the ranks compute each row's loss as one process does, but FSDP2 reduce-scatters
(averages) the gradients of every shard unit across ranks while the single process sums them in
one backward; the sums differ by float32 rounding (~1e-7 relative). After two AdamW updates with
lr 1e-3 the parameters agree to rtol=1e-4, atol=1e-5, except the attention keys' biases: their
gradient is zero in exact arithmetic, so it is pure rounding noise, and AdamW's step is about lr
whatever the gradient's size (they are held to lr × optimizer steps). The metrics of the update
agree to rtol=1e-5, atol=1e-6 (``ppo_kl`` is a mean of log-prob differences near zero, so its
relative error is large while its absolute one stays at float32 rounding of the log-probs). With
LoRA (OpenVLA), the frozen base weights come back bit-identical.
"""

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pushcut.configio import load_config
from pushcut.contracts import ObsBatch
from pushcut.learner import update_policy
from pushcut.plugins.policies.tiny.config import TinyTokenVLAConfig
from pushcut.plugins.policies.tiny.policy import TinyTokenVLA
from pushcut.batch import Episode, EpisodeBatch

RTOL, ATOL = 1e-4, 1e-5
OPTIONS = dict(chunk_size=2, action_dim=2, use_state=True, state_dim=3, image_size=32)
POLICIES = Path(__file__).parents[1] / "plugins" / "policies"  # openvla_tiny: a tiny OpenVLA checkpoint


def build(kind: str, checkpoint: str):
    """The policy under test, built the same way in the test and on each rank (same seed)."""
    torch.manual_seed(0)
    if kind == "tiny":
        return TinyTokenVLA(TinyTokenVLAConfig(**OPTIONS)), 32
    from pushcut.plugins.policies.openvla import OpenVLAConfig, OpenVLAPolicy

    # LoRA: the base weights frozen inside every shard unit, only the adapters train
    return OpenVLAPolicy(OpenVLAConfig(checkpoint=checkpoint, unnorm_key="libero_10_no_noops", chunk_size=2,
                                       lora_rank=4, lora_alpha=8, freeze_vision=True)), 28
OVERRIDES = ["policy.type=tiny", "train.lr=0.001", "train.minibatch_size=6", "train.micro_batch_size=5",
             "train.ppo_epochs=2", "algo.temperature=1.6"]


def make_batch(policy, seed: int, size: int = 32) -> EpisodeBatch:
    """Two groups of 4 episodes of 1-3 chunks each, sampled from ``policy`` on random observations,
    with mixed rewards: a real batch as the rollout collector builds it."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    episodes = []
    for k in range(8):
        ep = Episode(f"task{k // 4}", "put the red block on the plate", k, k // 4)
        for _ in range(1 + k % 3):
            obs = {"image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                   "state": rng.normal(size=3).astype(np.float32)}
            with torch.no_grad():
                out = policy.act(ObsBatch.from_observations([obs], [ep.instruction], [ep.task_id]), 1.6)
            ep.add_step(obs, {key: v[0] for key, v in out.sample.items()}, out.log_probs[0], out.mask[0])
        ep._finalize()
        ep.length, ep.success = ep.num_chunks * 2, k in (0, 2, 5)
        ep.reward = float(ep.success)
        episodes.append(ep)
    batch = EpisodeBatch(episodes, 4)
    rewards = batch.rewards()
    adv = torch.cat([(g - g.mean()) / (g.std() + 1e-6) for g in rewards.view(2, 4)])
    return batch.with_advantages(adv)


def rank_main(rank: int, world: int, port: int, out_dir: str, checkpointing: bool, kind: str, checkpoint: str) -> None:
    import torch.distributed as dist

    from pushcut.distributed import gathered, shard_policy
    from pushcut.learner import Shards

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = load_config(None, OVERRIDES)
        policy, size = build(kind, checkpoint)
        batch = make_batch(policy, seed=1, size=size)
        units = len(policy.shard_units())
        assert units == (4 if kind == "tiny" else 8)  # tiny: 2 + 2 layers; OpenVLA: 2 Llama + 3 DINOv2 + 3 SigLIP
        shard_policy(policy, activation_checkpointing=checkpointing)
        optimizer = torch.optim.AdamW(list(policy.trainable_parameters()), lr=cfg.train.lr)
        obs = ObsBatch.from_observations(batch[0].observations[:1], [batch[0].instruction], [batch[0].task_id])
        with gathered(policy), torch.no_grad():  # rollouts first, as a run's evaluation at step 0
            before = [policy.act(obs, 0.0).actions for _ in range(1 if rank == 0 else 2)]
        metrics = [update_policy(policy, optimizer, batch, cfg, torch.Generator().manual_seed(3),
                                 shards=Shards(rank, world, sharded=True)) for _ in range(2)]
        # rollouts with the sharded weights: every unit gathered once; rank 0 makes more calls than rank 1
        with gathered(policy), torch.no_grad():
            greedy = [policy.act(obs, 0.0).actions for _ in range(3 if rank == 0 else 1)]
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            torch.save({"metrics": metrics, "weights": full, "greedy": greedy[0], "before": before[0]},
                       os.path.join(out_dir, "sharded.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("kind, checkpointing", [("tiny", False), ("tiny", True), ("openvla-lora", False)],
                         ids=["tiny", "tiny-activation-checkpointing", "openvla-lora"])
def test_fsdp2_update_on_two_ranks_equals_the_single_process(tmp_path, kind, checkpointing):
    checkpoint = ""
    if kind == "openvla-lora":
        pytest.importorskip("mistral_common", reason="the tiny OpenVLA checkpoint's tokenizer needs the test extra")
        sys.path.insert(0, str(POLICIES))
        from openvla_tiny import make_tiny_checkpoint

        checkpoint = str(make_tiny_checkpoint(tmp_path / "ckpt"))
    cfg = load_config(None, OVERRIDES)
    policy, size = build(kind, checkpoint)
    batch = make_batch(policy, seed=1, size=size)
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    obs = ObsBatch.from_observations(batch[0].observations[:1], [batch[0].instruction], [batch[0].task_id])
    with torch.no_grad():
        before = policy.act(obs, 0.0).actions
    optimizer = torch.optim.AdamW(list(policy.trainable_parameters()), lr=cfg.train.lr)
    want = [update_policy(policy, optimizer, batch, cfg, torch.Generator().manual_seed(3)) for _ in range(2)]

    mp.start_processes(rank_main, args=(2, free_port(), str(tmp_path), checkpointing, kind, checkpoint), nprocs=2,
                       join=True, start_method="spawn")
    got = torch.load(tmp_path / "sharded.pt", weights_only=False)

    for w, g in zip(want, got["metrics"]):
        assert w["actor/optimizer_steps"] == g["actor/optimizer_steps"] >= 2
        for key in ("actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl", "actor/entropy", "actor/grad_norm"):
            assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-6), key
    moved = 0.0
    steps = sum(m["actor/optimizer_steps"] for m in want)
    frozen = {name for name, p in policy.named_parameters() if not p.requires_grad}
    for name, value in policy.state_dict().items():
        if name in frozen:  # LoRA: the frozen base weights come back untouched
            torch.testing.assert_close(got["weights"][name], start[name], rtol=0, atol=0, msg=name)
            continue
        # an attention key's bias has zero gradient in exact arithmetic (softmax is shift-invariant per
        # query): its gradient is rounding noise, on which AdamW still steps by about lr each time
        atol = cfg.train.lr * steps if name.endswith("k_proj.bias") else ATOL
        torch.testing.assert_close(got["weights"][name], value, rtol=RTOL, atol=atol, msg=name)
        moved = max(moved, float((value - start[name]).abs().max()))
    assert moved > 1e-4  # the updates did move the weights
    np.testing.assert_allclose(got["before"], before, rtol=0, atol=1e-6)  # the gathered weights act alike
    with torch.no_grad():
        np.testing.assert_allclose(got["greedy"], policy.act(obs, 0.0).actions, rtol=0, atol=1e-6)
