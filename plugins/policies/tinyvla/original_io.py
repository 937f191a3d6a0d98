"""Files of the original TinyVLA code: reading its runs and writing them back.

Layout the original writes (train_tinyvla.py, scripts/train.sh) and reads (model/builder.py's
``load_pretrained_model``, eval_real_franka.py)::

    <base>/                  the LLaVA-Pythia VLM: config.json (model_type llava_pythia), weights
                             (model.safetensors[.index.json] or pytorch_model.bin), the Pythia tokenizer
                             (tokenizer.json …), preprocessor_config.json (CLIP)
    <run>/config.json        the model config plus action_head_type, action_dim, state_dim, chunk_size
    <run>/dataset_stats.pkl  action_min / action_max / action_mean / action_std / qpos_mean / qpos_std
    <run>/checkpoint-N/      adapter_config.json + adapter_model.safetensors (or .bin): the LoRA;
                             non_lora_trainables.bin: every non-LoRA parameter under peft's names;
                             preprocessor_config.json, tokenizer files

Loading is the original's: architecture from ``<run>/config.json``, weights from the base, then
non_lora_trainables (prefixes ``base_model.`` and ``model.`` stripped, LoRA keys dropped), then the
LoRA adapter. pushcut keeps the LoRA unmerged (one per task) instead of merging it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pushcut.errors import CheckpointError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
NON_LORA = "non_lora_trainables.bin"
STATS = "dataset_stats.pkl"
PROCESSOR = "preprocessor_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json")
POLICY_META = "pushcut_policy.json"
STATS_KEYS = ("action_min", "action_max", "qpos_mean", "qpos_std")
REQUIRED_CONFIG = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                   "action_dim", "state_dim", "chunk_size", "vision_config")
LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<which>lora_[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class OriginalRun:
    """One per-task run of the original code, read and checked."""

    task: str
    run_dir: Path
    checkpoint: Path
    config: dict
    stats: dict[str, np.ndarray]
    lora_config: dict
    lora: dict[str, torch.Tensor]
    """``<module path>.lora_A`` / ``.lora_B`` → weight; module paths as in the original (``gpt_neox.…``)."""
    non_lora: dict[str, torch.Tensor]
    """Original parameter names (``gpt_neox.…``, ``embed_out.…``) → tensor."""
    step: int = 0
    processor: dict = field(default_factory=dict)


def _checkpoint_step(path: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def locate(path: Path) -> tuple[Path, Path] | None:
    """(run directory, checkpoint directory) when ``path`` is an original run or one of its checkpoints
    (the newest ``checkpoint-N`` of a run directory); None when it is neither."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / ADAPTER_CONFIG).is_file() or (path / NON_LORA).is_file():
        return path.parent, path
    checkpoints = sorted((p for p in path.glob("checkpoint-*") if p.is_dir() and _checkpoint_step(p) >= 0),
                         key=_checkpoint_step)
    if checkpoints and ((path / "config.json").is_file() or (path / STATS).is_file()):
        return path, checkpoints[-1]
    return None


def saved_policy(path: Path) -> dict | None:
    """The meta of a directory written by the original variant's ``save``, else None."""
    meta = Path(path) / POLICY_META
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and data.get("variant") == "original" else None


def is_original(path: str | Path | None) -> bool:
    """Whether ``path`` holds an original TinyVLA run (or a policy the original variant saved)."""
    return path is not None and (locate(Path(path)) is not None or saved_policy(Path(path)) is not None)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises several types
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a dict of tensors")
    return data


def read_tensors(directory: Path, stem: str = "model") -> dict[str, torch.Tensor]:
    """Weights of a Hugging Face directory: ``{stem}.safetensors``, its sharded index, or ``pytorch_model.bin``."""
    import safetensors.torch

    single = directory / f"{stem}.safetensors"
    index = directory / f"{stem}.safetensors.index.json"
    if single.is_file():
        return safetensors.torch.load_file(str(single), device="cpu")
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(safetensors.torch.load_file(str(directory / shard), device="cpu"))
        return out
    if (directory / "pytorch_model.bin").is_file():
        return _torch_load(directory / "pytorch_model.bin")
    raise CheckpointError(f"{directory} holds no weights (model.safetensors, its index, or pytorch_model.bin)")


