"""The original TinyVLA's save format and inference path, on the libraries it pins: the independent
reference for pushcut's ``tinyvla`` original variant (tests/plugins/policies/test_tinyvla_reference.py).
Run it with the venv tests/reference/make_tinyvla_env.sh builds (torch CPU, transformers 4.37.2,
peft 0.4.0, diffusers 0.11.1). It never imports pushcut.

    python tinyvla_reference.py make OUT_DIR            # a tiny random model, saved as the original saves it
    python tinyvla_reference.py run INPUTS.npz OUT.npz  # the original eval's inference on fixed inputs

TinyVLA itself (github.com/liyaxuanliyaxuan/TinyVLA) is not a package and cannot be fetched where the
tests run, so this file re-states the original modules the inference path goes through, following the
original's structure and names, on top of the original's libraries: transformers' CLIPVisionTransformer
and GPTNeoXModel/GPTNeoXPreTrainedModel, peft's LoRA (get_peft_model, PeftModel.from_pretrained,
merge_and_unload), diffusers' DDIMScheduler, transformers' CLIPImageProcessor and tokenizer. Re-stated:
LlavaPythiaConfig, CLIPVisionTower (layer select + patch select), the mm_projector builder,
LlavaPythiaForCausalLM's multimodal input splicing (image tokens at the ``<image>`` position of the
``pythia`` conversation prompt, two views token_cat), Diffusion Policy's ConditionalUnet1D (the
original's droid_unet_diffusion.py), forward_diffusion_head's inference loop, load_pretrained_model's
LoRA loading, eval_real_franka.py's image and state processing, train_tinyvla.py's saving.

Where the original does not run as published, the minimum is patched (each listed in the test's
docstring): float32 on CPU instead of float16 on CUDA (``.cuda()`` dropped, no torch_dtype=float16);
the bfloat16 step embedding is cast to the next Linear's dtype (the original's Linear would refuse
bfloat16 input outside a bf16 model); torchvision's Resize is stated as the call it makes
(``interpolate(bilinear, antialias=True, align_corners=False)``); the eval's post_process, undefined
for droid_diffusion, is the inverse of the training's min/max normalisation; the test model's U-Net
widths are passed to ConditionalUnet1D's own constructor arguments (the original passes none and gets
256 / [256, 512, 1024] / kernel 5).
"""

from __future__ import annotations

import json
import math
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPPreTrainedModel,
    GPTNeoXConfig,
    GPTNeoXModel,
    GPTNeoXPreTrainedModel,
    GPTNeoXTokenizerFast,
    PretrainedConfig,
)
from transformers.models.clip.modeling_clip import CLIPVisionTransformer
from transformers.utils import logging as transformers_logging

IMAGE_TOKEN_INDEX = -200
transformers_logging.set_verbosity_error()
TEST_UNET = dict(diffusion_step_embed_dim=16, down_dims=[16, 32], kernel_size=3)
"""The test model's U-Net widths (the original's defaults are 256, [256, 512, 1024], 5)."""


# --------------------------------------------------------------------------- configs (configuration_llava_pythia.py)


