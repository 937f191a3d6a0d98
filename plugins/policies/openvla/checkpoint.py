"""Reading and writing OpenVLA checkpoints in their original Hugging Face "prismatic" layout.

The published checkpoints (openvla/openvla-7b, moojink/openvla-7b-oft-*, SimpleVLA-RL's SFT and
RL models) were saved from a model whose vision towers are timm ViTs:

* ``vision_backbone.featurizer.*`` — timm ``vit_large_patch14_reg4_dinov2``: ``cls_token``,
  ``reg_token`` (4 registers), ``pos_embed`` for the patches only (timm's ``no_embed_class``),
  fused ``attn.qkv``, layer scale ``ls1``/``ls2`` (``scale_factor``, the name OpenVLA's HF export
  patches timm's ``gamma`` to; ``gamma`` is accepted too), final ``norm``;
* ``vision_backbone.fused_featurizer.*`` — timm ``vit_so400m_patch14_siglip_224``: no prefix
  tokens, fused ``attn.qkv``, final ``norm``, and an ``attn_pool.*`` MAP head that OpenVLA never uses;
* ``projector.fc1..fc3`` (fc3 only for the fused backbone), optional ``proprio_projector.fc1/fc2``
  (SimpleVLA-RL saves it in the model; OpenVLA-OFT ships it as ``proprio_projector--*checkpoint.pt``);
* ``language_model.*`` — a Llama-2 ``LlamaForCausalLM`` state dict.

Here the towers are transformers' ``Dinov2WithRegistersModel`` and ``SiglipVisionModel``. The
conversion only splits and concatenates tensors (bit-exact both ways). What the transformers modules
need but the checkpoint lacks is synthesised so the computation is unchanged: a zero position slot
for DINOv2's cls token (folded back into ``cls_token`` on save) and DINOv2's unused ``mask_token``
(dropped on save). Keys with no counterpart (SigLIP's ``attn_pool.*``) are carried along unchanged,
so writing a loaded checkpoint back gives the same tensors, names, dtypes and shard files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from pushcut.errors import CheckpointError, short_list

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PROPRIO_FILE_PATTERN = "proprio_projector--*checkpoint.pt"

VISION_PREFIX = "vision_backbone."
TOWER_NAMES = ("featurizer", "fused_featurizer")
PROJECTOR_PREFIX = "projector."
PROPRIO_PREFIX = "proprio_projector."
LLM_PREFIX = "language_model."

# Attention heads per timm vision model: a head count cannot be read from tensor shapes, and a
# wrong guess computes garbage without any error, so an id not listed here must come with
# policy.vision_heads (see tower_spec).
TIMM_VISION_HEADS = {
    "vit_large_patch14_reg4_dinov2": 16,
    "vit_large_patch14_dinov2": 16,
    "vit_so400m_patch14_siglip_224": 16,
    "vit_so400m_patch14_siglip_384": 16,
}
# timm activation names (config.json ``timm_override_act_layers``) → transformers ``hidden_act``.
# None means timm's default for these ViTs, ``nn.GELU()``: the exact erf GELU, for SigLIP too.
TIMM_ACTIVATIONS = {None: "gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}


# --------------------------------------------------------------------------- raw files


@dataclass
class RawCheckpoint:
    """A checkpoint directory as stored: config, tensors under their original names and dtypes."""

    directory: Path
    config: dict
    tensors: dict[str, torch.Tensor]
    files: dict[str, str]
    """Original key → the safetensors file that holds it (shards are written back the same way)."""
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    """Safetensors header metadata per file (e.g. {"format": "pt"})."""
    proprio_file: str | None = None
    """Name of a separate OpenVLA-OFT proprio-projector file, when the projector came from one."""
    proprio_file_keys: dict[str, str] = field(default_factory=dict)
    """Key in that file → key under ``proprio_projector.`` (the file may prefix ``module.``)."""
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    """Original key → stored dtype (kept after ``tensors`` is released, so saving restores it)."""


def read_config(directory: Path) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        found = sorted(p.name for p in Path(directory).iterdir())[:10] if Path(directory).is_dir() else []
        raise CheckpointError(
            f"{directory} is not an OpenVLA checkpoint: {CONFIG_FILE} is missing "
            f"(found {found or 'nothing'}); point policy.checkpoint at the directory with config.json and "
            "model*.safetensors"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return config


def read_checkpoint(directory: str | Path) -> RawCheckpoint:
    """Read config.json, every safetensors shard and an optional separate proprio-projector file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"OpenVLA checkpoint directory {str(directory)!r} does not exist")
    config = read_config(directory)
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text()).get("weight_map", {})
        shard_names = sorted(set(weight_map.values()))
    elif (directory / WEIGHTS_FILE).is_file():
        shard_names = [WEIGHTS_FILE]
    else:
        found = sorted(p.name for p in directory.iterdir())[:10]
        raise CheckpointError(
            f"{directory} has no weights: expected {WEIGHTS_FILE} or {INDEX_FILE} with its shards, found {found}"
        )
    tensors: dict[str, torch.Tensor] = {}
    files: dict[str, str] = {}
    metadata: dict[str, dict[str, str]] = {}
    for name in shard_names:
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{INDEX_FILE} in {directory} names {name}, which is missing")
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                metadata[name] = dict(f.metadata() or {})
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
                    files[key] = name
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
    raw = RawCheckpoint(directory=directory, config=config, tensors=tensors, files=files, metadata=metadata)
    if not any(k.startswith(PROPRIO_PREFIX) for k in tensors):
        _read_proprio_file(raw)
    raw.dtypes = {k: t.dtype for k, t in raw.tensors.items()}
    return raw


