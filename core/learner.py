"""The learner seam: where recipe steps 6–7 (the clipped policy update) run.

A :class:`Learner` owns the weights being trained and their optimizer. The trainer
hands it each iteration's batch (:meth:`Learner.update`), asks it to write and read
checkpoints (:meth:`Learner.save`, :meth:`Learner.load`) and, when the learner also
samples rollouts (``rollout.inference=learners``), for a collector
(:meth:`Learner.collector`). ``train.backend`` picks one from :data:`LEARNERS`:

* ``local`` — :class:`LocalLearner`: this process, the policy the rollouts use;
* ``ray`` — :class:`pushcut.distributed.RayLearners`: ``train.learners`` torch.distributed
  ranks as Ray actors, each holding the whole model (``train.strategy=replicate``) or an
  FSDP2 shard of it (``fsdp2``); with ``rollout.inference=learners`` the ranks also roll out.

:func:`update_policy` is the one update engine every learner runs (on a rank with its
:class:`Shards`), so every placement applies the single-process update.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pushcut import algos
from pushcut.config import RunConfig, TrainConfig
from pushcut.contracts import Policy
from pushcut.errors import CheckpointError
from pushcut.batch import EpisodeBatch
from pushcut.rundir import CHECKPOINT_POLICY

if TYPE_CHECKING:
    from pushcut.rollout import RolloutCollector

log = logging.getLogger("pushcut")

SHARDED_DIR = "learner"
"""A checkpoint's sharded learner state (``torch.distributed.checkpoint``: model and optimizer)."""


@dataclasses.dataclass(frozen=True)
class ChunkTargets:
    """PPO's per-chunk tensors of a batch, (N, C): N episodes padded to the longest one's C chunks.

    ``advantages`` (the actor's, broadcast to each chunk's T elements), ``returns`` (the
    critic's targets), ``values`` (the value head's at rollout time, the clip anchor of the
    value loss) and ``mask`` (True on real chunks)."""

    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor


@dataclasses.dataclass
class Shards:
    """Rank ``rank`` of ``world`` inside :func:`update_policy` (its ``shards``).

    ``sharded`` (FSDP2): the gradients are reduce-scattered by the sharded modules themselves
    during each backward, so every rank must run the same number of forward/backward passes
    per minibatch (:meth:`micro_batches` pads a short share with zero-weight passes) and the
    step only sums the statistics."""

    rank: int
    world: int
    sharded: bool = False

    def take(self, rows: list[Any]) -> list[Any]:
        """This rank's contiguous share of a minibatch's rows (shares differ by at most one)."""
        n = len(rows)
        return list(rows[self.rank * n // self.world:(self.rank + 1) * n // self.world])

    def micro_batches(self, share: int, rows: int, micro: int) -> int:
        """How many micro-batches this rank runs for its ``share`` of a minibatch of ``rows``:
        its own count, or, sharded, the largest share's (every rank joins every collective)."""
        if not self.sharded:
            return math.ceil(share / micro)
        return max(1, math.ceil(math.ceil(rows / self.world) / micro))

    def reduce_step(self, params: list[torch.nn.Parameter], finite: bool, loss: float) -> tuple[bool, float]:
        """Sum the gradients over ranks (a rank with no rows adds zeros; sharded: already
        summed); the minibatch is finite only if it is on every rank; the loss is the sum of
        the ranks' shares."""
        import torch.distributed as dist

        if not self.sharded:
            by_kind: dict[tuple[torch.dtype, torch.device], list[torch.nn.Parameter]] = {}
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                by_kind.setdefault((p.grad.dtype, p.grad.device), []).append(p)
            for group in by_kind.values():  # one collective per dtype, not one per tensor
                flat = torch.cat([p.grad.reshape(-1) for p in group])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                offset = 0
                for p in group:
                    p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                    offset += p.numel()
        stats = torch.tensor([0.0 if finite else 1.0, loss], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            stats = stats.cuda()
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        return bool(stats[0] == 0), float(stats[1])

    def reduce_sums(self, sums: dict[str, float], tokens: float) -> float:
        """Sum the per-token statistics (in place) and the token count over ranks. ``pg_loss`` is
        already a sum of whole-minibatch losses (identical on every rank) and is left as it is."""
        import torch.distributed as dist

        keys = [k for k in sums if k != "pg_loss"]
        values = torch.tensor([sums[k] for k in keys] + [tokens], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            values = values.cuda()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        for k, v in zip(keys, values[:-1].tolist()):
            sums[k] = v
        return float(values[-1])


def update_policy(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    batch: EpisodeBatch,
    config: RunConfig,
    generator: torch.Generator,
    reference: Policy | None = None,
    shards: Any = None,
    targets: ChunkTargets | None = None,
    actor: bool = True,
) -> dict[str, float]:
    """Steps 6–7 over one batch (with advantages): ``ppo_epochs`` passes of shuffled
    minibatches of episodes, each split into micro-batches of chunk rows whose gradients
    add up exactly to the minibatch loss (aggregation weights computed over the minibatch).

    ``shards`` (a :class:`Shards`, on a learner rank) takes this rank's share of each
    minibatch's rows and sums gradients and statistics over the ranks before each step, so
    every rank applies the single-process update.

    ``targets`` (PPO with a critic) gives every chunk row its own advantage and adds the
    value loss (mean over the minibatch's chunks, times ``algo.critic.value_coef``); the value
    head's gradients are clipped apart from the actor's. ``actor=False`` (the critic's
    warm-up) trains the value head alone: no policy loss, and only value parameters step."""
    algo, train = config.algo, config.train
    policy_loss = algos.get_policy_loss(algo.policy_loss)
    device = policy.device
    if batch.advantages is None and targets is None:
        raise ValueError("update_policy needs a batch with advantages (EpisodeBatch.with_advantages) "
                         "or per-chunk targets (critic_targets)")
    if targets is not None and shards is not None:
        raise ValueError("PPO with a critic (per-chunk targets) does not run on learner ranks yet")
    if not actor and targets is None:
        raise ValueError("actor=False (critic warm-up) needs per-chunk targets")
    params = [p for p in policy.trainable_parameters()]
    value_params: list[torch.nn.Parameter] = []
    value_loss = None
    if targets is not None:
        value_params = list(policy.value_parameters())
        value_ids = {id(p) for p in value_params}
        params = [p for p in params if id(p) not in value_ids]
        value_loss = algos.get_value_loss(algo.critic.value_loss)
    sums: dict[str, float] = {"pg_loss": 0.0, "clipfrac": 0.0, "ppo_kl": 0.0, "entropy": 0.0, "kl": 0.0,
                              "value_loss": 0.0, "vf_clipfrac": 0.0}
    grad_norms: list[float] = []
    value_grad_norms: list[float] = []
    value_rows = 0.0
    tokens_seen = 0.0
    steps = skipped = 0
    t_len = batch.token_len
    policy.train()
    for _ in range(train.ppo_epochs):
        order = torch.randperm(len(batch), generator=generator).tolist()
        for start in range(0, len(order), train.minibatch_size):
            mb = order[start:start + train.minibatch_size]
            ep_weights = algos.aggregation_weights(batch.episode_mask(mb), algo.loss_agg_mode)
            all_rows = batch.rows(mb)
            rows = shards.take(all_rows) if shards is not None else all_rows
            optimizer.zero_grad(set_to_none=True)
            mb_loss = mb_value_loss = 0.0
            finite = True
            n_micro = shards.micro_batches(len(rows), len(all_rows), train.micro_batch_size) if shards else \
                math.ceil(len(rows) / train.micro_batch_size)
            for m in range(n_micro):
                micro = rows[m * train.micro_batch_size:(m + 1) * train.micro_batch_size]
                padding = not micro  # a sharded rank past its share: one zero-weight pass keeps the collectives paired
                if padding:
                    micro = all_rows[:1]
                obs, sample, old, mask = batch.gather([(mb[i], r) for i, r in micro])
                weights = torch.stack([ep_weights[i, r * t_len:(r + 1) * t_len] for i, r in micro]).to(device)
                if padding:
                    weights = weights * 0.0
                if targets is None:
                    adv = batch.advantages[[mb[i] for i, _ in micro]].to(device)[:, None].expand(-1, t_len)
                else:  # per chunk: each chunk's advantage broadcast to its T elements
                    picks = ([mb[i] for i, _ in micro], [r for _, r in micro])
                    adv = targets.advantages[picks].to(device)[:, None].expand(-1, t_len)
                sample = {k: v.to(device) for k, v in sample.items()}
                old, mask = old.to(device), mask.to(device)
                scores = policy.log_probs(obs, sample, algo.temperature)
                out = policy_loss(scores.log_probs, old, adv, mask, clip_ratio_low=algo.clip_ratio_low,
                                  clip_ratio_high=algo.clip_ratio_high, clip_ratio_c=algo.clip_ratio_c)
                loss = algos.weighted_loss(out.loss_mat, weights)
                if not actor:
                    loss = loss.detach() * 0.0
                if targets is not None:
                    new_values = scores.values if scores.values is not None else policy.values(obs)
                    vl = value_loss(new_values.reshape(-1, 1),
                                    targets.values[picks].to(device)[:, None],
                                    targets.returns[picks].to(device)[:, None],
                                    torch.ones(len(micro), 1, dtype=torch.bool, device=device),
                                    cliprange_value=algo.critic.cliprange_value)
                    # the mean over the minibatch's chunk rows, split exactly across micro-batches
                    v_loss = vl.loss_mat.sum() / len(rows)
                    loss = loss + algo.critic.value_coef * v_loss
                    mb_value_loss += float(v_loss.detach())
                    sums["vf_clipfrac"] += float(vl.vf_clipfrac) * len(micro)
                    value_rows += len(micro)
                n_tok = 0.0 if padding else float(mask.sum())
                if algo.entropy_coeff and scores.entropy is not None:
                    loss = loss - algo.entropy_coeff * algos.weighted_loss(scores.entropy, weights)
                if reference is not None:
                    with torch.no_grad():
                        ref = reference.log_probs(obs, sample, algo.temperature).log_probs
                    kl = algos.kl_penalty(scores.log_probs, ref, algo.kl_type)
                    loss = loss + algo.kl_coef * algos.weighted_loss(kl, weights)
                    sums["kl"] += float(algos.masked_mean(kl.detach(), mask)) * n_tok
                if not torch.isfinite(loss):
                    finite = False
                    if shards is None or not shards.sharded:
                        break
                    loss = loss * 0.0  # sharded: every rank still runs its backward; the step is skipped below
                if not loss.requires_grad:  # rows served only by frozen weights (a TinyVLA task's frozen adapter)
                    if shards is not None and shards.sharded:
                        raise RuntimeError(
                            "a micro-batch has no gradient path (its rows use only frozen weights) on a sharded learner "
                            "rank, which must still join the gradient reduction: train such a policy with "
                            "train.strategy=replicate")
                elif shards is not None and shards.sharded:
                    (loss * shards.world).backward()  # FSDP2 averages gradients over ranks; the update needs their sum
                else:
                    loss.backward()
                mb_loss += float(loss.detach())
                sums["clipfrac"] += float(out.pg_clipfrac) * n_tok
                sums["ppo_kl"] += float(out.ppo_kl) * n_tok
                if scores.entropy is not None:
                    sums["entropy"] += float(algos.masked_mean(scores.entropy.detach(), mask)) * n_tok
                tokens_seen += n_tok
            if shards is not None:
                finite, mb_loss = shards.reduce_step(params, finite, mb_loss)
            if not actor:  # critic warm-up: only the value head steps
                for p in params:
                    p.grad = None
            grad_norm = _full(torch.nn.utils.clip_grad_norm_(params, train.grad_clip)) if finite \
                else torch.tensor(float("nan"))
            if value_params and finite:
                value_norm = _full(torch.nn.utils.clip_grad_norm_(value_params, train.grad_clip))
                if not torch.isfinite(value_norm):
                    finite = False
                else:
                    value_grad_norms.append(float(value_norm))
            if not actor and finite:
                grad_norm = torch.zeros(())
            if not finite or not torch.isfinite(grad_norm):
                # never apply a NaN update: drop this minibatch, count it, keep the weights
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                log.warning("skipped a minibatch update: non-finite %s", "loss" if not finite else "gradient norm")
                continue
            warmup_lr(optimizer, train)
            optimizer.step()
            steps += 1
            sums["pg_loss"] += mb_loss - algo.critic.value_coef * mb_value_loss if targets is not None else mb_loss
            sums["value_loss"] += mb_value_loss
            if actor:
                grad_norms.append(float(grad_norm))
    if shards is not None:
        tokens_seen = shards.reduce_sums(sums, tokens_seen)
    policy.eval()
    tok = max(tokens_seen, 1.0)
    metrics = {
        "actor/pg_loss": sums["pg_loss"] / max(steps, 1),
        "actor/pg_clipfrac": sums["clipfrac"] / tok,
        "actor/ppo_kl": sums["ppo_kl"] / tok,
        "actor/entropy": sums["entropy"] / tok,
        "actor/grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan"),
        "actor/optimizer_steps": float(steps),
        "actor/lr": float(optimizer.param_groups[0]["lr"]),
        "actor/skipped_updates": float(skipped),
    }
    if targets is None:
        metrics["actor/advantage_abs_mean"] = float(batch.advantages.abs().mean())
    else:
        metrics.update({
            "actor/advantage_abs_mean": float(algos.masked_mean(targets.advantages.abs(), targets.mask)),
            "critic/value_loss": sums["value_loss"] / max(steps, 1),
            "critic/vf_clipfrac": sums["vf_clipfrac"] / max(value_rows, 1.0),
            "critic/grad_norm": float(np.mean(value_grad_norms)) if value_grad_norms else float("nan"),
            "critic/warmup": float(not actor),
        })
        if not actor:
            for key in ("actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl", "actor/entropy"):
                metrics[key] = float("nan")
    if reference is not None:
        metrics["actor/kl"] = sums["kl"] / tok
    return metrics


def warmup_lr(optimizer: torch.optim.Optimizer, train: TrainConfig) -> None:
    """Set the learning rate of the coming step: linear warmup over ``train.lr_warmup_steps``
    optimiser steps. The step count is AdamW's own, so a resumed run picks up where it was."""
    if not train.lr_warmup_steps:
        return
    done = max((int(s["step"]) for s in optimizer.state.values() if "step" in s), default=0)
    for group in optimizer.param_groups:  # a group with its own base_lr (the critic's) warms up to that
        group["lr"] = group.get("base_lr", train.lr) * min(1.0, (done + 1) / train.lr_warmup_steps)



def _full(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (over sharded parameters it is a DTensor)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


# --------------------------------------------------------------------------- the seam


class Learner(abc.ABC):
    """Holds the weights being trained and applies recipe steps 6–7 to them."""

    version: int = 0
    """Updates applied so far (``actor/weight_version``)."""

    @abc.abstractmethod
    def update(self, batch: EpisodeBatch, generator: torch.Generator, targets: ChunkTargets | None = None,
               actor: bool = True, rollout_version: int | None = None) -> dict[str, float]:
        """One iteration's update over ``batch`` (with advantages, or with PPO ``targets``).
        ``generator`` shuffles the minibatches and is left where the update leaves it;
        ``rollout_version`` is the weight version the batch was sampled with."""

    @abc.abstractmethod
    def save(self, directory: Path) -> dict[str, Any]:
        """Write the policy (``directory/policy``) and any sharded state into a checkpoint being
        written; return the entries the checkpoint's trainer state holds for this learner."""

    @abc.abstractmethod
    def load(self, checkpoint: Path, state: dict[str, Any]) -> None:
        """Continue from ``checkpoint`` (its trainer ``state`` already read; the driver's policy
        already loaded from its ``policy/``). :class:`CheckpointError` when it does not fit."""

    def collector(self) -> RolloutCollector | None:
        """A collector that samples on the learner itself (``rollout.inference=learners``), else None."""
        return None

    def close(self) -> None:
        """Release ranks, processes and memory."""


class LocalLearner(Learner):
    """The update in this process, on the policy the rollouts use (``train.backend=local``)."""

    def __init__(self, config: RunConfig, policy: Policy, optimizer: torch.optim.Optimizer,
                 reference: Policy | None = None) -> None:
        self.config, self.policy, self.optimizer, self.reference = config, policy, optimizer, reference
        self.version = 0

    def update(self, batch: EpisodeBatch, generator: torch.Generator, targets: ChunkTargets | None = None,
               actor: bool = True, rollout_version: int | None = None) -> dict[str, float]:
        metrics = update_policy(self.policy, self.optimizer, batch, self.config, generator, self.reference,
                                targets=targets, actor=actor)
        self.version += 1
        return metrics

    def save(self, directory: Path) -> dict[str, Any]:
        self.policy.save(directory / CHECKPOINT_POLICY)
        return {"optimizer": self.optimizer.state_dict()}

    def load(self, checkpoint: Path, state: dict[str, Any]) -> None:
        if "optimizer" not in state and (checkpoint / SHARDED_DIR).is_dir():
            load_sharded_optimizer(self.policy, self.optimizer, checkpoint / SHARDED_DIR)
            return
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise CheckpointError(f"cannot resume from {checkpoint}: the optimizer state does not fit this "
                                  f"policy's trainable parameters ({exc}); use a new run_dir") from None


def load_sharded_optimizer(policy: Policy, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """The optimizer state of a sharded checkpoint (``torch.distributed.checkpoint``, written by
    any number of FSDP2 ranks) into a single-process ``optimizer`` over ``policy``: the
    conversion path from ``train.strategy=fsdp2`` to ``train.backend=local``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    template = {"optim": get_optimizer_state_dict(policy, optimizer)}
    try:
        dcp.load(template, checkpoint_id=str(directory))
    except Exception as exc:
        raise CheckpointError(f"cannot read the sharded optimizer state in {directory} into this policy's optimizer "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    set_optimizer_state_dict(policy, optimizer, template["optim"])


LEARNERS: dict[str, str] = {"local": "pushcut.learner:LocalLearner", "ray": "pushcut.distributed:RayLearners"}
"""``train.backend`` → the learner class, as an import reference (Ray is imported only when chosen)."""


def make_learner(config: RunConfig, policy: Policy, optimizer: torch.optim.Optimizer,
                 reference: Policy | None, manager: Any) -> Learner:
    """The learner ``train.backend`` names, starting from ``policy`` (and its ``optimizer``)."""
    module, _, name = LEARNERS[config.train.backend].partition(":")
    cls = getattr(importlib.import_module(module), name)
    if cls is LocalLearner:
        return LocalLearner(config, policy, optimizer, reference)
    return cls(config, policy, optimizer, reference, manager)