class LlavaPythiaVisionConfig(PretrainedConfig):
    model_type = "llava_pythia_clip_vision_model"

    def __init__(self, hidden_size=768, intermediate_size=3072, projection_dim=512, num_hidden_layers=12,
                 num_attention_heads=12, num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu",
                 layer_norm_eps=1e-5, attention_dropout=0.0, initializer_range=0.02, initializer_factor=1.0,
                 mm_vision_select_feature="patch", mm_vision_select_layer=-2, vision_model_name_or_path="clip",
                 concat="None", **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.intermediate_size, self.projection_dim = hidden_size, intermediate_size, projection_dim
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_channels, self.patch_size, self.image_size = num_channels, patch_size, image_size
        self.initializer_range, self.initializer_factor = initializer_range, initializer_factor
        self.attention_dropout, self.layer_norm_eps, self.hidden_act = attention_dropout, layer_norm_eps, hidden_act
        self.mm_vision_select_feature, self.mm_vision_select_layer = mm_vision_select_feature, mm_vision_select_layer
        self.vision_model_name_or_path, self.concat = vision_model_name_or_path, concat


class ProjectorConfig(PretrainedConfig):
    model_type = "llava_pythia_projector"

    def __init__(self, mm_projector_type="linear", mm_hidden_size=768, hidden_size=2560, **kwargs):
        self.mm_projector_type, self.mm_hidden_size, self.hidden_size = mm_projector_type, mm_hidden_size, hidden_size
        super().__init__(**kwargs)


class LlavaPythiaConfig(GPTNeoXConfig):
    model_type = "llava_pythia"

    def __init__(self, vision_config=None, **kwargs):
        self.vision_config = vision_config if vision_config is not None else {
            "vision_tower": LlavaPythiaVisionConfig().to_dict(), "mm_projector": ProjectorConfig().to_dict()}
        self.concat = "None"
        super().__init__(**kwargs)


# --------------------------------------------------------------------------- vision tower, projector


class CLIPVisionTower(CLIPPreTrainedModel):
    config_class = LlavaPythiaVisionConfig

    def __init__(self, config):
        super().__init__(config)
        self.vision_model = CLIPVisionTransformer(config)
        self.post_init()

    def feature_select(self, outs):
        features = outs.hidden_states[self.config.mm_vision_select_layer]
        if self.config.mm_vision_select_feature == "patch":
            return features[:, 1:]
        return features

    def forward(self, images):
        dtype = next(self.vision_model.parameters()).dtype
        outs = self.vision_model(images.to(dtype=dtype), output_hidden_states=True)
        return self.feature_select(outs).to(images.dtype)


def build_vision_projector(config):
    kind = getattr(config, "mm_projector_type", "linear")
    if kind == "linear":
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    match = re.match(r"^mlp(\d+)x_gelu$", kind)
    if match:
        modules = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
        for _ in range(1, int(match.group(1))):
            modules += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
        return nn.Sequential(*modules)
    raise ValueError(kind)


# --------------------------------------------------------------------------- Diffusion Policy U-Net (droid_unet_diffusion.py)


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim, dtype):
        super().__init__()
        self.dim, self.dtype = dim, dtype

    def forward(self, x):
        half_dim = self.dim // 2
        emb = math.log(10000) / (half_dim - 1)
        emb = torch.exp(torch.arange(half_dim, device=x.device, dtype=self.dtype) * -emb)
        emb = x[:, None] * emb[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


class Downsample1d(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x):
        return self.conv(x)


class Upsample1d(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x):
        return self.conv(x)


class Conv1dBlock(nn.Module):
    def __init__(self, inp_channels, out_channels, kernel_size, n_groups=8):
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(inp_channels, out_channels, kernel_size, padding=kernel_size // 2),
                                   nn.GroupNorm(n_groups, out_channels), nn.Mish())

    def forward(self, x):
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    def __init__(self, in_channels, out_channels, cond_dim, kernel_size=3, n_groups=8):
        super().__init__()
        self.blocks = nn.ModuleList([Conv1dBlock(in_channels, out_channels, kernel_size, n_groups=n_groups),
                                     Conv1dBlock(out_channels, out_channels, kernel_size, n_groups=n_groups)])
        self.out_channels = out_channels
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, out_channels * 2), nn.Unflatten(-1, (-1, 1)))
        self.residual_conv = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x, cond):
        out = self.blocks[0](x)
        embed = self.cond_encoder(cond).reshape(cond.shape[0], 2, self.out_channels, 1)
        out = embed[:, 0, ...] * out + embed[:, 1, ...]
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    def __init__(self, input_dim, global_cond_dim, diffusion_step_embed_dim=256, down_dims=(256, 512, 1024),
                 kernel_size=5, n_groups=8, state_dim=7):
        super().__init__()
        all_dims = [input_dim] + list(down_dims)
        start_dim = down_dims[0]
        self.global_1d_pool = nn.AdaptiveAvgPool1d(1)
        self.norm_after_pool = nn.LayerNorm(global_cond_dim)
        self.combine = nn.Linear(global_cond_dim + state_dim, global_cond_dim)
        dsed = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(SinusoidalPosEmb(dsed, torch.bfloat16), nn.Linear(dsed, dsed * 4),
                                                    nn.Mish(), nn.Linear(dsed * 4, dsed))
        cond_dim = dsed + global_cond_dim
        in_out = list(zip(all_dims[:-1], all_dims[1:]))
        mid_dim = all_dims[-1]
        self.mid_modules = nn.ModuleList([
            ConditionalResidualBlock1D(mid_dim, mid_dim, cond_dim=cond_dim, kernel_size=kernel_size, n_groups=n_groups),
            ConditionalResidualBlock1D(mid_dim, mid_dim, cond_dim=cond_dim, kernel_size=kernel_size, n_groups=n_groups)])
        self.down_modules = nn.ModuleList([])
        for ind, (dim_in, dim_out) in enumerate(in_out):
            is_last = ind >= (len(in_out) - 1)
            self.down_modules.append(nn.ModuleList([
                ConditionalResidualBlock1D(dim_in, dim_out, cond_dim=cond_dim, kernel_size=kernel_size, n_groups=n_groups),
                ConditionalResidualBlock1D(dim_out, dim_out, cond_dim=cond_dim, kernel_size=kernel_size, n_groups=n_groups),
                Downsample1d(dim_out) if not is_last else nn.Identity()]))
        self.up_modules = nn.ModuleList([])
        for ind, (dim_in, dim_out) in enumerate(reversed(in_out[1:])):
            is_last = ind >= (len(in_out) - 1)
            self.up_modules.append(nn.ModuleList([
                ConditionalResidualBlock1D(dim_out * 2, dim_in, cond_dim=cond_dim, kernel_size=kernel_size,
                                           n_groups=n_groups),
                ConditionalResidualBlock1D(dim_in, dim_in, cond_dim=cond_dim, kernel_size=kernel_size, n_groups=n_groups),
                Upsample1d(dim_in) if not is_last else nn.Identity()]))
        self.final_conv = nn.Sequential(Conv1dBlock(start_dim, start_dim, kernel_size=kernel_size),
                                        nn.Conv1d(start_dim, input_dim, 1))

    def forward(self, sample, timestep, global_cond=None, states=None):
        sample = sample.moveaxis(-1, -2)
        global_cond = self.global_1d_pool(global_cond.permute(0, 2, 1)).squeeze(-1)
        global_cond = self.norm_after_pool(global_cond)
        global_cond = torch.cat([global_cond, states], dim=-1) if states is not None else global_cond
        global_cond = self.combine(global_cond)
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], dtype=torch.long, device=sample.device)
        elif len(timesteps.shape) == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        # PATCH: the bfloat16 embedding is cast to the Linear's dtype (the original feeds it as is).
        embed = self.diffusion_step_encoder[0](timesteps)
        global_feature = self.diffusion_step_encoder[1:](embed.to(self.diffusion_step_encoder[1].weight.dtype))
        global_feature = torch.cat([global_feature, global_cond], axis=-1)
        x = sample
        h = []
        for resnet, resnet2, downsample in self.down_modules:
            x = resnet(x, global_feature)
            x = resnet2(x, global_feature)
            h.append(x)
            x = downsample(x)
        for mid_module in self.mid_modules:
            x = mid_module(x, global_feature)
        for resnet, resnet2, upsample in self.up_modules:
            x = torch.cat((x, h.pop()), dim=1)
            x = resnet(x, global_feature)
            x = resnet2(x, global_feature)
            x = upsample(x)
        x = self.final_conv(x)
        return x.moveaxis(-1, -2)


