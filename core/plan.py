"""``pushcut plan``: how much GPU memory a run needs, per GPU, before it starts.

The estimate adds, per GPU (formulas in docs/scaling.md, "Memory planner"):

* **weights**  ``P · b``  (``b`` bytes per parameter of the training dtype; FSDP2: ``/ W``, plus the
  largest shard unit gathered for a forward);
* **gradients**  ``P_t · b``  (``P_t`` trainable parameters; FSDP2: ``/ W``);
* **optimizer**  AdamW's two fp32 moments ``8 · P_t``, plus an fp32 master copy ``4 · P_t`` when
  the weights are 16-bit (FSDP2: ``/ W``; ``--offload``: 0 on the GPU);
* **activations** per micro-batch of ``m`` sequences of ``s`` tokens through ``L`` layers of width
  ``h``: ``m · s · h · L · 34`` bytes without activation checkpointing (Korthikanti et al., 2022,
  attention through SDPA), ``m · s · h · (2 · L + 34)`` with it (each layer's input kept, one layer
  recomputed at a time);
* **rollout**  the KV cache of one sampling batch: ``2 · L · s · h · b`` per sequence.

``P`` and the shapes come from the policy: an OpenVLA checkpoint's ``config.json`` when given, else
the OpenVLA-7B shapes (Llama-2-7B plus the fused DINOv2/SigLIP towers); any other policy is built on
the CPU and its parameters counted. The planner does not replace a measurement: the GPU benchmark
(benchmarks/scale.py --device cuda) is how its error is known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pushcut.config import STRATEGIES  # train.strategy's choices: replicate | fsdp2

GIB = 2**30


@dataclass
class ModelShape:
    """What the planner needs to know of a policy."""

    params: int
    """All parameters."""
    layers: int
    """Transformer layers the activations run through (0 = none worth counting)."""
    hidden: int
    """Their width."""
    largest_unit: int
    """Parameters of the largest shard unit (one decoder layer, or the vision tower)."""
    lora_targets_per_layer: list[tuple[int, int]] = field(default_factory=list)
    """(in, out) features of each Linear LoRA adapts in one layer."""
    name: str = ""


LLAMA2_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008, "vocab_size": 32064,
             "num_attention_heads": 32}
VISION_7B = 303_507_456 + 412_442_352
"""DINOv2 ViT-L/14 + SigLIP so400m/14 (OpenVLA's fused towers), parameters."""
PROJECTOR_7B = (1024 + 1152) * 8704 + 8704 * 4096 + 4096 * 4096


def llama_shape(text: dict[str, Any], vision_params: int, projector: int, name: str) -> ModelShape:
    h, layers, inter, vocab = (int(text[k]) for k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                                      "vocab_size"))
    per_layer = 4 * h * h + 3 * h * inter + 2 * h  # q, k, v, o; gate, up, down; two RMSNorms
    params = layers * per_layer + 2 * vocab * h + h + vision_params + projector
    targets = [(h, h)] * 4 + [(h, inter), (h, inter), (inter, h)]  # LoRA on every Linear of a layer
    return ModelShape(params, layers, h, max(per_layer, vision_params), targets, name)


def policy_shape(config: Any) -> ModelShape:
    """The shape of ``config.policy`` (see the module docstring)."""
    policy = config.policy
    if policy.type == "openvla":
        ckpt = getattr(policy.options, "checkpoint", None)
        text = dict(LLAMA2_7B)
        if ckpt and (Path(ckpt) / "config.json").is_file():
            raw = json.loads((Path(ckpt) / "config.json").read_text())
            text.update({k: v for k, v in raw.get("text_config", {}).items() if k in LLAMA2_7B})
            return llama_shape(text, VISION_7B, PROJECTOR_7B, f"openvla ({ckpt})")
        return llama_shape(text, VISION_7B, PROJECTOR_7B, "openvla-7b (default shapes)")
    from pushcut.build import build_policy

    built = build_policy(config)
    params = sum(p.numel() for p in built.parameters())
    layers = [m for m in built.modules() if type(m).__name__.endswith(("DecoderLayer", "Layer", "Block"))]
    hidden = max((p.shape[-1] for p in built.parameters() if p.ndim == 2), default=0)
    largest = max((sum(p.numel() for p in m.parameters()) for m in layers), default=params)
    return ModelShape(params, len(layers), hidden, largest, [], policy.type)