def _read_proprio_file(raw: RawCheckpoint) -> None:
    candidates = sorted(raw.directory.glob(PROPRIO_FILE_PATTERN))
    if not candidates:
        return
    path = candidates[-1]  # the newest step when several are present (names end in the step number)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read proprio projector {path}: {exc}") from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict")
    raw.proprio_file = path.name
    for key, value in state.items():
        local = key[len("module."):] if key.startswith("module.") else key
        raw.tensors[PROPRIO_PREFIX + local] = value
        raw.proprio_file_keys[key] = PROPRIO_PREFIX + local


def write_checkpoint(raw: RawCheckpoint, directory: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write ``tensors`` (original names) into ``directory`` laid out as ``raw`` was: the same shard
    files and metadata, config.json, and every non-weight file of the source directory (tokenizer,
    preprocessor config, dataset statistics) copied unchanged."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    source = raw.directory.resolve()
    weight_names = set(raw.files.values()) | {INDEX_FILE, CONFIG_FILE}
    if source != directory.resolve():
        for path in sorted(source.iterdir()):
            if path.is_file() and path.name not in weight_names and path.name != raw.proprio_file \
                    and not path.name.startswith("pushcut_"):
                (directory / path.name).write_bytes(path.read_bytes())
    (directory / CONFIG_FILE).write_text(json.dumps(raw.config, indent=2) + "\n")

    proprio_keys = {v: k for k, v in raw.proprio_file_keys.items()}
    shards: dict[str, dict[str, torch.Tensor]] = {}
    proprio_state: dict[str, torch.Tensor] = {}
    default_file = sorted(set(raw.files.values()))[0] if raw.files else WEIGHTS_FILE
    for key, value in tensors.items():
        tensor = value.detach().cpu().contiguous()
        if key in proprio_keys:
            proprio_state[proprio_keys[key]] = tensor
        else:
            shards.setdefault(raw.files.get(key, default_file), {})[key] = tensor
    for name, shard in shards.items():
        safetensors.torch.save_file(shard, str(directory / name), metadata=raw.metadata.get(name) or {"format": "pt"})
    if len(shards) > 1 or (raw.directory / INDEX_FILE).is_file():
        total = sum(t.numel() * t.element_size() for shard in shards.values() for t in shard.values())
        index = {"metadata": {"total_size": total},
                 "weight_map": {k: name for name, shard in sorted(shards.items()) for k in sorted(shard)}}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    if proprio_state:
        torch.save(proprio_state, directory / raw.proprio_file)


# --------------------------------------------------------------------------- vision towers


@dataclass(frozen=True)
class TowerSpec:
    """Shape and flavour of one timm ViT tower, read from its tensors and the config."""

    kind: str
    """``dinov2`` (cls + register tokens, layer scale) or ``siglip`` (no prefix tokens, no layer scale)."""
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    patch_size: int
    image_size: int
    registers: int
    cls_pos_slot: bool
    """DINOv2 only: whether ``pos_embed`` has a slot for the cls token (else timm's no_embed_class)."""
    scale_name: str
    """DINOv2 only: ``scale_factor`` (OpenVLA's HF export) or ``gamma`` (plain timm)."""
    act: str = "gelu"
    """The MLP activation as a transformers ``hidden_act``: ``gelu`` (exact erf, timm's default for
    both towers) unless config.json's ``timm_override_act_layers`` names another."""

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patches in the tower's sequence (dropped from the features)."""
        return 1 + self.registers if self.kind == "dinov2" else 0


def _block_count(keys: list[str]) -> int:
    ids = {int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not ids:
        return 0
    if ids != set(range(max(ids) + 1)):
        raise CheckpointError(f"vision tower blocks are not numbered 0..{max(ids)}: found {sorted(ids)}")
    return max(ids) + 1


def vision_heads(timm_id: str, override: int | None, where: str) -> int:
    """Attention heads of the timm tower ``timm_id``: the known count, or ``override`` (from
    ``policy.vision_heads``) for an id not in :data:`TIMM_VISION_HEADS`. Never a guess."""
    base = timm_id.split(".")[0]
    known = TIMM_VISION_HEADS.get(base)
    if known is not None and override is not None and override != known:
        raise CheckpointError(
            f"{where}: timm model {timm_id!r} has {known} attention heads but policy.vision_heads gives {override}; "
            "leave policy.vision_heads unset for this tower"
        )
    if known is None and override is None:
        raise CheckpointError(
            f"{where}: unknown timm model id {timm_id!r}: its attention-head count cannot be read from the weights; "
            "give it with policy.vision_heads=[HEADS, ...] (one per tower, in timm_model_ids order); known ids: "
            f"{', '.join(sorted(TIMM_VISION_HEADS))}"
        )
    return known if known is not None else int(override)


def tower_activation(name: str | None, where: str) -> str:
    """transformers ``hidden_act`` for a timm activation override (None: timm's exact GELU)."""
    if name not in TIMM_ACTIVATIONS:
        raise CheckpointError(
            f"{where}: timm_override_act_layers entry {name!r} is not supported; supported: "
            f"{', '.join(str(k) for k in TIMM_ACTIVATIONS)}"
        )
    return TIMM_ACTIVATIONS[name]


def tower_spec(tensors: Mapping[str, torch.Tensor], timm_id: str, image_size: int, where: str,
               heads: int | None = None, act: str | None = None) -> TowerSpec:
    """The spec of a tower from its tensors (local timm keys), its timm id, the configured image size,
    an optional head count for an unknown id and config.json's activation override."""
    keys = sorted(tensors)
    for needed in ("patch_embed.proj.weight", "pos_embed"):
        if needed not in tensors:
            raise CheckpointError(f"{where}: missing key {needed!r}; found {keys[:8]}")
    conv = tensors["patch_embed.proj.weight"]
    hidden, patch = int(conv.shape[0]), int(conv.shape[-1])
    layers = _block_count(keys)
    if layers < 2:
        raise CheckpointError(f"{where}: needs at least 2 blocks (features come from the second-to-last), got {layers}")
    fc1 = tensors.get("blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise CheckpointError(f"{where}: missing key 'blocks.0.mlp.fc1.weight'")
    heads = vision_heads(timm_id, heads, where)
    if hidden % heads:
        raise CheckpointError(
            f"{where}: width {hidden} is not divisible by {heads} attention heads; the tower does not fit "
            f"timm model {timm_id!r} (check timm_model_ids, or policy.vision_heads for an unknown id)"
        )
    hidden_act = tower_activation(act, where)
    if image_size % patch:
        raise CheckpointError(f"{where}: image size {image_size} is not a multiple of the patch size {patch}")
    num_patches = (image_size // patch) ** 2
    positions = int(tensors["pos_embed"].shape[1])
    dino = "cls_token" in tensors
    if dino:
        if positions not in (num_patches, num_patches + 1):
            raise CheckpointError(
                f"{where}: pos_embed has {positions} positions, expected {num_patches} patches "
                f"({image_size}px / {patch}px patches){' or one more for the cls token'}"
            )
        registers = int(tensors["reg_token"].shape[1]) if "reg_token" in tensors else 0
        if registers and positions != num_patches:
            raise CheckpointError(f"{where}: register tokens with a cls position slot are not supported")
        scale = "gamma" if "blocks.0.ls1.gamma" in tensors else "scale_factor"
        return TowerSpec("dinov2", hidden, layers, heads, int(fc1.shape[0]), patch, image_size, registers,
                         positions == num_patches + 1, scale, hidden_act)
    if positions != num_patches:
        raise CheckpointError(
            f"{where}: pos_embed has {positions} positions but {image_size}px images with {patch}px patches "
            f"give {num_patches}; check image_sizes in config.json"
        )
    return TowerSpec("siglip", hidden, layers, heads, int(fc1.shape[0]), patch, image_size, 0, False, "", hidden_act)


def _block_map(spec: TowerSpec, i: int) -> dict[str, str]:
    """timm block key → HF key, for the keys that map one to one."""
    if spec.kind == "dinov2":
        p = f"encoder.layer.{i}."
        return {f"blocks.{i}.norm1.weight": p + "norm1.weight", f"blocks.{i}.norm1.bias": p + "norm1.bias",
                f"blocks.{i}.norm2.weight": p + "norm2.weight", f"blocks.{i}.norm2.bias": p + "norm2.bias",
                f"blocks.{i}.attn.proj.weight": p + "attention.o_proj.weight",
                f"blocks.{i}.attn.proj.bias": p + "attention.o_proj.bias",
                f"blocks.{i}.mlp.fc1.weight": p + "mlp.fc1.weight", f"blocks.{i}.mlp.fc1.bias": p + "mlp.fc1.bias",
                f"blocks.{i}.mlp.fc2.weight": p + "mlp.fc2.weight", f"blocks.{i}.mlp.fc2.bias": p + "mlp.fc2.bias",
                f"blocks.{i}.ls1.{spec.scale_name}": p + "layer_scale1.lambda1",
                f"blocks.{i}.ls2.{spec.scale_name}": p + "layer_scale2.lambda1"}
    p = f"encoder.layers.{i}."
    return {f"blocks.{i}.norm1.weight": p + "layer_norm1.weight", f"blocks.{i}.norm1.bias": p + "layer_norm1.bias",
            f"blocks.{i}.norm2.weight": p + "layer_norm2.weight", f"blocks.{i}.norm2.bias": p + "layer_norm2.bias",
            f"blocks.{i}.attn.proj.weight": p + "self_attn.out_proj.weight",
            f"blocks.{i}.attn.proj.bias": p + "self_attn.out_proj.bias",
            f"blocks.{i}.mlp.fc1.weight": p + "mlp.fc1.weight", f"blocks.{i}.mlp.fc1.bias": p + "mlp.fc1.bias",
            f"blocks.{i}.mlp.fc2.weight": p + "mlp.fc2.weight", f"blocks.{i}.mlp.fc2.bias": p + "mlp.fc2.bias"}


def _static_map(spec: TowerSpec) -> dict[str, str]:
    if spec.kind == "dinov2":
        m = {"patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
             "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
             "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
        if spec.registers:
            m["reg_token"] = "embeddings.register_tokens"
        return m
    return {"patch_embed.proj.weight": "embeddings.patch_embedding.weight",
            "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
            "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}


def _qkv_names(spec: TowerSpec, i: int) -> tuple[str, str, str]:
    p = f"encoder.layer.{i}.attention." if spec.kind == "dinov2" else f"encoder.layers.{i}.self_attn."
    return p + "q_proj", p + "k_proj", p + "v_proj"


def _one_to_one(spec: TowerSpec) -> list[tuple[str, str]]:
    """(timm key, transformers key) of every tensor that maps across unchanged."""
    pairs = list(_static_map(spec).items())
    for i in range(spec.layers):
        pairs.extend(_block_map(spec, i).items())
    return pairs


def expected_tower_keys(spec: TowerSpec) -> set[str]:
    """Every timm key a tower of this spec must have (``attn_pool.*`` is optional and carried along)."""
    keys = {timm_key for timm_key, _ in _one_to_one(spec)} | {"pos_embed"}
    if spec.kind == "dinov2":
        keys.add("cls_token")
    for i in range(spec.layers):
        keys |= {f"blocks.{i}.attn.qkv.weight", f"blocks.{i}.attn.qkv.bias"}
    return keys


def tower_to_hf(tensors: Mapping[str, torch.Tensor], spec: TowerSpec, where: str
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """timm tower tensors → (state dict of the transformers tower, tensors carried along unchanged)."""
    expected = expected_tower_keys(spec)
    carried = {k: v for k, v in tensors.items() if k not in expected and k.startswith("attn_pool.")}
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - expected - set(carried))
    if missing or unexpected:
        raise CheckpointError(_layout_message(where, missing, unexpected))
    out = {hf_key: tensors[timm_key] for timm_key, hf_key in _one_to_one(spec)}
    for i in range(spec.layers):
        for part in ("weight", "bias"):
            q, k, v = torch.chunk(tensors[f"blocks.{i}.attn.qkv.{part}"], 3, dim=0)
            for name, t in zip(_qkv_names(spec, i), (q, k, v)):
                out[f"{name}.{part}"] = t.clone()
    pos = tensors["pos_embed"]
    if spec.kind == "dinov2":
        out["embeddings.cls_token"] = tensors["cls_token"]
        if not spec.cls_pos_slot:  # timm adds no position to the cls token: an all-zero slot does the same
            pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
        out["embeddings.position_embeddings"] = pos
        out["embeddings.mask_token"] = torch.zeros(1, spec.hidden_size, dtype=pos.dtype)
        if not spec.registers:
            out["embeddings.register_tokens"] = torch.zeros(1, 0, spec.hidden_size, dtype=pos.dtype)
    else:
        out["embeddings.position_embedding.weight"] = pos.reshape(pos.shape[1], pos.shape[2])
    return out, carried


def tower_from_hf(state: Mapping[str, torch.Tensor], spec: TowerSpec, carried: Mapping[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """Inverse of :func:`tower_to_hf`: transformers tower state → timm tensors (plus the carried ones)."""
    out = {timm_key: state[hf_key] for timm_key, hf_key in _one_to_one(spec)}
    for i in range(spec.layers):
        for part in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat([state[f"{n}.{part}"] for n in _qkv_names(spec, i)])
    if spec.kind == "dinov2":
        pos = state["embeddings.position_embeddings"]
        if spec.cls_pos_slot:
            out["cls_token"], out["pos_embed"] = state["embeddings.cls_token"], pos
        else:
            # Fold the cls position slot into the cls token: exact (x + 0) while the slot is untouched.
            out["cls_token"] = state["embeddings.cls_token"] + pos[:, :1]
            out["pos_embed"] = pos[:, 1:]
    else:
        w = state["embeddings.position_embedding.weight"]
        out["pos_embed"] = w.reshape(1, *w.shape)
    out.update(carried)
    return out


# --------------------------------------------------------------------------- whole model


@dataclass
class SplitCheckpoint:
    """The original tensors sorted by component (local keys, prefixes stripped)."""

    towers: list[dict[str, torch.Tensor]]
    projector: dict[str, torch.Tensor]
    proprio: dict[str, torch.Tensor]
    language_model: dict[str, torch.Tensor]


def split_checkpoint(raw: RawCheckpoint, fused: bool) -> SplitCheckpoint:
    """Sort tensors into components; unknown names or missing components are a CheckpointError
    naming the unexpected and missing keys."""
    towers: list[dict[str, torch.Tensor]] = [{} for _ in TOWER_NAMES[: 2 if fused else 1]]
    projector: dict[str, torch.Tensor] = {}
    proprio: dict[str, torch.Tensor] = {}
    llm: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in raw.tensors.items():
        if key.startswith(VISION_PREFIX):
            tower, _, local = key[len(VISION_PREFIX):].partition(".")
            if tower in TOWER_NAMES[: len(towers)]:
                towers[TOWER_NAMES.index(tower)][local] = value
                continue
        elif key.startswith(PROJECTOR_PREFIX):
            projector[key[len(PROJECTOR_PREFIX):]] = value
            continue
        elif key.startswith(PROPRIO_PREFIX):
            proprio[key[len(PROPRIO_PREFIX):]] = value
            continue
        elif key.startswith(LLM_PREFIX):
            llm[key[len(LLM_PREFIX):]] = value
            continue
        unexpected.append(key)
    missing = []
    for name, tower in zip(TOWER_NAMES, towers):
        if not tower:
            missing.append(f"{VISION_PREFIX}{name}.*")
    need_proj = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"} | ({"fc3.weight", "fc3.bias"} if fused else set())
    missing += [PROJECTOR_PREFIX + k for k in sorted(need_proj - set(projector))]
    unexpected += [PROJECTOR_PREFIX + k for k in sorted(set(projector) - need_proj)]
    if proprio:
        need = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
        missing += [PROPRIO_PREFIX + k for k in sorted(need - set(proprio))]
        unexpected += [PROPRIO_PREFIX + k for k in sorted(set(proprio) - need)]
    if not llm:
        missing.append(f"{LLM_PREFIX}*")
    if missing or unexpected:
        raise CheckpointError(_layout_message(str(raw.directory), missing, sorted(unexpected)))
    return SplitCheckpoint(towers, projector, proprio, llm)


def _layout_message(where: str, missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if unexpected:
        parts.append(f"unexpected keys {short_list(unexpected)}")
    if missing:
        parts.append(f"missing keys {short_list(missing)}")
    return (f"{where} is not an OpenVLA checkpoint in the prismatic layout this policy loads: {'; '.join(parts)}. "
            "Expected vision_backbone.featurizer.* (+ fused_featurizer.*), projector.fc1..fc3, language_model.*")


def checkpoint_dtype(raw: RawCheckpoint) -> torch.dtype:
    """The dtype most of the weights are stored in (bf16 for the published checkpoints)."""
    counts: dict[torch.dtype, int] = {}
    for t in raw.tensors.values():
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=counts.get) if counts else torch.float32
