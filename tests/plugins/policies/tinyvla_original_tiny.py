"""A tiny random-weight TinyVLA model in the original code's file layout (base + per-task runs), for
pushcut's own tests of the original variant. Written with transformers / tokenizers / torch directly,
not with the plugin's exporter (the head's tensors come from the plugin's U-Net only for their names
and shapes; tests/reference/tinyvla_reference.py checks those against the original's structure).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

SHAPES = dict(hidden=32, layers=2, heads=2, intermediate=64, vision_hidden=32, vision_layers=2, vision_heads=2,
              vision_intermediate=64, image=28, patch=14, chunk=4, action_dim=3, state_dim=2, step_embed=16,
              down_dims=(16, 32), kernel=3)
CORPUS = ["A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions. USER: ASSISTANT:",
          "pick up the red cube", "push the blue block", "open the drawer", "close the drawer"]


def write_tokenizer(directory: Path, vocab: int = 300) -> int:
    """A byte-level BPE with the Pythia special tokens at ids 0 (<|endoftext|>) and 1 (<|padding|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPTNeoXTokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|padding|>", "model_max_length": 2048}))
    return tok.get_vocab_size(with_added_tokens=True)


def base_config(vocab_size: int, s: dict = SHAPES) -> dict:
    return {
        "model_type": "llava_pythia", "architectures": ["LlavaPythiaForCausalLM"], "vocab_size": vocab_size,
        "hidden_size": s["hidden"], "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"],
        "intermediate_size": s["intermediate"], "hidden_act": "gelu", "rotary_pct": 0.25, "rotary_emb_base": 10000,
        "max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "use_parallel_residual": True,
        "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0,
        "vision_config": {
            "vision_tower": {"hidden_size": s["vision_hidden"], "intermediate_size": s["vision_intermediate"],
                             "num_hidden_layers": s["vision_layers"], "num_attention_heads": s["vision_heads"],
                             "image_size": s["image"], "patch_size": s["patch"], "num_channels": 3,
                             "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "mm_vision_select_layer": -2,
                             "mm_vision_select_feature": "patch", "vision_model_name_or_path": "clip"},
            "mm_projector": {"mm_projector_type": "mlp2x_gelu", "mm_hidden_size": s["vision_hidden"],
                             "hidden_size": s["hidden"]}},
    }


def _modules(config: dict, seed: int):
    from pushcut.plugins.policies.tinyvla.original_model import UnetHead, VisionTower, build_llm, build_projector

    torch.manual_seed(seed)
    root = torch.nn.Module()
    root.gpt_neox = build_llm(config)
    root.gpt_neox.vision_tower = VisionTower(config["vision_config"]["vision_tower"])
    with torch.no_grad():  # stress: norms and biases away from their init, so a dropped one shows
        for name, p in root.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return root


def _head(config: dict, s: dict, seed: int) -> dict[str, torch.Tensor]:
    from pushcut.plugins.policies.tinyvla.original_model import UnetHead, build_projector

    torch.manual_seed(seed)
    proj = build_projector("mlp2x_gelu", s["vision_hidden"], s["hidden"])
    head = UnetHead(s["action_dim"], s["hidden"], s["state_dim"], s["step_embed"], tuple(s["down_dims"]), s["kernel"])
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = {f"gpt_neox.mm_projector.{k}": v for k, v in proj.state_dict().items()}
    out.update({f"embed_out.{k}": v for k, v in head.state_dict().items()})
    return out


def linear_names(root: torch.nn.Module) -> list[str]:
    return sorted(n for n, m in root.named_modules() if isinstance(m, torch.nn.Linear))


def make_original_model(directory: Path, tasks=("pick", "push"), seed: int = 0, lora_r: int = 4,
                        lora_alpha: int = 16, s: dict = SHAPES) -> dict[str, Path]:
    """``directory/base`` and ``directory/<task>/checkpoint-10`` for each task; returns task → run dir."""
    base = directory / "base"
    vocab = write_tokenizer(base)
    config = base_config(vocab + 20, s)
    base.mkdir(parents=True, exist_ok=True)
    (base / "config.json").write_text(json.dumps(config, indent=2))
    (base / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": s["image"], "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": s["image"]}))
    root = _modules(config, seed)
    tensors = {k: v.contiguous() for k, v in root.state_dict().items()}
    tensors.update(_head(config, s, seed + 1))  # the base's own projector (the runs bring theirs)
    tensors["embed_out.weight"] = torch.randn(config["vocab_size"], s["hidden"])  # the VLM's LM head: unused
    safetensors.torch.save_file(tensors, str(base / "model.safetensors"))
    targets = linear_names(root)
    runs = {}
    for i, task in enumerate(tasks):
        run = directory / task
        ckpt = run / "checkpoint-10"
        ckpt.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps({
            **config, "_name_or_path": str(base), "action_head_type": "droid_diffusion",
            "action_dim": s["action_dim"], "state_dim": s["state_dim"], "chunk_size": s["chunk"],
            "concat": "token_cat", "mm_use_im_start_end": False, "mm_use_im_patch_token": False}, indent=2))
        rng = np.random.default_rng(seed + 10 + i)
        low = rng.uniform(-2, -0.5, s["action_dim"]).astype(np.float32)
        stats = {"action_min": low, "action_max": low + rng.uniform(1, 3, s["action_dim"]).astype(np.float32),
                 "action_mean": np.zeros(s["action_dim"], np.float32), "action_std": np.ones(s["action_dim"], np.float32),
                 "qpos_mean": rng.normal(size=s["state_dim"]).astype(np.float32),
                 "qpos_std": rng.uniform(0.5, 2, s["state_dim"]).astype(np.float32)}
        with (run / "dataset_stats.pkl").open("wb") as f:
            pickle.dump(stats, f)
        (ckpt / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora_r, "lora_alpha": lora_alpha,
            "lora_dropout": 0.05, "bias": "none", "target_modules": targets, "fan_in_fan_out": False,
            "inference_mode": True, "base_model_name_or_path": str(base)}))
        g = torch.Generator().manual_seed(seed + 100 + i)
        lora = {}
        modules = dict(root.named_modules())
        for name in targets:
            layer = modules[name]
            lora[f"base_model.model.{name}.lora_A.weight"] = torch.randn(lora_r, layer.in_features, generator=g) * 0.2
            lora[f"base_model.model.{name}.lora_B.weight"] = torch.randn(layer.out_features, lora_r, generator=g) * 0.2
        safetensors.torch.save_file(lora, str(ckpt / "adapter_model.safetensors"))
        non_lora = {f"base_model.model.{k}": v.clone() for k, v in root.state_dict().items()}
        non_lora.update({f"base_model.model.{k}": v for k, v in _head(config, s, seed + 20 + i).items()})
        torch.save(non_lora, ckpt / "non_lora_trainables.bin")
        for name in ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
            (ckpt / name).write_bytes((base / name).read_bytes())
        runs[task] = run
    return runs