@dataclass
class Plan:
    """Bytes per GPU, by kind; ``fits`` against ``gpu_bytes``."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    rollout: float
    gpu_bytes: float
    trainable: int
    gathered: float = 0.0
    """The rest of the weights a sharded rank gathers to sample rollouts itself (``rollout.inference=learners``):
    held while it rolls out, when the update's activations are not."""

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + max(self.activations, self.gathered) + self.rollout

    @property
    def fits(self) -> bool:
        return self.total <= 0.92 * self.gpu_bytes  # room for the CUDA context, allocator slack, fragmentation


def plan(shape: ModelShape, *, world: int = 1, strategy: str = "replicate", dtype_bytes: int = 2, lora_rank: int = 0,
         offload: bool = False, micro_batch: int = 8, seq_len: int = 300, checkpointing: bool = True,
         rollout_batch: int = 64, gpu_gib: float = 80.0, rollout_on_ranks: bool = False) -> Plan:
    """Per-GPU bytes of a run (see the module docstring for each term)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    shard = world if strategy == "fsdp2" else 1
    if lora_rank:
        trainable = shape.layers * sum(lora_rank * (i + o) for i, o in shape.lora_targets_per_layer)
    else:
        trainable = shape.params
    weights = shape.params * dtype_bytes / shard + (shape.largest_unit * dtype_bytes if shard > 1 else 0)
    gradients = trainable * dtype_bytes / shard
    optimizer = 0.0 if offload else trainable * (8 + (4 if dtype_bytes < 4 else 0)) / shard
    per_token = shape.hidden * (2 * shape.layers + 34 if checkpointing else 34 * shape.layers)
    activations = micro_batch * seq_len * per_token
    rollout = rollout_batch * 2 * shape.layers * seq_len * shape.hidden * dtype_bytes
    gathered = shape.params * dtype_bytes * (1 - 1 / shard) if rollout_on_ranks and shard > 1 else 0.0
    return Plan(weights, gradients, optimizer, activations, rollout, gpu_gib * GIB, trainable, gathered)


def advice(p: Plan, world: int, strategy: str, lora_rank: int, offload: bool) -> str:
    """One line naming what to change when ``p`` does not fit."""
    fixes = []
    if not lora_rank:
        fixes.append("LoRA (policy.lora_rank=32)")
    if strategy != "fsdp2":
        fixes.append("sharded learners (train.backend=ray train.strategy=fsdp2 train.learners=N; "
                     "`pushcut plan --strategy fsdp2 --world N` shows what it takes)")
    elif world < 8:
        fixes.append(f"more ranks (train.learners={world * 2})")
    if not offload:
        fixes.append("optimizer offload (--offload)")
    if p.activations > 0.25 * p.gpu_bytes:
        fixes.append("a smaller train.micro_batch_size")
    return (f"needs {p.total / GIB:.1f} GiB per GPU, {p.gpu_bytes / GIB:.0f} GiB available: try "
            + ", or ".join(fixes))


def format_plan(p: Plan, shape: ModelShape, world: int, strategy: str) -> str:
    rows = [("weights", p.weights), ("gradients", p.gradients), ("optimizer states", p.optimizer),
            ("activations / micro-batch", p.activations), ("rollout KV cache", p.rollout)]
    if p.gathered:
        rows.append(("weights gathered to roll out", p.gathered))
    rows.append(("total", p.total))
    head = (f"{shape.name}: {shape.params / 1e9:.2f} B parameters, {p.trainable / 1e6:.1f} M trainable; "
            f"{strategy} over {world} GPU(s) of {p.gpu_bytes / GIB:.0f} GiB")
    body = "\n".join(f"  {name:<26} {value / GIB:8.2f} GiB" for name, value in rows)
    verdict = "fits" if p.fits else "does NOT fit (with 8 % kept free)"
    return f"{head}\n{body}\n  -> {verdict}"