def original_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """non_lora_trainables' keys as the original's loader turns them into model keys (``base_model.``
    then ``model.`` stripped, LoRA keys dropped); peft ≥ 0.7's ``.base_layer`` is folded away too."""
    out = {(k[len("base_model."):] if k.startswith("base_model.") else k): v for k, v in tensors.items()}
    if any(k.startswith("model.gpt_neox.") for k in out):
        out = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in out.items()}
    return {k.replace(".base_layer.", "."): v for k, v in out.items() if "lora" not in k}


def _read_stats(run_dir: Path) -> dict[str, np.ndarray]:
    path = run_dir / STATS
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {STATS} (the action min/max and state mean/std the original "
                              f"training writes); pushcut needs it to map actions and states")
    try:
        with path.open("rb") as f:
            stats = pickle.load(f)  # noqa: S301  (the user's own training output, as the original reads it)
    except Exception as exc:  # noqa: BLE001  (a damaged pickle raises many types)
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    missing = [k for k in STATS_KEYS if k not in stats]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; it needs {list(STATS_KEYS)}")
    return {k: np.asarray(v, dtype=np.float32).reshape(-1) for k, v in stats.items()
            if isinstance(v, (np.ndarray, list, tuple, float, int, torch.Tensor))}


def _read_lora(checkpoint: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config = _read_json(checkpoint / ADAPTER_CONFIG)
    for weights in ADAPTER_WEIGHTS:
        path = checkpoint / weights
        if path.is_file():
            if weights.endswith(".safetensors"):
                import safetensors.torch
                raw = safetensors.torch.load_file(str(path), device="cpu")
            else:
                raw = _torch_load(path)
            break
    else:
        raise CheckpointError(f"{checkpoint} has {ADAPTER_CONFIG} but no {' or '.join(ADAPTER_WEIGHTS)}")
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{checkpoint / ADAPTER_CONFIG}: peft_type {config.get('peft_type')!r}; pushcut loads LoRA")
    r, targets = config.get("r"), config.get("target_modules")
    if not isinstance(r, int) or r < 1 or not isinstance(targets, list) or not targets:
        raise CheckpointError(f"{checkpoint / ADAPTER_CONFIG} needs r (a positive integer) and target_modules (a list)")
    if config.get("bias", "none") != "none":
        raise CheckpointError(f"{checkpoint / ADAPTER_CONFIG}: bias={config['bias']!r}; pushcut loads LoRA with bias none")
    lora: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        match = LORA_KEY.match(key)
        if match is None:
            raise CheckpointError(f"{path}: unexpected key {key!r} (expected peft LoRA keys)")
        lora[f"{match['module']}.{match['which']}"] = value
        rank = value.shape[0] if match["which"] == "lora_A" else value.shape[1]
        if rank != r:
            raise CheckpointError(f"{path}: {key} has rank {rank} but {ADAPTER_CONFIG} says r={r}; the adapter's "
                                  "weights and config disagree")
    modules = sorted({k.rsplit(".", 1)[0] for k in lora})
    stray = [m for m in modules if not any(m == t or m.endswith("." + t) for t in targets)]
    if stray:
        raise CheckpointError(f"{path}: LoRA weights on {stray[0]!r}, which target_modules in {ADAPTER_CONFIG} "
                              "does not list; the adapter's weights and config disagree")
    return config, lora


def read_run(path: Path, task: str) -> OriginalRun:
    """One original run (run directory or ``checkpoint-N``), checked; raises one-line CheckpointErrors."""
    found = locate(Path(path))
    if found is None:
        raise CheckpointError(f"{path} is not a run of the original TinyVLA code: expected {ADAPTER_CONFIG} and "
                              f"{NON_LORA} in it, or checkpoint-N folders with them beside config.json")
    run_dir, checkpoint = found
    if not (run_dir / "config.json").is_file():
        raise CheckpointError(f"{run_dir} has no config.json (the model and action-head config the original "
                              "training saves beside its checkpoints)")
    config = _read_json(run_dir / "config.json")
    head = config.get("action_head_type")
    if head != "droid_diffusion":
        raise CheckpointError(f"{run_dir / 'config.json'}: action_head_type {head!r}; pushcut loads TinyVLA runs with "
                              "the diffusion head (droid_diffusion) only")
    missing = [k for k in REQUIRED_CONFIG if k not in config]
    if missing:
        raise CheckpointError(f"{run_dir / 'config.json'} lacks {missing[0]!r} (it needs {', '.join(REQUIRED_CONFIG)})")
    stats = _read_stats(run_dir)
    if not (checkpoint / NON_LORA).is_file():
        raise CheckpointError(f"{checkpoint} has no {NON_LORA} (run the original scripts/process_ckpts.sh on a "
                              "DeepSpeed checkpoint to make it)")
    lora_config, lora = _read_lora(checkpoint)
    non_lora = original_names(_torch_load(checkpoint / NON_LORA))
    processor_path = checkpoint / PROCESSOR
    processor = _read_json(processor_path) if processor_path.is_file() else {}
    return OriginalRun(task=task, run_dir=run_dir, checkpoint=checkpoint, config=config, stats=stats,
                       lora_config=lora_config, lora=lora, non_lora=non_lora,
                       step=max(_checkpoint_step(checkpoint), 0), processor=processor)


def find_base(run: OriginalRun, model_base: str | None) -> Path:
    """The base LLaVA-Pythia directory: ``model_base``, else the run config's ``_name_or_path``, else
    ``base`` beside the run. Missing = one CheckpointError line."""
    candidates = [Path(model_base)] if model_base else []
    recorded = run.config.get("_name_or_path")
    if not model_base:
        if recorded:
            candidates.append(Path(recorded) if Path(recorded).is_absolute() else run.run_dir / recorded)
        candidates.append(run.run_dir.parent / "base")
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates) or "nothing"
    raise CheckpointError(f"the base LLaVA-Pythia model of {run.run_dir} was not found (tried {tried}); set "
                          "policy.model_base=DIR to the directory the run was trained from")


