"""OpenVLA's vision towers computed by timm itself: the independent reference for pushcut's
OpenVLA towers (tests/plugins/policies/test_openvla_timm.py). Run it with the venv that
tests/reference/make_timm_env.sh builds; it imports only timm, torch, safetensors, numpy and json,
never pushcut.

    python timm_reference.py CHECKPOINT_DIR PIXELS.npy OUT.npz

CHECKPOINT_DIR: an OpenVLA checkpoint in the Hugging Face "prismatic" layout: config.json with
``timm_model_ids``, ``image_sizes``, ``timm_override_act_layers`` and ``use_fused_vision_backbone``,
and model.safetensors (or model.safetensors.index.json and its shards). Each tower is built as
OpenVLA's modeling_prismatic.py builds it,
``timm.create_model(timm_id, pretrained=False, num_classes=0, img_size=size, act_layer=override)``,
plus ``depth=`` the number of blocks in the checkpoint when that differs from the model's own (a
test checkpoint with real widths but fewer blocks). It is then loaded strictly from
``vision_backbone.featurizer.*`` / ``vision_backbone.fused_featurizer.*``. OpenVLA's HF export
names LayerScale's ``gamma`` ``scale_factor``; that is mapped back (``gamma`` is taken as is).
The only keys allowed not to match are SigLIP's unused pooling head: ``attn_pool.*`` missing
from the checkpoint (OpenVLA's from_pretrained would leave it random) and ``head.*`` present in
it (num_classes=0 makes timm's head an Identity). Neither reaches the features.

Features are OpenVLA's featurizer call, ``get_intermediate_layers(x, n={len(blocks) - 2})``, whose
one result is the patch tokens (prefix tokens dropped, no final norm) output by the
second-to-last block.

PIXELS.npy: float (B, 3 × towers, S, S), channel-stacked as OpenVLA's processor makes it: the
first tower's 3 channels first.

OUT.npz: ``featurizer`` and, for a fused backbone, ``fused_featurizer``, each (B, patches, width)
float32; ``timm_version``; ``act_layers`` (repr of each tower's MLP activation, e.g.
"GELU(approximate='none')"); ``depths`` (blocks built) and ``default_depths`` (the model's own).

A bad checkpoint or input ends with exit status 1 and one line on stderr.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import safetensors
import timm
import torch

TOWERS = ("featurizer", "fused_featurizer")
LAYER_SCALE = re.compile(r"^(blocks\.\d+\.ls[12])\.scale_factor$")
BLOCK = re.compile(r"^blocks\.(\d+)\.")


class BadInput(Exception):
    """A checkpoint or input this reference cannot use; the message says why."""


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise BadInput(f"{directory} has no config.json")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"{path} is not valid JSON: {e}") from e
    fused = config.get("use_fused_vision_backbone")
    if fused is None:  # OpenVLA refuses this too ("Missing config field")
        raise BadInput(f"{path} lacks use_fused_vision_backbone")
    n = 2 if fused else 1
    for field in ("timm_model_ids", "image_sizes", "timm_override_act_layers"):
        value = config.get(field)
        if not isinstance(value, list) or len(value) < n:
            raise BadInput(f"{path}: {field} must be a list with {n} entries, got {value!r}")
    return config


def read_tower_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Only the ``vision_backbone.*`` tensors, read shard by shard (a real checkpoint is ~15 GB)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise BadInput(f"{index} has no readable weight_map: {e}") from e
        by_file: dict[str, list[str]] = {}
        for key, name in weight_map.items():
            if key.startswith("vision_backbone."):
                by_file.setdefault(name, []).append(key)
    elif (directory / "model.safetensors").is_file():
        by_file = {"model.safetensors": None}
    else:
        raise BadInput(f"{directory} has no model.safetensors or model.safetensors.index.json")
    tensors: dict[str, torch.Tensor] = {}
    for name, keys in by_file.items():
        path = directory / name
        if not path.is_file():
            raise BadInput(f"{path} (named in the index) is missing")
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                for key in keys if keys is not None else f.keys():
                    if key.startswith("vision_backbone."):
                        tensors[key] = f.get_tensor(key)
        except (safetensors.SafetensorError, OSError) as e:
            raise BadInput(f"{path} cannot be read as safetensors: {e}") from e
    return tensors


def timm_state(tensors: dict[str, torch.Tensor], tower: str) -> dict[str, torch.Tensor]:
    prefix = f"vision_backbone.{tower}."
    state: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if not key.startswith(prefix):
            continue
        name = LAYER_SCALE.sub(r"\1.gamma", key[len(prefix):])
        if name in state:
            raise BadInput(f"{prefix}{name} is given both as gamma and as scale_factor")
        state[name] = value.float()
    if not state:
        raise BadInput(f"the checkpoint has no {prefix}* tensors")
    return state


def default_depth(timm_id: str, kwargs: dict) -> int:
    """The model's own number of blocks, found by building it with placeholder blocks (cheap)."""
    skeleton = timm.create_model(timm_id, **kwargs, block_fn=lambda **_: torch.nn.Identity())
    return len(skeleton.blocks)