# --------------------------------------------------------------------------- the VLA (llava_pythia.py, llava_arch.py)


class LLavaPythiaModel(GPTNeoXModel):
    config_class = LlavaPythiaConfig

    def __init__(self, config):
        super().__init__(config)
        self.vision_tower = CLIPVisionTower(LlavaPythiaVisionConfig(**config.vision_config["vision_tower"]))
        self.mm_projector = build_vision_projector(ProjectorConfig(**config.vision_config["mm_projector"]))


class LlavaPythiaForCausalLM(GPTNeoXPreTrainedModel):
    config_class = LlavaPythiaConfig

    def __init__(self, config):
        super(GPTNeoXPreTrainedModel, self).__init__(config)
        self.gpt_neox = LLavaPythiaModel(config)
        self.head_type = getattr(config, "action_head_type", None)
        if self.head_type == "droid_diffusion":
            self.proj_to_action = nn.Identity()
            self.noise_scheduler = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                                                 clip_sample=True, set_alpha_to_one=True, steps_offset=0,
                                                 prediction_type="epsilon")
            self.embed_out = ConditionalUnet1D(input_dim=config.action_dim, global_cond_dim=config.hidden_size,
                                               state_dim=config.state_dim, **TEST_UNET)
            self.num_queries = config.chunk_size
            self.num_inference_timesteps = 10
        else:  # the base VLM: a language-model head
            self.embed_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self):
        return self.gpt_neox

    def encode_images(self, images):
        return self.gpt_neox.mm_projector(self.gpt_neox.vision_tower(images))

    def get_output_embeddings(self):
        return self.embed_out

    def multimodal_embeds(self, input_ids, images, images_r):
        """prepare_inputs_labels_for_multimodal for one row without labels: token_cat of both views
        spliced in at the image token."""
        features = torch.cat([self.encode_images(images), self.encode_images(images_r)], dim=1)
        ids = input_ids[0]
        at = int(torch.where(ids == IMAGE_TOKEN_INDEX)[0][0])
        embed = self.gpt_neox.embed_in
        return torch.cat([embed(ids[:at]), features[0], embed(ids[at + 1:])], dim=0)[None]

    def infer(self, input_ids, attention_mask, images, images_r, states, record):
        """forward(eval=True) → forward_diffusion_head's inference branch, recording every step."""
        inputs_embeds = self.multimodal_embeds(input_ids, images, images_r)
        pad = torch.ones((1, inputs_embeds.shape[1] - input_ids.shape[1]), dtype=attention_mask.dtype)
        attention_mask = torch.cat([pad, attention_mask], dim=1)
        hidden_states = self.gpt_neox(inputs_embeds=inputs_embeds, attention_mask=attention_mask)[0]
        noisy_action = torch.randn((1, self.num_queries, self.config.action_dim))  # PATCH: no .cuda()
        naction = noisy_action.to(dtype=hidden_states.dtype)
        record["chain"].append(naction[0].clone())
        self.noise_scheduler.set_timesteps(self.num_inference_timesteps)
        for k in self.noise_scheduler.timesteps:
            noise_pred = self.embed_out(naction, k, global_cond=hidden_states, states=states)
            record["noise_preds"].append(noise_pred[0].clone())
            naction = self.noise_scheduler.step(model_output=noise_pred, timestep=k, sample=naction).prev_sample
            record["chain"].append(naction[0].clone())
        return naction


