"""The RL loop of ARCHITECTURE.md ("The recipe"), one iteration at a time:

1. draw ``batch_size`` start states from the train split;
2. roll out ``group_size`` episodes from each, closed loop, at the rollout temperature;
3. reward = the success detector's verdict (0/1);
4. dynamic sampling: drop all-fail / all-success groups, draw more start states
   until the batch is full or ``max_sample_rounds`` is reached (then warn);
5. group-normalised advantages (or, with ``algo.advantage=gae``, PPO: the policy's value
   head values every chunk's observation, GAE over the chunks of each episode with the
   binary reward at its last chunk);
6. clipped policy loss with asymmetric bounds, aggregated (token mean by default),
   log-probs at the sampling temperature, old log-probs from sampling time;
7. minibatch AdamW with gradient accumulation and grad-norm clipping;
8. periodic greedy evaluation on the held-out start states.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pushcut import algos
from pushcut.build import build_collector, build_policy, build_pool
from pushcut.checkpoint import (
    clean_partial,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    resume_candidates,
    save_checkpoint,
    set_rng_state,
)
from pushcut.config import RunConfig, TrainConfig, check_continues, save_config, to_dict
from pushcut.contracts import INFO_COUNTERS, ObsBatch, Policy, TaskSpec, has_value_head
from pushcut.errors import CheckpointError, ConfigError
from pushcut.evaluate import eval_metrics, evaluate, stage_reach, write_report
from pushcut.events import MetricsFile, Progress, TensorBoardLogger
from pushcut.pluginmanager import PluginManager, get_plugin_manager
from pushcut.plots import plot_run
from pushcut.rollout import EpisodeBatch, RolloutCollector
from pushcut.rundir import CHECKPOINT_POLICY, RunDir
from pushcut.sampling import StartStateSampler, make_sampler, with_curriculum

log = logging.getLogger("pushcut")


def collect_batch(
    collector: RolloutCollector, sampler: StartStateSampler, config: RunConfig, progress: Progress | None = None
) -> tuple[EpisodeBatch | None, dict[str, float]]:
    """Steps 1–5: rollouts with dynamic sampling, then advantages. Returns the kept
    groups with their advantages (None when no group had mixed outcomes) and the
    rollout metrics. An estimator that needs a critic (``gae``) leaves the advantages
    unset: :func:`critic_targets` computes them per chunk with the policy's value head."""
    algo, train = config.algo, config.train
    estimator = None if algos.needs_values(algo.advantage) else algos.get_advantage_estimator(algo.advantage)
    kept: list[EpisodeBatch] = []
    collected: list[EpisodeBatch] = []
    groups_total = groups_failed = groups_kept = rounds = env_steps = 0
    policy_s = env_s = 0.0
    t0 = time.perf_counter()
    while groups_kept < train.batch_size and rounds < train.max_sample_rounds:
        starts = sampler.draw(train.batch_size - groups_kept)

        def show(done: int, total: int) -> None:
            if progress is not None:
                progress.status(f"rollout round {rounds + 1}: {done}/{total} episodes")

        batch, stats = collector.collect(starts, algo.group_size, algo.temperature, progress=show,
                                         group_offset=groups_total)
        collected.append(batch)
        sampler.observe(batch)
        env_steps += stats.env_steps
        policy_s += stats.policy_s
        env_s += stats.env_s
        for failure in stats.failures[:3]:
            log.warning("episode dropped: %s", failure)
        groups_total += batch.num_groups
        usable = batch.usable()
        groups_failed += batch.num_groups - usable.num_groups
        if len(usable):
            keep = algos.group_keep_mask(usable.rewards(), usable.group_index(), algo.accuracy_lower,
                                         algo.accuracy_upper)
            kept.append(usable.select(keep))
            groups_kept += kept[-1].num_groups
        rounds += 1
    if groups_kept < train.batch_size:
        log.warning(
            "dynamic sampling cap hit: %d of %d groups with mixed outcomes after %d rounds; training on what there is",
            groups_kept, train.batch_size, rounds,
        )
    everything = EpisodeBatch.concat(collected, algo.group_size)
    batch = EpisodeBatch.concat(kept, algo.group_size).first_groups(train.batch_size)
    metrics = rollout_metrics(everything, collector.tasks)
    metrics.update({
        "rollout/groups_total": float(groups_total),
        "rollout/groups_kept": float(batch.num_groups),
        "rollout/groups_failed": float(groups_failed),
        "rollout/sample_rounds": float(rounds),
        "rollout/env_steps": float(env_steps),
        "time/rollout_s": time.perf_counter() - t0,
        "time/rollout_policy_s": policy_s,
        "time/rollout_env_s": env_s,
    })
    metrics.update(sampler.metrics())  # e.g. curriculum/<task>/start_fraction
    if sampler.adaptive:  # where the next iteration's rollouts will go
        for task, weight in sampler.task_weights().items():
            metrics[f"rollout/draw_weight/{task}"] = weight
    if not len(batch):
        return None, metrics
    if estimator is None:
        return batch, metrics
    return batch.with_advantages(estimator(batch.rewards(), batch.group_index(), algo.eps)), metrics


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


