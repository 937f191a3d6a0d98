"""The run configuration's sections: typed dataclasses, one per section.

A run config has fixed sections (``algo``, ``rollout``, ``train``, ``eval``,
``sft``) and fields that pick a registered component (:func:`choice`: ``policy``,
``env``, ``success``, ``rollout.transport``) whose ``type`` key selects it; that
component's own config dataclass then validates the rest. Every field has a
one-line docstring, and ``__post_init__`` says what is wrong and what would be right.

Reading YAML, dotted overrides and resolving the choices live in :mod:`pushcut.configio`;
saving a run's config and the rules for continuing it in :mod:`pushcut.rundir`.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from pushcut.errors import ConfigError
from pushcut.sampling import CURRICULA, SAMPLERS

# --------------------------------------------------------------------------- registered choices


@dataclass
class PluginChoice:
    """A field that picks a registered component: ``type`` names it, ``options`` is an instance of
    that component's own config dataclass (in YAML: ``{type: NAME, ...its fields}``)."""

    type: str
    options: Any = None


def choice(registry: str, default: str) -> Any:
    """A config field that picks a component from the plugin manager's ``registry`` (``"envs"``,
    ``"transports"``, ``"robot_drivers"``, ...), ``default`` when the config names none. Written as
    ``{type: NAME, ...}``, or just ``NAME`` for its defaults; resolved and validated by
    :func:`build_dataclass` through the chosen entry's config class."""
    return field(default_factory=lambda: PluginChoice(default), metadata={"registry": registry})


class TransportConfig:
    """Base of every transport's config class (``rollout.transport: {type: NAME, ...}``)."""

    def num_workers(self, requested: int) -> int:
        """How many env workers the pool gets for ``rollout.num_workers=requested``."""
        return requested

    def builds_envs_here(self) -> bool:
        """True when the envs run on this Python (then an env whose simulator it lacks is refused early)."""
        return False


# --------------------------------------------------------------------------- sections


