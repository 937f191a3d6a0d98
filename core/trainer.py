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

import concurrent.futures
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
from pushcut.batch import EpisodeBatch
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
from pushcut.config import RunConfig
from pushcut.configio import to_dict
from pushcut.contracts import INFO_COUNTERS, ObsBatch, Policy, TaskSpec, has_value_head
from pushcut.errors import CheckpointError, ConfigError
from pushcut.evaluate import eval_metrics, evaluate, stage_reach, write_report
from pushcut.events import MetricsFile, Progress, TensorBoardLogger
from pushcut.learner import ChunkTargets, Learner, make_learner
from pushcut.plots import plot_run
from pushcut.pluginmanager import PluginManager, get_plugin_manager
from pushcut.rollout import RolloutCollector
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


@dataclasses.dataclass
class RunState:
    """What one iteration works with, and where the run is."""

    collector: RolloutCollector
    sampler: StartStateSampler
    learner: Learner
    generator: torch.Generator
    """Shuffles the update's minibatches (checkpointed)."""
    step: int = 0
    """The last iteration done (0 before the first)."""
    progress: Progress | None = None
    rollout_policy: Policy | None = None
    """The policy the collector samples with: the learner's own, or (``train.async_rollouts``) a copy one
    update behind it."""
    rollout_version: int = 0
    """The weight version ``rollout_policy`` holds."""
    prefetched: tuple[tuple[EpisodeBatch | None, dict[str, float]], int] | None = None
    """The next iteration's rollouts, collected while this one's update ran, with their weight version."""


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
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if list_checkpoints(self.run_dir):
            if not t.resume:
                raise ConfigError(f"{self.run_dir} already holds checkpoints and train.resume=false: "
                                  "use a new run_dir, or resume (train.resume=true)")
            self.paths.check_continues(cfg, manager=self.manager)
        self.paths.save_config(cfg)
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
        reference = None
        if cfg.algo.kl_coef > 0:  # only then: the recipe runs without a reference model
            reference = copy.deepcopy(policy).requires_grad_(False)
        generator = torch.Generator().manual_seed(cfg.seed)
        summary: dict[str, Any] = {"status": "failed"}
        progress = collector = learner = pool = None
        self.manager.pm.register(self.tensorboard, name=f"tensorboard-{id(self)}")
        try:
            learner = make_learner(cfg, policy, self._optimizer(policy), reference, self.manager)
            collector = learner.collector()  # rollout.inference=learners: the ranks sample
            rollout_policy = copy.deepcopy(policy) if t.async_rollouts else policy
            if collector is None:
                pool = build_pool(cfg)
                collector = build_collector(cfg, pool, rollout_policy)
            sampler = make_sampler(t.start_sampling, list(collector.tasks.values()), cfg.seed, cfg.algo.group_size)
            sampler = with_curriculum(sampler, cfg, pool)  # train.curriculum=reverse: demo starts on hard tasks
            run = RunState(collector, sampler, learner, generator, rollout_policy=rollout_policy)
            ckpt, state = self._resume_point(policy) if t.resume else (None, None)
            if ckpt is not None:
                learner.load(ckpt, state)
                sampler.load_state_dict(state["sampler"])
                generator.set_state(state["generator"])
                set_rng_state(state["rng"])
                run.step = int(state["step"])
                self._sync_rollout_policy(run)
                log.info("resuming from %s (iteration %d)", ckpt, run.step)
            self.metrics_file.truncate_after(run.step if run.step else -1)
            self.manager.run_start(self.run_dir, to_dict(cfg), "train")
            progress = run.progress = Progress(t.iterations, "train", run.step)
            if run.step == 0:
                sampler.begin(collector, self._evaluate(collector, 0, progress) if t.eval_at_start else None)
            for step in range(run.step + 1, t.iterations + 1):
                run.step = step
                is_last = step == t.iterations
                saves = is_last or bool(t.save_every and step % t.save_every == 0)
                # async: collect the next iteration's rollouts during this update, except before a checkpoint
                # (which holds no rollouts), so a resumed run repeats the uninterrupted one
                record = self._iteration(run, prefetch=t.async_rollouts and not saves)
                if is_last or (t.eval_every and step % t.eval_every == 0):
                    record.update(self._evaluate(collector, step, progress, videos=is_last))
                # metrics first, checkpoint second: a checkpoint never exists without its metrics line
                self.metrics_file.append(record)
                self.manager.after_update(self.run_dir, step, record)
                if saves:
                    save_checkpoint(self.run_dir, step, learner.save, {
                        "sampler": sampler.state_dict(), "generator": generator.get_state(),
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
            if pool is not None:
                pool.close()
            if collector is not None:
                collector.detector.close()  # e.g. the human judge's page
            if learner is not None:
                learner.close()
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

    def _iteration(self, run: RunState, prefetch: bool = False) -> dict[str, Any]:
        """Rollouts (or the ones prefetched during the last update), then the update; with ``prefetch``
        the next iteration's rollouts are collected, with the weights from before this update,
        while the update runs in a thread."""
        t_start = time.perf_counter()
        if run.prefetched is not None:
            (batch, metrics), rollout_version = run.prefetched
            run.prefetched = None
        else:
            rollout_version = run.rollout_version
            batch, metrics = collect_batch(run.collector, run.sampler, self.config, run.progress)
        record: dict[str, Any] = {"step": run.step, **metrics}
        self.manager.after_rollout(self.run_dir, run.step, dict(metrics))
        t0 = time.perf_counter()
        version = run.learner.version
        if batch is None:
            log.warning("iteration %d: no group with mixed outcomes; no update", run.step)
            record["actor/skipped_updates"] = 1.0
            if prefetch:  # nothing to overlap with: the next rollouts now, with the same weights
                next_rollouts = collect_batch(run.collector, run.sampler, self.config, run.progress)
                run.prefetched = next_rollouts, run.rollout_version
        elif prefetch:
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pushcut-update") as pool:
                update = pool.submit(self._update, run, batch, record, rollout_version)
                run.prefetched = collect_batch(run.collector, run.sampler, self.config, None), run.rollout_version
                record.update(update.result())
        else:
            record.update(self._update(run, batch, record, rollout_version))
        self._sync_rollout_policy(run)
        record["rollout/stale_versions"] = float(version - rollout_version)
        record["time/update_s"] = time.perf_counter() - t0
        record["time/iteration_s"] = time.perf_counter() - t_start
        return record

    def _update(self, run: RunState, batch: EpisodeBatch, record: dict[str, Any], rollout_version: int) -> dict[str, Any]:
        targets, actor = None, True
        if algos.needs_values(self.config.algo.advantage):
            run.progress.status(f"values of {sum(ep.num_chunks for ep in batch)} chunks")
            targets, critic_metrics = critic_targets(run.learner.policy, batch, self.config)
            record.update(critic_metrics)
            actor = run.step > self.config.algo.critic.warmup_iterations
        run.progress.status(f"update on {len(batch)} episodes")
        return run.learner.update(batch, run.generator, targets, actor, rollout_version)

    @staticmethod
    def _sync_rollout_policy(run: RunState) -> None:
        """The rollout policy takes the learner's newest weights (a no-op when they are one policy)."""
        if run.rollout_policy is not None and run.rollout_policy is not getattr(run.learner, "policy", None):
            run.rollout_policy.load_state_dict(run.learner.policy.state_dict())
        run.rollout_version = run.learner.version

    def _evaluate(self, collector: RolloutCollector, step: int, progress: Progress, videos: bool = False) -> dict[str, float]:
        e = self.config.eval

        def show(done: int, total: int) -> None:
            progress.status(f"eval {done}/{total}")

        t0 = time.perf_counter()
        report, paths = evaluate(collector, e, seed=self.config.seed, video_dir=self.paths.videos if videos else None,
                                 video_prefix=f"step{step:06d}", split="eval", progress=show)
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