AutoConfig.register("llava_pythia", LlavaPythiaConfig)
AutoModelForCausalLM.register(LlavaPythiaConfig, LlavaPythiaForCausalLM)


# --------------------------------------------------------------------------- training side: writing the files


def find_all_linear_names(model):
    """llava_pythia_utils.find_all_linear_names with lora_module 'vit llm'."""
    keywords = ["vision_resampler", "mm_projector", "embed_out", "proj_to_action"]
    names = set()
    for name, module in model.named_modules():
        if any(k in name for k in keywords):
            continue
        if isinstance(module, nn.Linear):
            names.add(name)
    names.discard("lm_head")
    return sorted(names)


def make_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    corpus = ["A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions. USER: ASSISTANT:",
              "put the bowl on the plate", "open the top drawer", "pick up the black bowl", "turn on the stove"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(corpus * 4, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = GPTNeoXTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                     unk_token="<|endoftext|>", pad_token="<|padding|>", padding_side="right",
                                     model_max_length=2048)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def stress(module: nn.Module, generator: torch.Generator, scale: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def make(out: Path) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = out / "base"
    tokenizer = make_tokenizer(base)
    vision = LlavaPythiaVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                     image_size=28, patch_size=14, mm_vision_select_layer=-2,
                                     mm_vision_select_feature="patch", vision_model_name_or_path="openai/clip-vit")
    projector = ProjectorConfig(mm_projector_type="mlp2x_gelu", mm_hidden_size=32, hidden_size=32)
    config = LlavaPythiaConfig(
        vision_config={"vision_tower": vision.to_dict(), "mm_projector": projector.to_dict()},
        vocab_size=len(tokenizer) + 24, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, rotary_pct=0.25, max_position_embeddings=256, use_parallel_residual=True,
        tie_word_embeddings=False, architectures=["LlavaPythiaForCausalLM"])
    vlm = LlavaPythiaForCausalLM(config)
    stress(vlm, torch.Generator().manual_seed(1), 0.05)
    vlm.save_pretrained(str(base))  # config.json + model.safetensors, as the LLaVA-Pythia VLM is published
    CLIPImageProcessor(size=28, crop_size=28, resample=3, image_mean=[0.48145466, 0.4578275, 0.40821073],
                       image_std=[0.26862954, 0.26130258, 0.27577711]).save_pretrained(str(base))
    tasks = {"bowl": dict(state_dim=5, seed=11, safe=True), "drawer": dict(state_dim=5, seed=12, safe=False)}
    for task, spec in tasks.items():
        run = out / f"llava_pythia_lora_{task}"  # the name the original's loader needs (see load_pretrained_model)
        checkpoint = run / "checkpoint-100"
        # parse_pythia + load_llava_pythia: the base config plus the action arguments
        cfg = LlavaPythiaConfig.from_pretrained(str(base))
        for key, value in dict(action_head_type="droid_diffusion", action_dim=7, state_dim=spec["state_dim"],
                               chunk_size=8).items():
            setattr(cfg, key, value)
        cfg.concat = "token_cat"
        model = LlavaPythiaForCausalLM.from_pretrained(str(base), config=cfg, _fast_init=False)  # as load_llava_pythia
        g = torch.Generator().manual_seed(spec["seed"])
        # "Training": the head and projector (tune_mm_mlp_adapter) move; the LoRA gets a non-zero B.
        stress(model.embed_out, g, 0.1)
        stress(model.gpt_neox.mm_projector, g, 0.1)
        lora = LoraConfig(r=8, lora_alpha=32, target_modules=find_all_linear_names(model), lora_dropout=0.05,
                          bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        model.config.mm_use_im_start_end = False
        model.config.mm_use_im_patch_token = False
        # train_bc's saving (with train.sh's process_ckpts layout: the files in checkpoint-N)
        state_dict = {k: t.detach().cpu().clone() for k, t in model.named_parameters() if "lora_" in k}
        non_lora = {k: t.detach().cpu().clone() for k, t in model.named_parameters() if "lora_" not in k}
        run.mkdir(parents=True)
        model.config.save_pretrained(str(run))
        model.save_pretrained(str(checkpoint), state_dict=state_dict, safe_serialization=spec["safe"])
        torch.save(non_lora, checkpoint / "non_lora_trainables.bin")
        tokenizer.save_pretrained(str(checkpoint))
        (checkpoint / "preprocessor_config.json").write_text((base / "preprocessor_config.json").read_text())
        rng = np.random.default_rng(spec["seed"])
        low = rng.uniform(-1, -0.2, 7).astype(np.float32)
        stats = {"action_mean": np.zeros(7, np.float32), "action_std": np.ones(7, np.float32),
                 "action_min": low, "action_max": low + rng.uniform(0.5, 2, 7).astype(np.float32),
                 "qpos_mean": rng.normal(size=spec["state_dim"]).astype(np.float32),
                 "qpos_std": rng.uniform(0.5, 2, spec["state_dim"]).astype(np.float32), "example_qpos": None}
        with (run / "dataset_stats.pkl").open("wb") as f:
            pickle.dump(stats, f)
    # The head as LlavaPythiaForCausalLM really builds it (no width arguments): names and shapes only.
    default = ConditionalUnet1D(input_dim=7, global_cond_dim=1024, state_dim=5)
    (out / "default_unet_shapes.json").write_text(json.dumps({k: list(v.shape) for k, v in default.state_dict().items()}))
    print(json.dumps({"base": str(base), "runs": {t: str(out / f"llava_pythia_lora_{t}") for t in tasks},
                      "default_unet_shapes": str(out / "default_unet_shapes.json")}))


# --------------------------------------------------------------------------- eval side


def load_pretrained_model(model_path: str, model_base: str):
    """builder.load_pretrained_model's LoRA branch (float32 on CPU)."""
    from peft import PeftModel

    parts = model_path.strip("/").split("/")  # get_model_name_from_path
    model_name = parts[-2] + "_" + parts[-1] if parts[-1].startswith("checkpoint-") else parts[-1]
    if "pythia" not in model_name.lower() or "lora" not in model_name.lower():
        raise ValueError(f"model name {model_name!r}: the original loader takes its LoRA branch only for names "
                         "holding 'pythia' and 'lora'")
    root_path = "/".join(model_path.split("/")[:-1])
    lora_cfg_pretrained = AutoConfig.from_pretrained(root_path)
    tokenizer = AutoTokenizer.from_pretrained(model_base, use_fast=True)
    model = LlavaPythiaForCausalLM.from_pretrained(model_base, low_cpu_mem_usage=True, config=lora_cfg_pretrained,
                                                   device_map="cpu")  # the original: device_map="cuda"
    non_lora = torch.load(Path(model_path) / "non_lora_trainables.bin", map_location="cpu")
    non_lora = {(k[11:] if k.startswith("base_model.") else k): v for k, v in non_lora.items()}
    if any(k.startswith("model.gpt_neox.") for k in non_lora):
        non_lora = {(k[6:] if k.startswith("model.") else k): v for k, v in non_lora.items()}
    non_lora = {k: v for k, v in non_lora.items() if "lora" not in k}
    result = model.load_state_dict(non_lora, strict=False)
    # not in the original: a non_lora file that misses the head would silently keep a random one here
    assert not [k for k in result.missing_keys if k.startswith(("embed_out", "gpt_neox.mm_projector"))], result
    model = PeftModel.from_pretrained(model, model_path)
    model = model.merge_and_unload()
    image_processor = CLIPImageProcessor.from_pretrained(model_path)
    if getattr(model.config, "mm_use_im_patch_token", True):
        tokenizer.add_tokens(["<im_patch>"], special_tokens=True)
    return tokenizer, model.eval(), image_processor


def tokenizer_image_token(prompt, tokenizer):
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    input_ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(chunks[0][0])
    separated = [e for pair in zip(chunks, [[IMAGE_TOKEN_INDEX] * (offset + 1)] * len(chunks)) for e in pair][:-1]
    for x in separated:
        input_ids.extend(x[offset:])
    return torch.tensor(input_ids, dtype=torch.long)


def expand2square(imgs, background_color):
    batch, channels, height, width = imgs.shape
    max_dim = max(height, width)
    expanded = np.full((batch, max_dim, max_dim, channels), background_color, dtype=np.float32)
    if height == width:
        expanded = imgs.permute(0, 2, 3, 1).cpu().numpy()
    elif height > width:
        offset = (max_dim - width) // 2
        expanded[:, :height, offset:offset + width, :] = imgs.permute(0, 2, 3, 1).cpu().numpy()
    else:
        offset = (max_dim - height) // 2
        expanded[:, offset:offset + height, :width, :] = imgs.permute(0, 2, 3, 1).cpu().numpy()
    return torch.tensor(expanded).to(dtype=imgs.dtype)


def run(inputs: Path, out: Path) -> None:
    data = np.load(inputs, allow_pickle=False)
    spec = json.loads(str(data["spec"]))
    results: dict[str, list] = {k: [] for k in ("input_ids", "pixels", "pixels_r", "cond", "noise_pred0", "chain",
                                                "actions")}
    loaded = {}
    for i, row in enumerate(spec["rows"]):
        key = row["checkpoint"]
        if key not in loaded:
            loaded[key] = load_pretrained_model(key, spec["model_base"])
        tokenizer, policy, image_processor = loaded[key]
        with open(Path(key).parent / "dataset_stats.pkl", "rb") as f:
            stats = pickle.load(f)
        # eval_bc: camera images (views, H, W, 3) uint8 -> (views, 3, H, W) / 255, 95 % centre crop, Resize back
        traj = np.stack([data["images"][i], data["wrist_images"][i]]).transpose(0, 3, 1, 2)
        curr_image = torch.from_numpy(traj / 255.0).float().unsqueeze(0)
        original_size = curr_image.shape[-2:]
        ratio = 0.95
        curr_image = curr_image[..., int(original_size[0] * (1 - ratio) / 2): int(original_size[0] * (1 + ratio) / 2),
                                int(original_size[1] * (1 - ratio) / 2): int(original_size[1] * (1 + ratio) / 2)]
        curr_image = curr_image.squeeze(0)
        # PATCH: torchvision.transforms.Resize(original_size, antialias=True) on a float tensor is this call
        curr_image = F.interpolate(curr_image, size=tuple(original_size), mode="bilinear", align_corners=False,
                                   antialias=True)
        curr_image = curr_image.unsqueeze(0)
        # pre_process of the robot state with the run's qpos mean / std
        state = (data["states"][i] - stats["qpos_mean"]) / stats["qpos_std"]
        robo_state = torch.from_numpy(np.asarray(state, dtype=np.float32))[None]
        # process_batch_to_llava
        image, image_r = torch.chunk(curr_image.squeeze(0), 2, dim=0)
        mean = tuple(x for x in image_processor.image_mean)
        image_tensor = image_processor.preprocess(expand2square(image, mean), return_tensors="pt", do_normalize=True,
                                                  do_rescale=False, do_center_crop=False)["pixel_values"]
        image_tensor_r = image_processor.preprocess(expand2square(image_r, mean), return_tensors="pt",
                                                    do_normalize=True, do_rescale=False,
                                                    do_center_crop=False)["pixel_values"]
        inp = "<image>" + "\n" + row["instruction"]
        system = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")
        # conv_templates["pythia"] (SeparatorStyle.TWO, sep " ", sep2 "<|endoftext|>"): USER turn, open ASSISTANT turn
        prompt = system + " " + "USER" + ": " + inp + " " + "ASSISTANT" + ":"
        prompt += " <|endoftext|>"
        input_ids = tokenizer_image_token(prompt, tokenizer).unsqueeze(0)
        attn_mask = input_ids.ne(tokenizer.pad_token_id)
        record = {"chain": [], "noise_preds": [], "cond": []}
        hook = policy.embed_out.combine.register_forward_hook(lambda m, a, o: record["cond"].append(o[0].clone()))
        torch.manual_seed(spec["seed"])
        with torch.inference_mode():
            naction = policy.infer(input_ids, attn_mask, image_tensor, image_tensor_r, robo_state, record)
        hook.remove()
        raw = naction.squeeze(0).numpy()
        actions = ((raw + 1) / 2) * (stats["action_max"] - stats["action_min"]) + stats["action_min"]  # PATCH (see doc)
        results["input_ids"].append(np.asarray(input_ids[0]))
        results["pixels"].append(image_tensor[0].numpy())
        results["pixels_r"].append(image_tensor_r[0].numpy())
        results["cond"].append(record["cond"][0].numpy())
        assert all(torch.equal(c, record["cond"][0]) for c in record["cond"])  # the same conditioning every step
        results["noise_pred0"].append(record["noise_preds"][0].numpy())
        results["chain"].append(torch.stack(record["chain"]).numpy())
        results["actions"].append(np.asarray(actions, dtype=np.float32))
    # input_ids of all rows, each prefixed with its length
    ids = np.concatenate([np.r_[len(x), x] for x in results["input_ids"]]).astype(np.int64)
    np.savez(out, input_ids=ids, **{k: np.stack(v) for k, v in results.items() if k != "input_ids"})


if __name__ == "__main__":
    torch.set_num_threads(1)
    try:
        if sys.argv[1] == "make":
            make(Path(sys.argv[2]))
        elif sys.argv[1] == "run":
            run(Path(sys.argv[2]), Path(sys.argv[3]))
        else:
            raise SystemExit(f"usage: {sys.argv[0]} make OUT_DIR | run INPUTS.npz OUT.npz")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"tinyvla reference: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