@dataclass
class CriticConfig:
    """PPO's critic, read only with ``algo.advantage=gae`` (a value head on the policy's own features)."""

    gamma: float = 0.99
    """GAE discount per action chunk (one policy call)."""
    lam: float = 0.95
    """GAE lambda: 1 = Monte-Carlo return minus the value, 0 = one-step TD error."""
    whiten_advantages: bool = True
    """Normalise the per-chunk advantages to mean 0, std 1 over the batch (as verl)."""
    value_loss: str = "clipped"
    """Value loss (clipped = PPO's clipped squared error)."""
    cliprange_value: float = 0.2
    """How far a new value prediction may move from its rollout-time value before the loss stops rewarding it."""
    value_coef: float = 0.5
    """Weight of the value loss next to the policy loss."""
    lr: float = 1e-3
    """AdamW learning rate of the value head's parameters (the actor keeps train.lr)."""
    warmup_iterations: int = 0
    """First RL iterations that train the value head only (the actor's update is skipped)."""

    def __post_init__(self) -> None:
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"algo.critic.{name} must be in [0, 1] (e.g. 0.99 / 0.95), got {getattr(self, name)}")
        for name in ("cliprange_value", "value_coef", "lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"algo.critic.{name} must be a finite number > 0, got {getattr(self, name)}")
        if self.warmup_iterations < 0:
            raise ConfigError(f"algo.critic.warmup_iterations must be >= 0, got {self.warmup_iterations}")
        from pushcut import algos

        if self.value_loss not in algos.VALUE_LOSSES:
            raise ConfigError(f"algo.critic.value_loss={self.value_loss!r} is not one of "
                              f"{', '.join(sorted(algos.VALUE_LOSSES))}")


@dataclass
class AlgoConfig:
    """The RL recipe (SimpleVLA-RL defaults)."""

    group_size: int = 8
    """Episodes per start state (G); advantages are normalised within a group."""
    temperature: float = 1.6
    """Rollout sampling temperature; training log-probs use the same one."""
    advantage: str = "grpo"
    """Advantage estimator: grpo, rloo, drgrpo (per episode, from the group) or gae (per chunk, PPO with a critic)."""
    policy_loss: str = "vanilla"
    """Policy-loss variant (vanilla = asymmetric PPO clip)."""
    clip_ratio_low: float = 0.2
    """ε_low: the ratio is clipped below at 1 − ε_low."""
    clip_ratio_high: float = 0.28
    """ε_high: the ratio is clipped above at 1 + ε_high (clip-higher)."""
    clip_ratio_c: float | None = None
    """Dual-clip bound for negative advantages (e.g. 3.0); null = off."""
    loss_agg_mode: str = "token-mean"
    """Loss aggregation: token-mean or seq-mean-token-mean (a sequence is an episode)."""
    accuracy_lower: float = 0.0
    """Dynamic sampling keeps groups whose success rate is ≥ this (and not all-fail)."""
    accuracy_upper: float = 1.0
    """Dynamic sampling keeps groups whose success rate is ≤ this (and not all-success)."""
    kl_coef: float = 0.0
    """KL-to-reference coefficient; 0 (default) builds no reference model at all."""
    kl_type: str = "low_var_kl"
    """KL estimator when kl_coef > 0: kl, abs, mse or low_var_kl."""
    entropy_coeff: float = 0.0
    """Entropy bonus coefficient (0 = off, as in the recipe)."""
    eps: float = 1e-6
    """Added to the group std in the GRPO advantage."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """PPO's critic (value head, GAE, value loss); read only with advantage=gae."""

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ConfigError(f"algo.group_size must be >= 2 (advantages need a group), got {self.group_size}")
        if self.temperature <= 0:
            raise ConfigError(f"algo.temperature must be > 0 for rollouts (greedy is for eval), got {self.temperature}")
        for name in ("clip_ratio_low", "clip_ratio_high"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"algo.{name} must be in (0, 1), e.g. 0.2 / 0.28; got {getattr(self, name)}")
        if self.clip_ratio_c is not None and self.clip_ratio_c <= 1:
            raise ConfigError(f"algo.clip_ratio_c must be > 1 (e.g. 3.0) or null, got {self.clip_ratio_c}")
        if not 0 <= self.accuracy_lower <= self.accuracy_upper <= 1:
            raise ConfigError(
                "algo.accuracy_lower/upper must satisfy 0 <= lower <= upper <= 1 (SimpleVLA-RL: 0.1 / 0.9), "
                f"got {self.accuracy_lower} / {self.accuracy_upper}"
            )
        if self.kl_coef < 0:
            raise ConfigError(f"algo.kl_coef must be >= 0, got {self.kl_coef}")
        from pushcut import algos

        estimators = {**algos.ADVANTAGE_ESTIMATORS, **algos.VALUE_ADVANTAGE_ESTIMATORS}
        for name, registry in (("advantage", estimators), ("policy_loss", algos.POLICY_LOSSES),
                               ("loss_agg_mode", algos.LOSS_AGGREGATIONS), ("kl_type", algos.KL_PENALTIES)):
            value = getattr(self, name)
            if value not in registry:
                close = difflib.get_close_matches(value, list(registry), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"algo.{name}={value!r} is not one of {', '.join(sorted(registry))}{hint}")


@dataclass
class RolloutConfig:
    """Closed-loop collection."""

    num_workers: int = 2
    """Env worker processes (persistent for the whole run)."""
    envs_per_worker: int = 8
    """Env instances each worker holds."""
    max_steps: int = 0
    """Env-step limit per episode; 0 uses each task's own limit."""
    step_timeout_s: float = 120.0
    """A worker that does not answer within this many seconds is restarted and its episodes dropped."""
    pipeline: bool = False
    """Split the pool in two halves and step one while the policy serves the other."""
    transport: PluginChoice = choice("transports", "process")
    """Where env workers run: ``{type: process|inline|socket|ray, ...that transport's fields}`` (docs/remote-envs.md).

    A bare name (``rollout.transport=socket``) is that transport with its defaults; its fields
    are ``rollout.transport.KEY`` (``rollout.transport.addresses=[host:port]``). ``socket``
    connects to running ``pushcut env serve`` processes, one worker per address."""
    startup_timeout_s: float = 300.0
    """A process worker, Ray env actor or learner rank that has not started within this many seconds is an error."""
    inference: str = "driver"
    """Who samples the rollouts' actions: driver (this process's policy) or learners (each learner rank, its share).

    ``learners`` is veRL's hybrid engine: with ``train.backend=ray`` every rank builds
    ``num_workers / train.learners`` env workers of its own and samples for them with its
    current (gathered) weights, so no weights travel to this process (docs/scaling.md)."""

    def __post_init__(self) -> None:
        if self.num_workers < 0 or self.envs_per_worker < 1:
            raise ConfigError(
                f"rollout.num_workers must be >= 0 and rollout.envs_per_worker >= 1, "
                f"got {self.num_workers} and {self.envs_per_worker}"
            )
        if self.step_timeout_s <= 0:
            raise ConfigError(f"rollout.step_timeout_s must be > 0, got {self.step_timeout_s}")
        if isinstance(self.transport.options, TransportConfig):
            self.num_workers = self.transport.options.num_workers(self.num_workers)
        if not self.startup_timeout_s > 0:
            raise ConfigError(f"rollout.startup_timeout_s must be > 0, got {self.startup_timeout_s}")
        if self.pipeline and self.num_workers < 2:
            raise ConfigError(f"rollout.pipeline needs rollout.num_workers >= 2 (two lanes), got {self.num_workers}")
        if self.inference not in INFERENCE:
            raise ConfigError(f"rollout.inference must be one of {', '.join(INFERENCE)}, got {self.inference!r}")


INFERENCE = ("driver", "learners")
"""``rollout.inference`` choices: where rollout actions are sampled."""



BACKENDS = ("local", "ray")
"""``train.backend`` choices (see :mod:`pushcut.learner`)."""

STRATEGIES = ("replicate", "fsdp2")
"""``train.strategy`` choices: every learner rank holds the whole model, or FSDP2 shards it."""

PRECISIONS = ("float32", "bf16-mixed")
"""``train.precision`` choices of sharded learners."""

EVAL_SPLITS = ("eval", "train")
"""``eval.split`` choices: the held-out initial states, or the ones RL and demos draw from."""


@dataclass
class TrainConfig:
    """The RL optimisation loop."""

    iterations: int = 100
    """RL iterations (rollout + update)."""
    batch_size: int = 8
    """Groups (start states) per iteration after dynamic sampling."""
    max_sample_rounds: int = 4
    """Dynamic-sampling cap: rounds of sampling start states before training on what there is."""
    ppo_epochs: int = 1
    """Passes over each iteration's episodes."""
    minibatch_size: int = 16
    """Episodes per optimiser step."""
    micro_batch_size: int = 64
    """Chunk rows per forward/backward (gradient accumulation below a minibatch)."""
    lr: float = 5e-6
    """AdamW learning rate (5e-6 for 7B backbones)."""
    lr_warmup_steps: int = 0
    """Optimiser steps of linear learning-rate warmup at the start of RL (0 = none).

    A fresh AdamW's first steps move every weight by about ``lr`` whatever its gradient,
    which at the tiny VLA's learning rates is enough to wreck an SFT policy in one iteration."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    start_sampling: str = "uniform"
    """Start states per round: ``uniform`` (the recipe), ``mixed`` (tasks likely to give mixed groups) or ``band``.

    ``uniform`` cycles through every (task, train state) pair; ``mixed`` draws tasks in
    proportion to the chance that a group of theirs has mixed outcomes (from each task's
    running rollout success), so fewer rollouts go to groups that dynamic sampling then drops;
    ``band`` does the same per (task, start state), from each state's own recent success,
    exploring unseen states first (docs/algorithms.md)."""
    curriculum: str = "none"
    """``reverse``: tasks the policy rarely solves start part-way along their demos, moving back (docs/algorithms.md)."""
    curriculum_demos: str = field(default="", metadata={"path": True})
    """Demo file with simulator states for ``curriculum=reverse`` (``pushcut demos``); empty = sft.demos."""
    curriculum_threshold: float = 0.5
    """Running success from the current start at which a task's start moves back, in (0, 1)."""
    curriculum_step: float = 0.2
    """How far back (share of the demo's length) the start moves each time, in (0, 1]."""
    curriculum_initial: float = 0.8
    """Where an enrolled task starts: this share of the way along its demos, in [0, 1]."""
    curriculum_apply_below: float = 0.3
    """Tasks whose success from the real initial states is below this enrol, in (0, 1)."""
    grad_clip: float = 1.0
    """Gradient-norm clipping threshold."""
    eval_every: int = 10
    """Evaluate greedily every this many iterations (0 = only at the end)."""
    save_every: int = 10
    """Checkpoint every this many iterations (0 = only at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    device: str = "cpu"
    """Torch device of the policy, for rollouts and learning alike (the one device setting)."""
    torch_threads: int = 0
    """torch intra-op threads in the learner process (0 = torch's default; 1 when env workers share few cores)."""
    init_from: str = field(default="", metadata={"path": True})
    """Policy weights directory (e.g. an SFT run's policy/) to start RL from; empty = the policy's own init."""
    resume: bool = True
    """Continue from the newest checkpoint in run_dir when there is one."""
    eval_at_start: bool = True
    """Evaluate before the first update, so the curve starts at the SFT policy."""
    backend: str = "local"
    """Where the update runs: local (this process) or ray (train.learners ranks as Ray actors; docs/scaling.md)."""
    learners: int = 1
    """Learner ranks (torch.distributed, gloo on CPU / NCCL on CUDA); > 1 needs train.backend=ray."""
    learner_num_cpus: float = 1.0
    """CPUs each learner rank reserves (train.backend=ray)."""
    strategy: str = "replicate"
    """How learner ranks hold the model: replicate (each the whole model) or fsdp2 (sharded; train.backend=ray)."""
    precision: str = "float32"
    """fsdp2 parameters and compute: float32, or bf16-mixed (bf16 weights and compute, fp32 gradient reduction)."""
    offload: bool = False
    """fsdp2: keep parameter shards and optimizer state in CPU memory between uses (less GPU memory, slower)."""
    activation_checkpointing: bool = False
    """fsdp2: recompute each shard unit's activations in the backward pass instead of keeping them."""
    async_rollouts: bool = False
    """One-step asynchronous training: iteration k+1's rollouts overlap iteration k's update.

    The rollouts sample with iteration k's weights while the update runs in a thread
    (``rollout/stale_versions`` 1; the clipped ratio uses the sampling-time log-probs)."""

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "max_sample_rounds", "ppo_epochs", "minibatch_size",
                     "micro_batch_size", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.start_sampling not in SAMPLERS:
            raise ConfigError(f"train.start_sampling must be one of {', '.join(SAMPLERS)}, "
                              f"got {self.start_sampling!r}")
        if self.curriculum not in CURRICULA:
            raise ConfigError(f"train.curriculum must be one of {', '.join(CURRICULA)}, got {self.curriculum!r}")
        for name in ("curriculum_threshold", "curriculum_apply_below"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be in (0, 1), got {getattr(self, name)}")
        if not 0 < self.curriculum_step <= 1 or not 0 <= self.curriculum_initial <= 1:
            raise ConfigError(f"train.curriculum_step must be in (0, 1] and train.curriculum_initial in [0, 1], "
                              f"got {self.curriculum_step} and {self.curriculum_initial}")
        if self.lr_warmup_steps < 0:
            raise ConfigError(f"train.lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        if self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip must be > 0, got {self.grad_clip}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"train.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.learners < 1 or (self.learners > 1 and self.backend != "ray"):
            raise ConfigError(f"train.learners={self.learners}: it must be >= 1, and more than 1 needs "
                              "train.backend=ray")
        if self.learner_num_cpus < 0:
            raise ConfigError(f"train.learner_num_cpus must be >= 0, got {self.learner_num_cpus}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"train.strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.strategy == "fsdp2" and self.backend != "ray":
            raise ConfigError("train.strategy=fsdp2 shards the model over learner ranks: it needs train.backend=ray "
                              "(train.learners=1 is fine)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.async_rollouts and self.backend != "local":
            raise ConfigError("train.async_rollouts overlaps rollouts with the update in this process: it needs "
                              f"train.backend=local (it is {self.backend!r})")
        fsdp_only = [k for k in ("offload", "activation_checkpointing") if getattr(self, k)]
        if self.precision != "float32":
            fsdp_only.append("precision")
        if fsdp_only and self.strategy != "fsdp2":
            raise ConfigError(f"train.{fsdp_only[0]} is only read with train.strategy=fsdp2 (it is {self.strategy!r})")


@dataclass
class EvalConfig:
    """Evaluation on held-out start states: greedy by default, or sampled at a temperature."""


    max_init_states: int = 0
    """Eval start states per task (0 = all of the task's eval split)."""
    videos_per_task: int = 1
    """Episodes per task recorded as MP4."""
    fps: int = 10
    """Frame rate of the videos."""
    temperature: float = 0.0
    """Action sampling temperature of eval episodes (0 = greedy, the evaluation protocol)."""
    samples_per_state: int = 1
    """Episodes per eval start state; more than 1 needs temperature > 0 (greedy episodes repeat)."""
    split: str = "eval"
    """Initial states `pushcut eval` runs on: "eval" (held out, the protocol) or "train" (those RL trains on).

    Training runs and the quickstart always evaluate on the held-out states."""

    def __post_init__(self) -> None:
        if self.split not in EVAL_SPLITS:
            raise ConfigError(f"eval.split must be one of {', '.join(EVAL_SPLITS)}, got {self.split!r}")
        if self.max_init_states < 0 or self.videos_per_task < 0 or self.fps < 1:
            raise ConfigError("eval.max_init_states and eval.videos_per_task must be >= 0 and eval.fps >= 1, got "
                              f"{self.max_init_states}, {self.videos_per_task}, {self.fps}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"eval.temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if self.samples_per_state < 1:
            raise ConfigError(f"eval.samples_per_state must be >= 1, got {self.samples_per_state}")
        if self.samples_per_state > 1 and self.temperature == 0:
            raise ConfigError(f"eval.samples_per_state={self.samples_per_state} needs eval.temperature > 0: "
                              "greedy episodes from one start state are all the same")


SFT_LR_SCHEDULES = ("cosine", "constant")


@dataclass
class SFTConfig:
    """Cold-start behaviour cloning on demonstrations."""

    demos: tuple[str, ...] = field(default=(), metadata={"path": True})
    """HDF5 demo files (robomimic/LIBERO layout)."""
    demos_per_task: int = 1
    """Scripted-expert demos per task that `pushcut quickstart` records."""
    demo_noise: float = 0.0
    """DART noise std (env action units) on the expert's executed actions in quickstart demos.

    The recorded labels stay the expert's clean actions (see ``pushcut demos --noise``). The
    noise goes on every action dimension, the gripper's included."""
    steps: int = 1000
    """Optimiser steps."""
    batch_size: int = 32
    """Samples per step."""
    lr: float = 3e-4
    """AdamW peak learning rate (linear warmup over the first 5 % of steps)."""
    lr_schedule: str = "cosine"
    """After warmup: ``cosine`` decays to 0 by the last step (a sharper policy), ``constant`` keeps ``lr``."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    image_key: str = "image"
    """Demo obs key of the third-person image (LIBERO: agentview_rgb)."""
    wrist_image_key: str = ""
    """Demo obs key of the wrist image, empty = none (LIBERO: eye_in_hand_rgb)."""
    state_keys: tuple[str, ...] = ("state",)
    """Demo obs keys concatenated into the proprio state (LIBERO: ee_states, gripper_states)."""
    flip_images: bool = False
    """Rotate demo images 180° (LIBERO's demo frames are upside down)."""
    image_shift: int = 0
    """Random-shift augmentation: each training image moves by up to this many pixels per axis; 0 = off.

    A fresh offset per sample and step, the edge pixels filling what moves in (DrQ's
    augmentation). The policy then cannot key its actions to exact pixel positions."""

    def __post_init__(self) -> None:
        if self.image_shift < 0:
            raise ConfigError(f"sft.image_shift must be >= 0 pixels, got {self.image_shift}")
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(
                f"sft.steps must be >= 0, sft.batch_size >= 1 and sft.lr > 0; got {self.steps}, {self.batch_size}, {self.lr}"
            )
        if not (math.isfinite(self.demo_noise) and self.demo_noise >= 0):
            raise ConfigError(f"sft.demo_noise must be a finite number >= 0 (env action units), got {self.demo_noise}")
        if self.lr_schedule not in SFT_LR_SCHEDULES:
            raise ConfigError(f"sft.lr_schedule must be one of {', '.join(SFT_LR_SCHEDULES)}, got {self.lr_schedule!r}")


@dataclass
class RunConfig:
    """A whole run: which plugins, the recipe, and where results go."""

    policy: PluginChoice = choice("policies", "tiny")
    """The policy plugin (``type``) and its options."""
    env: PluginChoice = choice("envs", "tabletop")
    """The env plugin (``type``) and its options."""
    success: PluginChoice = choice("success_detectors", "env_success")
    """The success-detector plugin (``type``) and its options."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """The RL recipe."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Rollout collection."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The RL loop."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Greedy evaluation."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Cold-start behaviour cloning."""
    run_dir: str = "runs/default"
    """Directory for config, metrics, checkpoints, videos."""
    seed: int = 0
    """Seed for torch, numpy and start-state sampling."""

    def __post_init__(self) -> None:
        if self.rollout.inference == "learners" and self.train.backend != "ray":
            raise ConfigError("rollout.inference=learners samples on the learner ranks: it needs train.backend=ray")