def chunk_values(policy: Policy, batch: EpisodeBatch, micro_batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The value head's (N, C) values of every chunk's observation under the current weights
    (no gradient), and the (N, C) bool mask of real chunks."""
    n_chunks = [ep.num_chunks for ep in batch]
    values = torch.zeros(len(batch), max(n_chunks), dtype=torch.float32)
    mask = torch.arange(values.shape[1])[None, :] < torch.tensor(n_chunks)[:, None]
    rows = [(e, r) for e, n in enumerate(n_chunks) for r in range(n)]
    was_training = policy.training
    policy.eval()
    with torch.no_grad():
        for start in range(0, len(rows), micro_batch_size):
            part = rows[start:start + micro_batch_size]
            obs = ObsBatch.from_observations([batch[e].observations[r] for e, r in part],
                                             [batch[e].instruction for e, _ in part], [batch[e].task_id for e, _ in part])
            v = policy.values(obs).detach().float().cpu()
            if v.shape != (len(part),):
                raise ValueError(f"{type(policy).__name__}.values returned shape {tuple(v.shape)} for "
                                 f"{len(part)} observations; it must return (B,)")
            values[[e for e, _ in part], [r for _, r in part]] = v
    policy.train(was_training)
    return values, mask


def critic_targets(policy: Policy, batch: EpisodeBatch, config: RunConfig) -> tuple[ChunkTargets, dict[str, float]]:
    """Step 5 of PPO: value every chunk, put each episode's binary reward at its last chunk,
    and run the critic-based estimator (``algo.advantage``, GAE) over the chunks."""
    critic = config.algo.critic
    values, mask = chunk_values(policy, batch, config.train.micro_batch_size)
    rewards = algos.terminal_rewards(batch.rewards(), mask)
    estimate = algos.get_value_advantage_estimator(config.algo.advantage)(
        rewards, values, mask, gamma=critic.gamma, lam=critic.lam, whiten=critic.whiten_advantages)
    targets = ChunkTargets(estimate.advantages, estimate.returns, values, mask)
    metrics = {
        "critic/values_mean": float(algos.masked_mean(values, mask)),
        "critic/returns_mean": float(algos.masked_mean(estimate.returns, mask)),
        "critic/explained_variance": float(algos.explained_variance(values, estimate.returns, mask)),
    }
    return targets, metrics


def rollout_metrics(batch: EpisodeBatch, tasks: dict[str, TaskSpec]) -> dict[str, float]:
    """Success, length and stage reach of every collected episode (lost ones only counted)."""
    ok = batch.finished
    metrics = {
        "rollout/success_rate": float(np.mean([ep.success for ep in ok])) if ok else float("nan"),
        "rollout/episodes": float(len(batch)),
        "rollout/episodes_failed": float(len(batch) - len(ok)),
        "rollout/episode_length": float(np.mean([ep.length for ep in ok])) if ok else float("nan"),
    }
    counters: dict[str, float] = {}
    for ep in batch:  # lost episodes too: a refused command counts wherever the episode ended
        for key, value in ep.final_info.items():
            if key.startswith(INFO_COUNTERS) and isinstance(value, (int, float)) and not isinstance(value, bool):
                counters[key] = counters.get(key, 0.0) + float(value)
    metrics.update({f"rollout/{key}": value for key, value in sorted(counters.items())})
    for task in sorted({ep.task_id for ep in ok}):
        metrics[f"rollout/success/{task}"] = float(np.mean([ep.success for ep in ok if ep.task_id == task]))
    for task, shares in stage_reach(ok, {t: spec.stages for t, spec in tasks.items()}).items():
        for stage, share in shares.items():
            metrics[f"rollout/reached/{task}/{stage}"] = share
    return metrics


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

    ``shards`` (a :class:`pushcut.distributed.Shards`, on a learner rank) takes this rank's
    share of each minibatch's rows and sums gradients and statistics over the ranks before
    each step, so every rank applies the single-process update.

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
            rows = batch.rows(mb)
            if shards is not None:
                rows = shards.take(rows)
            optimizer.zero_grad(set_to_none=True)
            mb_loss = mb_value_loss = 0.0
            finite = True
            for m0 in range(0, len(rows), train.micro_batch_size):
                micro = rows[m0:m0 + train.micro_batch_size]
                obs, sample, old, mask = batch.gather([(mb[i], r) for i, r in micro])
                weights = torch.stack([ep_weights[i, r * t_len:(r + 1) * t_len] for i, r in micro]).to(device)
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
                n_tok = float(mask.sum())
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
                    break
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
            grad_norm = torch.nn.utils.clip_grad_norm_(params, train.grad_clip) if finite else torch.tensor(float("nan"))
            if value_params and finite:
                value_norm = torch.nn.utils.clip_grad_norm_(value_params, train.grad_clip)
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


class Trainer:
    """Owns the run: components, optimizer, sampler, checkpoints, metrics."""

    def __init__(self, config: RunConfig, manager: PluginManager | None = None) -> None:
        self.config = config
        self.paths = RunDir(config.run_dir)
        self.run_dir = self.paths.root
        self.manager = manager or get_plugin_manager()
        self.metrics_file = MetricsFile(self.run_dir)
        self.tensorboard = TensorBoardLogger()

    def _optimizer(self, policy: Policy) -> torch.optim.Optimizer:
        t = self.config.train
        params = list(policy.trainable_parameters())
        if not params:
            raise ConfigError("the policy has no trainable parameters: nothing to optimise")
        if not algos.needs_values(self.config.algo.advantage):
            return torch.optim.AdamW(params, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
        # PPO: the value head learns, at its own rate (a fresh head needs far more than the actor's lr)
        critic_lr = self.config.algo.critic.lr
        value_params = [p.requires_grad_(True) for p in policy.value_parameters()]
        value_ids = {id(p) for p in value_params}
        groups = [{"params": [p for p in params if id(p) not in value_ids], "lr": t.lr, "base_lr": t.lr},
                  {"params": value_params, "lr": critic_lr, "base_lr": critic_lr}]
        if not value_params:
            raise ConfigError(f"policy {type(policy).__name__}: value_parameters() is empty, so its value head "
                              "cannot learn; algo.advantage=gae needs a head with parameters")
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=t.lr, betas=t.betas,
                                 weight_decay=t.weight_decay)

    def run(self) -> dict[str, Any]:
        """Train for ``train.iterations`` iterations (resuming if possible)."""
        cfg, t = self.config, self.config.train
        if algos.needs_values(cfg.algo.advantage) and t.backend != "local":
            raise ConfigError(f"algo.advantage={cfg.algo.advantage} (PPO with a critic) runs with train.backend=local "
                              f"only, not {t.backend!r}; use train.backend=local or a group estimator (grpo)")
        if t.backend == "ray" and type(self) is Trainer:  # learner ranks on Ray, this process drives
            from pushcut.distributed import RayTrainer

            return RayTrainer(cfg, self.manager).run()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if list_checkpoints(self.run_dir):
            if not t.resume:
                raise ConfigError(f"{self.run_dir} already holds checkpoints and train.resume=false: "
                                  "use a new run_dir, or resume (train.resume=true)")
            check_continues(cfg, self.run_dir, manager=self.manager)
        save_config(cfg, self.run_dir)
        clean_partial(self.run_dir)
        if t.torch_threads:
            torch.set_num_threads(t.torch_threads)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        policy = build_policy(cfg, t.init_from or None)
        if algos.needs_values(cfg.algo.advantage) and not has_value_head(policy):
            raise ConfigError(
                f"algo.advantage={cfg.algo.advantage} needs a policy with a value head (values(obs) and "
                f"value_parameters(), see pushcut.contracts.ValueHead); policy.type={cfg.policy.type!r} "
                f"({type(policy).__name__}) has none: use algo.advantage=grpo, or a policy that has one (tiny, openvla)")
        policy.eval()
        optimizer = self._optimizer(policy)
        reference = None
        if cfg.algo.kl_coef > 0:  # only then: the recipe runs without a reference model
            reference = copy.deepcopy(policy).requires_grad_(False)
        generator = torch.Generator().manual_seed(cfg.seed)
        start_step = 0
        summary: dict[str, Any] = {"status": "failed"}
        progress = None
        collector = None
        pool = build_pool(cfg)
        self.manager.pm.register(self.tensorboard, name=f"tensorboard-{id(self)}")
        try:
            collector = build_collector(cfg, pool, policy)
            sampler = make_sampler(t.start_sampling, pool.tasks(), cfg.seed, cfg.algo.group_size)
            sampler = with_curriculum(sampler, cfg, pool)  # train.curriculum=reverse: demo starts on hard tasks
            ckpt, state = self._resume_point(policy) if t.resume else (None, None)
            if ckpt is not None:
                try:
                    optimizer.load_state_dict(state["optimizer"])
                except ValueError as exc:
                    raise CheckpointError(f"cannot resume from {ckpt}: the optimizer state does not fit this "
                                          f"policy's trainable parameters ({exc}); use a new run_dir") from None
                sampler.load_state_dict(state["sampler"])
                generator.set_state(state["generator"])
                set_rng_state(state["rng"])
                start_step = int(state["step"])
                log.info("resuming from %s (iteration %d)", ckpt, start_step)
            self.metrics_file.truncate_after(start_step if start_step else -1)
            self.manager.run_start(self.run_dir, to_dict(cfg), "train")
            progress = Progress(t.iterations, "train", start_step)
            if start_step == 0:
                sampler.begin(collector, self._evaluate(collector, 0, progress) if t.eval_at_start else None)
            for step in range(start_step + 1, t.iterations + 1):
                record = self._iteration(step, collector, sampler, policy, optimizer, generator, reference, progress)
                is_last = step == t.iterations
                if is_last or (t.eval_every and step % t.eval_every == 0):
                    record.update(self._evaluate(collector, step, progress, videos=is_last))
                # metrics first, checkpoint second: a checkpoint never exists without its metrics line
                self.metrics_file.append(record)
                self.manager.after_update(self.run_dir, step, record)
                if is_last or (t.save_every and step % t.save_every == 0):
                    save_checkpoint(self.run_dir, step, policy, {
                        "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
                        "generator": generator.get_state(),
                    }, keep=t.keep_checkpoints)
                progress.advance(step, _status(record))
            plot_run(self.run_dir, cfg.algo.temperature)
            history = self.metrics_file.read()
            evals = [r for r in history if r.get("eval/success_rate") is not None]
            summary = {
                "status": "completed",
                "iterations": t.iterations,
                "final_eval_success_rate": evals[-1]["eval/success_rate"] if evals else None,
                "checkpoint": str(latest_checkpoint(self.run_dir)),
            }
            return summary
        except KeyboardInterrupt:
            summary = {"status": "interrupted"}
            raise
        finally:
            if progress is not None:
                progress.close()
            pool.close()
            if collector is not None:
                collector.detector.close()  # e.g. the human judge's page
            self.manager.run_end(self.run_dir, summary)
            self.manager.pm.unregister(self.tensorboard)

    def _resume_point(self, policy: Policy) -> tuple[Path | None, dict[str, Any] | None]:
        """The newest checkpoint that verifies and loads into ``policy``, with its trainer state;
        damaged ones are skipped with a warning (and kept). (None, None) when there is none."""
        checkpoints = list_checkpoints(self.run_dir)
        for ckpt in resume_candidates(self.run_dir):
            try:
                state = load_trainer_state(ckpt)
                policy.load(ckpt / CHECKPOINT_POLICY)
            except Exception as exc:  # a damaged file the manifest did not cover, or an old unverified one
                log.warning("skipping checkpoint %s: it does not load (%s: %s); resuming from an earlier one",
                            ckpt, type(exc).__name__, exc)
                continue
            return ckpt, state
        if checkpoints:
            raise CheckpointError(
                f"none of the {len(checkpoints)} checkpoint(s) in {self.paths.checkpoints} verifies and loads "
                "(see the warnings above); restore one, or start afresh with train.resume=false in a new run_dir"
            )
        return None, None

    def _iteration(self, step, collector, sampler, policy, optimizer, generator, reference, progress) -> dict[str, Any]:
        batch, metrics = collect_batch(collector, sampler, self.config, progress)
        record: dict[str, Any] = {"step": step, **metrics}
        self.manager.after_rollout(self.run_dir, step, dict(metrics))
        t0 = time.perf_counter()
        if batch is None:
            log.warning("iteration %d: no group with mixed outcomes; no update", step)
            record["actor/skipped_updates"] = 1.0
        else:
            targets, actor = None, True
            if algos.needs_values(self.config.algo.advantage):
                progress.status(f"values of {sum(ep.num_chunks for ep in batch)} chunks")
                targets, critic_metrics = critic_targets(policy, batch, self.config)
                record.update(critic_metrics)
                actor = step > self.config.algo.critic.warmup_iterations
            progress.status(f"update on {len(batch)} episodes")
            record.update(update_policy(policy, optimizer, batch, self.config, generator, reference,
                                        targets=targets, actor=actor))
        record["time/update_s"] = time.perf_counter() - t0
        return record

    def _evaluate(self, collector: RolloutCollector, step: int, progress: Progress, videos: bool = False) -> dict[str, float]:
        e = self.config.eval

        def show(done: int, total: int) -> None:
            progress.status(f"eval {done}/{total}")

        t0 = time.perf_counter()
        report, paths = evaluate(collector, e.max_init_states, e.videos_per_task if videos else 0,
                                 self.paths.videos if videos else None, f"step{step:06d}", e.fps, show,
                                 e.temperature, e.samples_per_state, self.config.seed)
        report["step"] = step
        write_report(report, self.paths.eval_report(step))
        metrics = eval_metrics(report)
        metrics["time/eval_s"] = time.perf_counter() - t0
        if step == 0:
            self.metrics_file.append({"step": 0, **metrics})
        self.manager.after_eval(self.run_dir, step, metrics, paths)
        return metrics


def _status(record: dict[str, Any]) -> str:
    parts = [f"success {record['rollout/success_rate']:.2f}",
             f"kept {int(record['rollout/groups_kept'])}/{int(record['rollout/groups_total'])}"]
    if "eval/success_rate" in record and record["eval/success_rate"] is not None and not math.isnan(record["eval/success_rate"]):
        parts.append(f"eval {record['eval/success_rate']:.2f}")
    return " ".join(parts)