def build_tower(timm_id: str, image_size: int, act_layer: str | None,
                state: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, int]:
    blocks = sorted({int(m.group(1)) for k in state if (m := BLOCK.match(k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise BadInput(f"{timm_id}: checkpoint blocks must be numbered 0..N-1, got {blocks[:8]}")
    # OpenVLA's call; timm's create_model drops None kwargs, so act_layer=None keeps timm's default
    kwargs = {"pretrained": False, "num_classes": 0, "img_size": image_size, "act_layer": act_layer}
    try:
        own_depth = default_depth(timm_id, kwargs)
        if len(blocks) != own_depth:
            kwargs["depth"] = len(blocks)
        model = timm.create_model(timm_id, **kwargs)
    except RuntimeError as e:  # timm's "Unknown model (...)"
        raise BadInput(f"timm {timm.__version__} cannot build {timm_id!r}: {e}") from e
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise BadInput(f"{timm_id}: the checkpoint does not fit timm's model: {first[0].strip()}") from e
    bad_missing = [k for k in missing if not k.startswith("attn_pool.")]
    bad_unexpected = [k for k in unexpected if not k.startswith("head.")]
    if bad_missing or bad_unexpected:
        raise BadInput(f"{timm_id}: the checkpoint does not fit timm's model: "
                       f"missing {bad_missing[:5]}, unexpected {bad_unexpected[:5]}")
    if missing or unexpected:
        print(f"timm_reference: {timm_id}: ignoring the unused pooling head "
              f"({len(missing)} missing attn_pool.*, {len(unexpected)} extra head.*)", file=sys.stderr)
    return model.eval(), own_depth


def read_pixels(path: Path, sizes: list[int]) -> torch.Tensor:
    try:
        pixels = np.load(path)
    except (OSError, ValueError) as e:
        raise BadInput(f"{path} is not a .npy array: {e}") from e
    towers = len(sizes)
    if pixels.ndim != 4 or pixels.shape[1] != 3 * towers or not np.issubdtype(pixels.dtype, np.floating):
        raise BadInput(f"pixels must be float (B, {3 * towers}, S, S), got {pixels.dtype} {pixels.shape}")
    if any(pixels.shape[2:] != (s, s) for s in sizes):
        raise BadInput(f"pixels are {pixels.shape[2]}x{pixels.shape[3]}, the towers take {sizes}")
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))


def run(directory: Path, pixels_path: Path, out_path: Path) -> None:
    torch.set_num_threads(1)
    config = read_config(directory)
    towers = TOWERS[: 2 if config["use_fused_vision_backbone"] else 1]
    ids = config["timm_model_ids"]
    sizes = [int(s) for s in config["image_sizes"][: len(towers)]]
    acts = config["timm_override_act_layers"]
    pixels = read_pixels(pixels_path, sizes)
    tensors = read_tower_tensors(directory)
    out: dict[str, np.ndarray] = {"timm_version": np.array(timm.__version__)}
    act_layers, depths, default_depths = [], [], []
    for i, tower in enumerate(towers):
        model, own_depth = build_tower(ids[i], sizes[i], acts[i], timm_state(tensors, tower))
        act_layers.append(repr(model.blocks[0].mlp.act))
        depths.append(len(model.blocks))
        default_depths.append(own_depth)
        with torch.inference_mode():
            # OpenVLA: featurizer.forward = unpack_tuple(partial(get_intermediate_layers, n={len(blocks) - 2}))
            result = model.get_intermediate_layers(pixels[:, 3 * i: 3 * i + 3], n={len(model.blocks) - 2})
        (features,) = result
        out[tower] = features.numpy().astype(np.float32)
    out["act_layers"] = np.array(act_layers)
    out["depths"] = np.array(depths)
    out["default_depths"] = np.array(default_depths)
    np.savez(out_path, **out)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: timm_reference.py CHECKPOINT_DIR PIXELS.npy OUT.npz", file=sys.stderr)
        return 2
    try:
        run(Path(argv[0]), Path(argv[1]), Path(argv[2]))
    except BadInput as e:
        print(f"timm_reference: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