def read_base(base: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config = _read_json(base / "config.json")
    if config.get("model_type") != "llava_pythia":
        raise CheckpointError(f"{base / 'config.json'} has model_type {config.get('model_type')!r}, not llava_pythia: "
                              "point policy.model_base at the LLaVA-Pythia VLM the run was trained from")
    if not (base / "tokenizer.json").is_file():
        raise CheckpointError(f"{base} has no tokenizer.json (the Pythia tokenizer saved with the base model)")
    return config, read_tensors(base)


# --------------------------------------------------------------------------- writing


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link a file (the base model never changes), copying where links are not possible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def copy_base(base: Path, target: Path) -> None:
    """The base directory's files (config, weights, tokenizer, processor) into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for item in base.iterdir():
        if item.is_file():
            link_or_copy(item, target / item.name)


def write_run(run_dir: Path, step: int, config: dict, stats: dict[str, np.ndarray], lora_config: dict,
              lora: dict[str, torch.Tensor], non_lora: dict[str, torch.Tensor], base: Path) -> Path:
    """One task's run in the original layout; returns its ``checkpoint-N`` directory.

    ``lora`` maps ``<module path>.lora_A|lora_B`` (original module paths) to weights; written under
    peft 0.4's names (``base_model.model.<path>.lora_A.weight``) to adapter_model.bin, as the original's
    training saves it. ``non_lora`` (original names) is written under peft's wrapped names."""
    checkpoint = run_dir / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    with (run_dir / STATS).open("wb") as f:
        pickle.dump({k: np.asarray(v) for k, v in stats.items()}, f)
    (checkpoint / ADAPTER_CONFIG).write_text(json.dumps(lora_config, indent=2, sort_keys=True) + "\n")
    torch.save({f"base_model.model.{k}.weight": v.detach().cpu().contiguous() for k, v in lora.items()},
               checkpoint / "adapter_model.bin")
    for stale in ("adapter_model.safetensors",):
        if (checkpoint / stale).exists():
            (checkpoint / stale).unlink()
    torch.save({f"base_model.model.{k}": v.detach().cpu().contiguous() for k, v in non_lora.items()},
               checkpoint / NON_LORA)
    for name in (PROCESSOR, *TOKENIZER_FILES):
        if (base / name).is_file():
            link_or_copy(base / name, checkpoint / name)
    return checkpoint
