"""Learner ranks: the trainer's update on ``train.learners`` torch.distributed ranks (Ray actors).

``train.backend=ray`` keeps the run's loop in this (driver) process — rollouts
with the policy here, checkpoints, evaluation, metrics — and moves the update
(:func:`pushcut.trainer.update_policy`, unchanged) onto ``W`` learner ranks. Every
rank holds the whole policy and optimizer and walks the same shuffled minibatches
(one generator state, handed out with each update). :class:`Shards` gives rank
``r`` its contiguous share of each minibatch's (episode, chunk) rows; the
aggregation weights are still computed over the whole minibatch, so the ranks'
losses add up to the single-process minibatch loss. Gradients are summed with
one ``all_reduce`` per dtype before the usual clip + AdamW step, which every rank
then applies identically. The update therefore equals the single-process one up
to the order of float additions (the test bounds the difference).

After each update rank 0's trainable weights are copied into the driver's policy,
so every rollout uses the newest weights (``actor/weight_version`` counts updates,
``rollout/stale_versions`` how many versions the rollout policy lagged: 0 here).
The optimizer state a checkpoint holds is rank 0's, in the single-process format:
a run resumes on any number of ranks, or with ``train.backend=local``.

Backends: gloo on CPU, NCCL when ``train.device`` is CUDA (one GPU per rank).
Ranks replicate the model (DDP-style); sharding it (FSDP2) is not implemented.
"""

from __future__ import annotations

import datetime
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pushcut.config import AlgoConfig, RunConfig, TrainConfig, build_dataclass, to_dict
from pushcut.contracts import Policy
from pushcut.envpool.ray import check_free, connect, import_ray
from pushcut.envpool.spec import import_ref
from pushcut.errors import ConfigError, PushcutError
from pushcut.rollout import EpisodeBatch
from pushcut.trainer import Trainer, collect_batch, update_policy

log = logging.getLogger("pushcut")

PROCESS_GROUP_TIMEOUT_S = 1800.0
"""A collective that waits longer than this (a rank lost mid-update) raises instead of hanging."""


