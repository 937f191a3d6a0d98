"""OpenVLA-OFT policy speed and memory, on random weights in the original checkpoint layout.

    python benchmarks/openvla.py                              # CPU, tiny config: sampling chunks/s at batch 8 and 64
    python benchmarks/openvla.py --device cuda --size 7b      # GPU: the 7B architecture in bf16

Reports, per batch size: sampling throughput (chunks/s) and latency per ``act`` call at the rollout
temperature; with ``--train``: one training micro-step (log_probs + backward, gradient checkpointing
on for 7b); on CUDA the peak memory of each. Nothing is downloaded: weights are random, the tokenizer
is mistral-common's 32000-piece SentencePiece model (the `test` extra), standing in for Llama-2's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZES = {
    # dino: ViT-L/14 reg4; siglip: So400m/14; llm: Llama-2 7B (vocab padded to 32064)
    "7b": dict(image=224, dino=(1024, 24, 4096), siglip=(1152, 27, 4304), llm=(4096, 32, 11008, 32, 32)),
    "tiny": dict(image=56, dino=(64, 3, 256), siglip=(96, 3, 384), llm=(128, 2, 256, 4, 4)),
}


def random_tensors(size: str, device: str, dtype: torch.dtype, action_dim: int) -> dict[str, torch.Tensor]:
    """Every tensor of an OpenVLA checkpoint (original names), random, created on ``device``."""
    s = SIZES[size]
    gen = torch.Generator(device=device).manual_seed(0)

    def r(*shape, std=0.02):
        return (torch.randn(*shape, generator=gen, device=device, dtype=torch.float32) * std).to(dtype)

    def ones(n):
        return torch.ones(n, device=device, dtype=dtype)

    t: dict[str, torch.Tensor] = {}
    patches = (s["image"] // 14) ** 2
    towers = (("featurizer", s["dino"], True), ("fused_featurizer", s["siglip"], False))
    for name, (hidden, layers, mlp), dino in towers:
        p = f"vision_backbone.{name}."
        t.update({p + "pos_embed": r(1, patches, hidden), p + "patch_embed.proj.weight": r(hidden, 3, 14, 14),
                  p + "patch_embed.proj.bias": r(hidden), p + "norm.weight": ones(hidden), p + "norm.bias": r(hidden)})
        if dino:
            t.update({p + "cls_token": r(1, 1, hidden), p + "reg_token": r(1, 4, hidden)})
        for i in range(layers):
            b = f"{p}blocks.{i}."
            t.update({b + "norm1.weight": ones(hidden), b + "norm1.bias": r(hidden),
                      b + "attn.qkv.weight": r(3 * hidden, hidden), b + "attn.qkv.bias": r(3 * hidden),
                      b + "attn.proj.weight": r(hidden, hidden), b + "attn.proj.bias": r(hidden),
                      b + "norm2.weight": ones(hidden), b + "norm2.bias": r(hidden),
                      b + "mlp.fc1.weight": r(mlp, hidden), b + "mlp.fc1.bias": r(mlp),
                      b + "mlp.fc2.weight": r(hidden, mlp), b + "mlp.fc2.bias": r(hidden)})
            if dino:
                t.update({b + "ls1.scale_factor": ones(hidden), b + "ls2.scale_factor": ones(hidden)})
    vd = s["dino"][0] + s["siglip"][0]
    hidden, layers, inter, heads, kv = s["llm"]
    t.update({"projector.fc1.weight": r(4 * vd, vd), "projector.fc1.bias": r(4 * vd),
              "projector.fc2.weight": r(hidden, 4 * vd), "projector.fc2.bias": r(hidden),
              "projector.fc3.weight": r(hidden, hidden), "projector.fc3.bias": r(hidden)})
    q = "language_model."
    t.update({q + "model.embed_tokens.weight": r(32064, hidden), q + "model.norm.weight": ones(hidden),
              q + "lm_head.weight": r(32064, hidden)})
    hd = hidden // heads
    for i in range(layers):
        b = f"{q}model.layers.{i}."
        t.update({b + "self_attn.q_proj.weight": r(hidden, hidden), b + "self_attn.k_proj.weight": r(kv * hd, hidden),
                  b + "self_attn.v_proj.weight": r(kv * hd, hidden), b + "self_attn.o_proj.weight": r(hidden, hidden),
                  b + "mlp.gate_proj.weight": r(inter, hidden), b + "mlp.up_proj.weight": r(inter, hidden),
                  b + "mlp.down_proj.weight": r(hidden, inter), b + "input_layernorm.weight": ones(hidden),
                  b + "post_attention_layernorm.weight": ones(hidden)})
    return t


def checkpoint_dir(directory: Path, size: str, action_dim: int) -> None:
    """config.json (the real structure) and the stand-in tokenizer; weights come in memory."""
    import mistral_common

    s = SIZES[size]
    hidden, layers, inter, heads, kv = s["llm"]
    rng = np.random.default_rng(0)
    stats = {"bench": {"action": {"q01": (-rng.random(action_dim)).tolist(), "q99": rng.random(action_dim).tolist(),
                                  "min": [-1.0] * action_dim, "max": [1.0] * action_dim,
                                  "mask": [True] * (action_dim - 1) + [False]}}}
    config = {"vision_backbone_id": "dinosiglip-vit-so-224px", "llm_backbone_id": "llama2-7b-pure",
              "use_fused_vision_backbone": True, "image_sizes": [s["image"]] * 2,
              "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
              "image_resize_strategy": "resize-naive", "n_action_bins": 256, "pad_to_multiple_of": 64,
              "norm_stats": stats,
              "text_config": {"model_type": "llama", "vocab_size": 32064, "pad_token_id": 32000,
                              "hidden_size": hidden, "num_hidden_layers": layers, "intermediate_size": inter,
                              "num_attention_heads": heads, "num_key_value_heads": kv}}
    (directory / "config.json").write_text(json.dumps(config))
    tokenizer = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    (directory / "tokenizer.model").write_bytes(tokenizer.read_bytes())


def build_policy(args, directory: Path):
    from pushcut.plugins.policies.openvla import OpenVLAConfig, OpenVLAPolicy
    from pushcut.plugins.policies.openvla.checkpoint import RawCheckpoint

    dtype = torch.bfloat16 if args.size == "7b" else torch.float32
    tensors = random_tensors(args.size, args.device, dtype, args.action_dim)
    raw = RawCheckpoint(directory=directory, config=json.loads((directory / "config.json").read_text()),
                        tensors=tensors, files={k: "model.safetensors" for k in tensors},
                        dtypes={k: v.dtype for k, v in tensors.items()})
    config = OpenVLAConfig(checkpoint=str(directory), unnorm_key="bench", chunk_size=args.chunk,
                           action_dim=args.action_dim, mode=args.mode,
                           dtype="bfloat16" if args.size == "7b" else "float32",
                           gradient_checkpointing=args.train and args.size == "7b",
                           lora_rank=args.lora_rank, freeze_vision=args.freeze_vision,
                           attn_implementation=getattr(args, "attn_implementation", "sdpa"))
    return OpenVLAPolicy(config, raw=raw).to(args.device)


def observations(batch: int, image: int):
    from pushcut.contracts import ObsBatch

    rng = np.random.default_rng(0)
    words = ["put the black bowl on the plate", "open the top drawer of the cabinet", "turn on the stove"]
    return ObsBatch(images=rng.integers(0, 256, (batch, image, image, 3), dtype=np.uint8),
                    instructions=[words[i % 3] for i in range(batch)], task_ids=["t"] * batch)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="default: 8 64 (CPU tiny), 64 (7b)")
    parser.add_argument("--mode", choices=["parallel", "autoregressive"], default="parallel")
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--action-dim", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 for comparable numbers)")
    parser.add_argument("--train", action="store_true", help="also time one training micro-step")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--freeze-vision", action="store_true")
    args = parser.parse_args()
    if args.mode == "autoregressive":
        args.chunk = 1
    batches = args.batch or ([64] if args.size == "7b" else [8, 64])
    torch.set_num_threads(args.threads)
    report: dict = {"device": args.device, "size": args.size, "mode": args.mode,
                    "chunk": args.chunk, "action_dim": args.action_dim, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        checkpoint_dir(directory, args.size, args.action_dim)
        t0 = time.perf_counter()
        policy = build_policy(args, directory).eval()
        sync(args.device)
        report["build_s"] = round(time.perf_counter() - t0, 2)
        report["parameters_m"] = round(sum(p.numel() for p in policy.parameters()) / 1e6, 1)
        if args.device.startswith("cuda"):
            report["weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        for batch in batches:
            obs = observations(batch, SIZES[args.size]["image"])
            with torch.inference_mode():
                policy.act(obs, 1.6)  # warm-up
                if args.device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                sync(args.device)
                t0 = time.perf_counter()
                for _ in range(args.repeats):
                    policy.act(obs, 1.6)
                sync(args.device)
            per_call = (time.perf_counter() - t0) / args.repeats
            row = {"s_per_act": round(per_call, 4), "chunks_per_s": round(batch / per_call, 1),
                   "s_per_chunk": round(per_call / batch, 5)}
            if args.device.startswith("cuda"):
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            report[f"act_batch_{batch}"] = row
        if args.train:
            policy.train()
            obs = observations(args.train_batch, SIZES[args.size]["image"])
            with torch.no_grad():
                sample = policy.act(obs, 1.6)
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(2):  # the first includes allocator warm-up
                policy.zero_grad(set_to_none=True)
                sync(args.device)
                t0 = time.perf_counter()
                scores = policy.log_probs(obs, sample.sample, 1.6)
                loss = -(scores.log_probs.mean())
                loss.backward()
                sync(args.device)
                times.append(time.perf_counter() - t0)
            row = {"batch": args.train_batch, "s_per_micro_step": round(times[-1], 3),
                   "gradient_checkpointing": policy.config.gradient_checkpointing}
            if args.device.startswith("cuda"):
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            report["train_micro_step"] = row
            trainable = sum(p.numel() for p in policy.trainable_parameters())
            report["trainable_m"] = round(trainable / 1e6, 1)
            report["adamw_fp32_states_gib_if_full"] = round(trainable * 8 / 2**30, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