@dataclass
class Shards:
    """Rank ``rank`` of ``world`` inside :func:`~pushcut.trainer.update_policy` (its ``shards``)."""

    rank: int
    world: int

    def take(self, rows: Sequence[Any]) -> list[Any]:
        """This rank's contiguous share of a minibatch's rows (shares differ by at most one)."""
        n = len(rows)
        return list(rows[self.rank * n // self.world:(self.rank + 1) * n // self.world])

    def reduce_step(self, params: list[torch.nn.Parameter], finite: bool, loss: float) -> tuple[bool, float]:
        """Sum the gradients over ranks (a rank with no rows adds zeros); the minibatch is finite
        only if it is on every rank; the loss is the sum of the ranks' shares."""
        import torch.distributed as dist

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
        device = params[0].device
        stats = torch.tensor([0.0 if finite else 1.0, loss], dtype=torch.float64, device=device)
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        return bool(stats[0] == 0), float(stats[1])

    def reduce_sums(self, sums: dict[str, float], tokens: float) -> float:
        """Sum the per-token statistics (in place) and the token count over ranks. ``pg_loss`` is
        already a sum of whole-minibatch losses (identical on every rank) and is left as it is."""
        import torch.distributed as dist

        keys = [k for k in sums if k != "pg_loss"]
        values = torch.tensor([sums[k] for k in keys] + [tokens], dtype=torch.float64)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        for k, v in zip(keys, values[:-1].tolist()):
            sums[k] = v
        return float(values[-1])


# --------------------------------------------------------------------------- what a rank builds


def policy_plugins(manager: Any, name: str) -> tuple[str, ...]:
    """Import references of the plugin that registered policy ``name``, for a rank's own registry
    (as :meth:`pushcut.envpool.EnvSpec.from_registry` does for envs)."""
    entry = manager.policies.get(name)
    info = manager.infos.get(entry.plugin)
    if info is not None and info.source != "<in-process>":
        return (info.source,)
    ref = import_ref(manager.pm.get_plugin(entry.plugin))
    return (ref,) if ref else ()


def rank_spec(config: RunConfig, manager: Any) -> dict[str, Any]:
    """What a learner rank needs, as plain data: the policy by registered name and options, the
    plugins that register it, and the algo / train sections."""
    return {"policy": config.policy.type, "options": to_dict(config.policy.options) if config.policy.options else {},
            "plugins": list(policy_plugins(manager, config.policy.type)), "algo": to_dict(config.algo),
            "train": to_dict(config.train), "seed": config.seed}


class LearnerRank:
    """One learner rank (wrapped with ``ray.remote`` by :class:`LearnerGroup`)."""

    def __init__(self, spec: dict[str, Any], rank: int, world: int, path: list[str]) -> None:
        import os
        import sys

        sys.path[:0] = [p for p in path if p not in sys.path and os.path.isdir(p)]
        from pushcut.pluginmanager import PluginManager

        manager = PluginManager.from_refs(spec["plugins"], autoload=not spec["plugins"])
        entry = manager.policies.get(spec["policy"])
        self.config = RunConfig(algo=build_dataclass(AlgoConfig, spec["algo"], "algo"),
                                train=build_dataclass(TrainConfig, spec["train"], "train"), seed=spec["seed"])
        t = self.config.train
        torch.set_num_threads(t.torch_threads or max(1, int(t.learner_num_cpus)))
        self.device = "cuda" if t.device.startswith("cuda") else t.device
        torch.manual_seed(spec["seed"])
        self.policy: Policy = entry.build(build_dataclass(entry.config_class, spec["options"], "policy")).to(self.device)
        self.policy.eval()
        self.optimizer = torch.optim.AdamW(list(self.policy.trainable_parameters()), lr=t.lr, betas=t.betas,
                                           weight_decay=t.weight_decay)
        self.reference: Policy | None = None
        self.shards = Shards(rank, world)
        self.generator = torch.Generator().manual_seed(spec["seed"])
        self.version = 0

    def address(self) -> tuple[str, int]:
        """This node's address and a free port, for the process group's rendezvous (rank 0)."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def join(self, host: str, port: int) -> None:
        import torch.distributed as dist

        backend = "nccl" if self.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=self.shards.rank,
                                world_size=self.shards.world,
                                timeout=datetime.timedelta(seconds=PROCESS_GROUP_TIMEOUT_S))

    def load(self, weights: dict[str, torch.Tensor], optimizer: dict[str, Any] | None,
             reference: dict[str, torch.Tensor] | None, version: int) -> None:
        """Start from the driver's weights (its init, init_from or resumed checkpoint)."""
        self.policy.load_state_dict(weights)
        if optimizer is not None:
            self.optimizer.load_state_dict(optimizer)
        if reference is not None:
            import copy

            self.reference = copy.deepcopy(self.policy).requires_grad_(False)
            self.reference.load_state_dict(reference)
        self.version = version

    def update(self, batch: EpisodeBatch, generator_state: torch.Tensor, send_weights: bool) -> dict[str, Any]:
        self.generator.set_state(generator_state)
        metrics = update_policy(self.policy, self.optimizer, batch, self.config, self.generator, self.reference,
                                shards=self.shards)
        self.version += 1
        out: dict[str, Any] = {"metrics": metrics, "generator": self.generator.get_state(), "version": self.version}
        if send_weights:
            out["weights"] = trainable_state(self.policy)
        return out

    def optimizer_state(self) -> dict[str, Any]:
        return _to_cpu(self.optimizer.state_dict())

    def leave(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def trainable_state(policy: Policy) -> dict[str, torch.Tensor]:
    """Name → CPU copy of each trainable parameter (what the driver needs after an update)."""
    return {name: p.detach().cpu().clone() for name, p in policy.named_parameters() if p.requires_grad}


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- the driver's side


def check_capacity(ray: Any, config: RunConfig) -> None:
    """One ConfigError line when the cluster cannot hold ``train.learners`` ranks (and, with
    ``rollout.transport=ray``, the env actors besides), before anything is placed."""
    train, rollout = config.train, config.rollout
    total = ray.cluster_resources()
    if train.device.startswith("cuda"):
        gpus = int(total.get("GPU", 0))
        if train.learners > gpus:
            raise ConfigError(f"train.learners={train.learners} learner ranks need one GPU each, the Ray cluster has "
                              f"{gpus}: set train.learners<={gpus} or add GPU nodes (ray start --address=...)")
    what = f"train.learners={train.learners} rank(s) × train.learner_num_cpus={train.learner_num_cpus:g}"
    cpus = train.learners * train.learner_num_cpus
    if rollout.transport == "ray":
        what += f" and rollout.num_workers={rollout.num_workers} env actor(s) × rollout.ray_num_cpus={rollout.ray_num_cpus:g}"
        cpus += rollout.num_workers * rollout.ray_num_cpus
    check_free(ray, cpus, 0.0, what)


class LearnerGroup:
    """The driver's handle on the ranks; stands in for the optimizer in :class:`~pushcut.trainer.Trainer`
    (``state_dict`` / ``load_state_dict`` for checkpoints) and runs the update."""

    def __init__(self, config: RunConfig, policy: Policy, local_optimizer: torch.optim.Optimizer,
                 manager: Any) -> None:
        import os
        import sys

        t, r = config.train, config.rollout
        env_cpus = r.num_workers * r.ray_num_cpus if r.transport == "ray" else 0.0
        self.ray = ray = connect("train.backend=ray", t.learners * t.learner_num_cpus + env_cpus)
        check_capacity(ray, config)
        self.policy, self.local = policy, local_optimizer
        self.version = 0
        self._pushed = False
        self._optimizer_state: dict[str, Any] | None = None
        path = [p for p in sys.path if p and os.path.isdir(p)]
        spec = rank_spec(config, manager)
        gpus = 1 if t.device.startswith("cuda") else 0
        cls = ray.remote(LearnerRank)
        self.ranks = [cls.options(num_cpus=t.learner_num_cpus, num_gpus=gpus, max_restarts=0)
                      .remote(spec, r, t.learners, path) for r in range(t.learners)]
        try:
            host, port = self._get([self.ranks[0].address.remote()], config.rollout.startup_timeout_s,
                                   "start")[0]
            self._get([r.join.remote(host, port) for r in self.ranks], config.rollout.startup_timeout_s, "join")
        except BaseException:
            self.shutdown()
            raise

    def _get(self, refs: list[Any], timeout: float | None, what: str) -> list[Any]:
        """Every result, or one error line as soon as any rank fails (never a wait on the others)."""
        ray = self.ray
        pending, deadline = list(refs), None if timeout is None else time.monotonic() + timeout
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = ray.wait(pending, num_returns=1, timeout=left)
            if not done:
                raise PushcutError(f"learner ranks did not {what} within {timeout:.0f} s: the cluster may lack "
                                   f"the resources they ask for (`ray status`)")
            try:
                ray.get(done[0])
            except Exception as exc:
                rank = refs.index(done[0]) if what != "start" else 0
                first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
                raise PushcutError(f"learner rank {rank} failed to {what} ({type(exc).__name__}: {first[:200]}); "
                                   "the run can continue from its last checkpoint (train.resume=true)") from None
        return ray.get(refs)

    # the optimizer's face, for Trainer.run's checkpoints and resume
    def state_dict(self) -> dict[str, Any]:
        if not self._pushed:
            return self.local.state_dict()
        return self._get([self.ranks[0].optimizer_state.remote()], None, "send its optimizer state")[0]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.local.load_state_dict(state)  # a ValueError here when the state does not fit the policy
        self._optimizer_state = state
        self._pushed = False

    def update(self, batch: EpisodeBatch, generator: torch.Generator, reference: Policy | None,
               rollout_version: int) -> dict[str, float]:
        """The update on every rank; the driver's policy and generator come back in sync with rank 0."""
        ray = self.ray
        if not self._pushed:
            weights = ray.put({k: v.detach().cpu() for k, v in self.policy.state_dict().items()})
            ref_weights = None if reference is None else {k: v.cpu() for k, v in reference.state_dict().items()}
            self._get([r.load.remote(weights, self._optimizer_state, ref_weights, self.version) for r in self.ranks],
                      None, "load the driver's weights")
            self._pushed = True
        shared = ray.put(batch)
        state = generator.get_state()
        outs = self._get([r.update.remote(shared, state, i == 0) for i, r in enumerate(self.ranks)], None, "update")
        first = outs[0]
        generator.set_state(first["generator"])
        with torch.no_grad():
            params = dict(self.policy.named_parameters())
            for name, value in first["weights"].items():
                params[name].copy_(value.to(params[name].device))
        self.version = int(first["version"])
        metrics = dict(first["metrics"])
        metrics["actor/weight_version"] = float(self.version)
        metrics["rollout/stale_versions"] = float(self.version - 1 - rollout_version)
        return metrics

    def shutdown(self) -> None:
        for r in getattr(self, "ranks", []):
            try:
                self.ray.get(r.leave.remote(), timeout=10)
            except Exception:
                pass
            try:
                self.ray.kill(r, no_restart=True)
            except Exception:
                pass
        self.ranks = []


class RayTrainer(Trainer):
    """:class:`~pushcut.trainer.Trainer` with the update on ``train.learners`` Ray learner ranks."""

    group: LearnerGroup | None = None

    def _optimizer(self, policy: Policy) -> LearnerGroup:  # type: ignore[override]
        local = super()._optimizer(policy)
        self.group = LearnerGroup(self.config, policy, local, self.manager)
        return self.group

    def run(self) -> dict[str, Any]:
        import_ray("train.backend=ray")
        try:
            return super().run()
        finally:
            if self.group is not None:
                self.group.shutdown()

    def _iteration(self, step, collector, sampler, policy, optimizer, generator, reference, progress) -> dict[str, Any]:
        rollout_version = optimizer.version  # the weights the driver's policy holds while it rolls out
        batch, metrics = collect_batch(collector, sampler, self.config, progress)
        record: dict[str, Any] = {"step": step, **metrics}
        self.manager.after_rollout(self.run_dir, step, dict(metrics))
        t0 = time.perf_counter()
        if batch is None:
            log.warning("iteration %d: no group with mixed outcomes; no update", step)
            record["actor/skipped_updates"] = 1.0
        else:
            progress.status(f"update on {len(batch)} episodes, {len(optimizer.ranks)} learner ranks")
            record.update(optimizer.update(batch, generator, reference, rollout_version))
        record["time/update_s"] = time.perf_counter() - t0
        return record
