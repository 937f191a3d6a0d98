"""Learner ranks on Ray: :class:`RayLearners`, the ``train.backend=ray`` side of the learner seam.

``train.learners`` torch.distributed ranks (gloo on CPU, NCCL on CUDA, one GPU each) run
the update (:func:`pushcut.learner.update_policy`, unchanged) as Ray actors. Every rank walks
the same shuffled minibatches (one generator state, handed out with each update) and takes
its contiguous share of each minibatch's (episode, chunk) rows (:class:`~pushcut.learner.Shards`);
the aggregation weights are computed over the whole minibatch, so the ranks' losses add up
to the single-process minibatch loss and the update equals the single-process one up to
the order of float additions.

How the ranks hold the model (``train.strategy``):

* ``replicate`` — each rank the whole model and optimizer; gradients are summed with one
  ``all_reduce`` per dtype before the clip + AdamW step every rank applies identically.
* ``fsdp2`` — ``torch.distributed.fsdp.fully_shard`` over the policy's
  :meth:`~pushcut.contracts.Policy.shard_units` (then the rest): each rank keeps ``1/W`` of
  the parameters, gradients and AdamW moments; a unit's weights are gathered for its
  forward and backward and freed after; gradients are reduce-scattered (averaged, so each
  rank's loss is scaled by ``W`` to make them the sum); clipping sees the global norm.
  ``train.precision=bf16-mixed`` keeps bf16 weights and compute with fp32 gradient
  reduction; ``train.offload`` keeps shards and optimizer state in CPU memory;
  ``train.activation_checkpointing`` recomputes each unit's activations in the backward.

Who samples the rollouts (``rollout.inference``):

* ``driver`` — the driver's policy; after each update rank 0 sends the trainable weights
  back (sharded: gathered first), so the rollouts use the newest weights
  (``rollout/stale_versions`` 0).
* ``learners`` — veRL's hybrid engine: each rank starts its share of ``rollout.num_workers``
  env workers and, for its share of each round's start states, samples with its own
  weights (sharded: every unit gathered once for the whole collection, then freed). No
  weights travel to the driver; :class:`LearnerCollector` gives the trainer the collector
  it expects.

Checkpoints: ``replicate`` ranks hand rank 0's optimizer state to the driver in the
single-process format; ``fsdp2`` ranks write their shards with
``torch.distributed.checkpoint`` into the checkpoint's ``learner/`` directory (read back at
any world size, or by ``train.backend=local``: :func:`pushcut.learner.load_sharded_optimizer`)
and rank 0 writes ``policy/`` from the gathered weights. Ranks write into the run
directory themselves: across nodes it must be on a shared filesystem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from pushcut.batch import EpisodeBatch
from pushcut.config import RunConfig
from pushcut.configio import resolve, to_dict
from pushcut.contracts import Policy, TaskSpec
from pushcut.envpool.spec import import_ref
from pushcut.envpool.transports.ray import check_free, connect
from pushcut.errors import CheckpointError, ConfigError, PushcutError
from pushcut.learner import SHARDED_DIR, ChunkTargets, Learner, Shards, update_policy
from pushcut.rollout import RolloutStats
from pushcut.rundir import CHECKPOINT_POLICY
from pushcut.sampling import StartState

log = logging.getLogger("pushcut")

PROCESS_GROUP_TIMEOUT_S = 1800.0
"""A collective that waits longer than this (a rank lost mid-update) raises instead of hanging."""


# --------------------------------------------------------------------------- sharding


def shard_policy(policy: Policy, precision: str = "float32", offload: bool = False,
                 activation_checkpointing: bool = False) -> Policy:
    """FSDP2 over ``policy``: each of its :meth:`~pushcut.contracts.Policy.shard_units`, then
    the policy itself (every parameter left over). ``log_probs`` and ``values`` go through
    FSDP's forward hooks like ``forward``, so calling them gathers what they use; ``act`` is
    called only inside :func:`gathered` (a hooked ``act`` that calls ``forward`` would have
    the nested hooks reshard the root after every call)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    options: dict[str, Any] = {}
    if precision == "bf16-mixed":
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for unit in policy.shard_units():
        if activation_checkpointing:
            _checkpoint_activations(unit)
        fully_shard(unit, **options)
    fully_shard(policy, **options)
    # the root's own weights (heads, embeddings) stay gathered from forward to backward, as FSDP does by
    # default for a root: a policy method that calls forward and then a head still finds them whole
    policy.set_reshard_after_forward(False, recurse=False)
    for method in ("log_probs", "values"):  # the training passes; act runs inside gathered(), all unsharded
        if callable(getattr(policy, method, None)):
            register_fsdp_forward_method(policy, method)
    return policy


def _checkpoint_activations(unit: torch.nn.Module) -> None:
    """Recompute ``unit``'s forward in the backward pass instead of keeping its activations."""
    from torch.utils.checkpoint import checkpoint

    forward = unit.forward

    def recomputed(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    unit.forward = recomputed  # type: ignore[method-assign]


@contextlib.contextmanager
def gathered(policy: Policy) -> Iterator[None]:
    """Every FSDP unit of ``policy`` unsharded for the block (one all-gather each, the same on
    every rank), so the rollouts' many forwards need no collective and ranks may make
    different numbers of them; resharded after. A no-op for an unsharded policy."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in policy.modules() if isinstance(m, FSDPModule)]
    if units:
        # FSDP initialises its units at the root's first forward, resharding whatever is gathered; do it
        # now, or a first forward inside this block would all-gather on one rank alone (a hang)
        policy._get_fsdp_state()._lazy_init()
    groups = [unit._get_fsdp_state()._fsdp_param_group for unit in units]
    before = [group._reshard_after_forward if group is not None else True for group in groups]
    for unit in units:
        unit.unshard()
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit, reshard in zip(units, before):  # as they were: the root keeps its weights after forward
            unit.set_reshard_after_forward(reshard, recurse=False)
            unit.reshard()


# --------------------------------------------------------------------------- what a rank builds


def plugin_refs(manager: Any, config: RunConfig) -> list[str]:
    """Import references of the plugins that registered the run's policy, env, success
    detector and transport, for a rank's own registry (as :meth:`pushcut.envpool.EnvSpec.from_registry` does)."""
    refs: list[str] = []
    for registry, name in ((manager.policies, config.policy.type), (manager.envs, config.env.type),
                           (manager.success_detectors, config.success.type),
                           (manager.transports, config.rollout.transport.type)):
        plugin = registry.get(name).plugin
        info = manager.infos.get(plugin)
        ref = info.source if info is not None and info.source != "<in-process>" else import_ref(
            manager.pm.get_plugin(plugin))
        if ref and ref not in refs:
            refs.append(ref)
    return refs


def rank_spec(config: RunConfig, manager: Any) -> dict[str, Any]:
    """What a learner rank needs, as plain data: the whole run config and the plugins it names."""
    return {"config": to_dict(config), "plugins": plugin_refs(manager, config)}


class LearnerRank:
    """One learner rank (wrapped with ``ray.remote`` by :class:`RayLearners`)."""

    def __init__(self, spec: dict[str, Any], rank: int, world: int, path: list[str]) -> None:
        import os
        import sys

        sys.path[:0] = [p for p in path if p not in sys.path and os.path.isdir(p)]
        from pushcut.pluginmanager import PluginManager

        self.manager = PluginManager.from_refs(spec["plugins"], autoload=not spec["plugins"])
        self.config = resolve(spec["config"], self.manager)
        t = self.config.train
        torch.set_num_threads(t.torch_threads or max(1, int(t.learner_num_cpus)))
        self.device = "cuda" if t.device.startswith("cuda") else t.device
        torch.manual_seed(self.config.seed)
        self.entry = self.manager.policies.get(self.config.policy.type)
        self.policy: Policy = self.entry.build(self.config.policy.options).to(self.device)
        self.policy.eval()
        self.shards = Shards(rank, world, sharded=t.strategy == "fsdp2")
        self.optimizer: torch.optim.Optimizer | None = None
        self.reference: Policy | None = None
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.version = 0
        self.collector: Any = None

    def address(self) -> tuple[str, int]:
        """This node's address and a free port, for the process group's rendezvous (rank 0)."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def join(self, host: str, port: int) -> None:
        """Join the process group, shard the policy (fsdp2) and build the optimizer over what this rank holds."""
        import torch.distributed as dist

        backend = "nccl" if self.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=self.shards.rank,
                                world_size=self.shards.world,
                                timeout=datetime.timedelta(seconds=PROCESS_GROUP_TIMEOUT_S))
        t = self.config.train
        if self.shards.sharded:
            shard_policy(self.policy, t.precision, t.offload, t.activation_checkpointing)
        self.optimizer = torch.optim.AdamW(list(self.policy.trainable_parameters()), lr=t.lr, betas=t.betas,
                                           weight_decay=t.weight_decay)

    def start_envs(self, num_workers: int) -> list[TaskSpec]:
        """This rank's env workers (``rollout.inference=learners``) and a collector sampling with its weights."""
        from pushcut.envpool import pool_from_config
        from pushcut.rollout import RolloutCollector

        config = dataclasses.replace(self.config, rollout=dataclasses.replace(self.config.rollout,
                                                                              num_workers=num_workers))
        pool = pool_from_config(config, self.manager)
        detector = self.manager.success_detectors.get(config.success.type).build(config.success.options)
        self.collector = RolloutCollector.for_policy(pool, self.policy, detector, config.rollout.max_steps,
                                                     config.rollout.pipeline)
        return pool.tasks()

    def load(self, weights: dict[str, torch.Tensor] | None, optimizer: dict[str, Any] | None,
             reference: dict[str, torch.Tensor] | None, version: int, checkpoint: str | None) -> None:
        """Start from the driver's weights (its init, init_from or resumed checkpoint), or from a
        sharded checkpoint's ``learner/`` (written at any world size)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        sharded = Path(checkpoint) / SHARDED_DIR if checkpoint else None
        if self.shards.sharded and sharded is not None and sharded.is_dir():
            self._load_sharded(sharded)
        elif self.shards.sharded:
            full = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.policy, weights, options=full)
            if optimizer is not None:  # keyed by parameter name (the driver converted it)
                set_optimizer_state_dict(self.policy, self.optimizer, optimizer, options=full)
        else:
            self.policy.load_state_dict(weights)
            if optimizer is not None:
                self.optimizer.load_state_dict(optimizer)
        if reference is not None:
            import copy

            self.reference = copy.deepcopy(self.policy).requires_grad_(False)
            self.reference.load_state_dict(reference)
        self.version = version

    def _load_sharded(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        state = {"model": get_model_state_dict(self.policy),
                 "optim": get_optimizer_state_dict(self.policy, self.optimizer)}
        dcp.load(state, checkpoint_id=str(directory))
        set_model_state_dict(self.policy, state["model"])
        set_optimizer_state_dict(self.policy, self.optimizer, state["optim"])

    def update(self, batch: EpisodeBatch, generator_state: torch.Tensor, sync: bool) -> dict[str, Any]:
        """One update; rank 0 answers with the metrics and, with ``sync``, the trainable weights."""
        self.generator.set_state(generator_state)
        metrics = update_policy(self.policy, self.optimizer, batch, self.config, self.generator, self.reference,
                                shards=self.shards)
        self.version += 1
        out: dict[str, Any] = {"metrics": metrics, "generator": self.generator.get_state(), "version": self.version}
        if sync:
            out["weights"] = self._trainable_state()
        return out

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        """Name → CPU copy of each trainable parameter (sharded: gathered; a collective)."""
        if not self.shards.sharded:
            return trainable_state(self.policy)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        names = {name for name, p in self.policy.named_parameters() if p.requires_grad}
        return {k: v for k, v in full.items() if k in names}

    def collect(self, starts: list[StartState], group_size: int, temperature: float, record: list[int],
                seed: int, group_offset: int) -> tuple[EpisodeBatch, RolloutStats]:
        """Episodes from this rank's share of a round's start states, sampled with its weights."""
        with gathered(self.policy), torch.random.fork_rng():
            torch.manual_seed(seed)
            if not starts:
                return EpisodeBatch([], group_size), RolloutStats()
            wanted = set(record)
            return self.collector.collect(starts, group_size, temperature,
                                          record=(lambda k: k in wanted) if wanted else None,
                                          group_offset=group_offset)

    def save(self, directory: str, write_policy: bool) -> dict[str, Any]:
        """This rank's part of a checkpoint: fsdp2 shards into ``learner/`` (every rank) and, when
        asked, ``policy/`` (rank 0, from the gathered weights); rank 0 answers with the trainer
        state entries (replicate: its optimizer state)."""
        import torch.distributed as dist

        root = Path(directory)
        out: dict[str, Any] = {}
        if self.shards.sharded:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            dcp.save({"model": get_model_state_dict(self.policy),
                      "optim": get_optimizer_state_dict(self.policy, self.optimizer)},
                     checkpoint_id=str(root / SHARDED_DIR))
            if write_policy:
                full = get_model_state_dict(self.policy,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
                if self.shards.rank == 0:
                    plain = self.entry.build(self.config.policy.options)
                    plain.load_state_dict(full)
                    plain.save(root / CHECKPOINT_POLICY)
        else:
            if self.shards.rank == 0:
                out["optimizer"] = _to_cpu(self.optimizer.state_dict())
                if write_policy:
                    self.policy.save(root / CHECKPOINT_POLICY)
        dist.barrier()
        return out

    def close_envs(self) -> None:
        if self.collector is not None:
            self.collector.pool.close()
            self.collector.detector.close()
            self.collector = None

    def leave(self) -> None:
        import torch.distributed as dist

        self.close_envs()
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
    if rollout.transport.type == "ray":
        actor_cpus = rollout.transport.options.num_cpus
        what += f" and rollout.num_workers={rollout.num_workers} env actor(s) × rollout.transport.num_cpus={actor_cpus:g}"
        cpus += rollout.num_workers * actor_cpus
    check_free(ray, cpus, 0.0, what)


def check_learner_config(config: RunConfig) -> None:
    """What the Ray learners cannot do, as one ConfigError line each, before any rank starts."""
    t, r = config.train, config.rollout
    if config.algo.kl_coef > 0 and t.strategy == "fsdp2":
        raise ConfigError("algo.kl_coef > 0 needs a reference model, which train.strategy=fsdp2 does not shard yet: "
                          "use train.strategy=replicate, or the recipe's algo.kl_coef=0")
    if r.inference == "learners":
        if t.curriculum != "none":
            raise ConfigError("train.curriculum restores demo states in the driver's env pool; with "
                              "rollout.inference=learners there is none yet: use rollout.inference=driver")
        if r.transport.type == "socket":
            raise ConfigError("rollout.inference=learners starts env workers on each learner rank; "
                              "rollout.transport=socket connects to fixed servers: use process or ray")
        if r.num_workers < t.learners:
            raise ConfigError(f"rollout.inference=learners gives each of the train.learners={t.learners} ranks its "
                              f"own env workers: set rollout.num_workers >= {t.learners} (it is {r.num_workers})")


class RayLearners(Learner):
    """The driver's handle on ``train.learners`` ranks (``train.backend=ray``)."""

    def __init__(self, config: RunConfig, policy: Policy, optimizer: torch.optim.Optimizer,
                 reference: Policy | None, manager: Any) -> None:
        import os
        import sys

        check_learner_config(config)
        t, r = config.train, config.rollout
        self.config, self.policy, self.local, self.reference = config, policy, optimizer, reference
        env_cpus = r.num_workers * r.transport.options.num_cpus if r.transport.type == "ray" else 0.0
        self.ray = ray = connect("train.backend=ray", t.learners * t.learner_num_cpus + env_cpus)
        check_capacity(ray, config)
        self.version = 0
        self._pushed = False
        self._optimizer_state: dict[str, Any] | None = None
        self._checkpoint: Path | None = None
        self._collector: LearnerCollector | None = None
        path = [p for p in sys.path if p and os.path.isdir(p)]
        spec = rank_spec(config, manager)
        gpus = 1 if t.device.startswith("cuda") else 0
        cls = ray.remote(LearnerRank)
        self.ranks = [cls.options(num_cpus=t.learner_num_cpus, num_gpus=gpus, max_restarts=0)
                      .remote(spec, k, t.learners, path) for k in range(t.learners)]
        try:
            host, port = self._get([self.ranks[0].address.remote()], r.startup_timeout_s, "start")[0]
            self._get([rank.join.remote(host, port) for rank in self.ranks], r.startup_timeout_s, "join")
            if r.inference == "learners":
                shares = [r.num_workers * (k + 1) // t.learners - r.num_workers * k // t.learners
                          for k in range(t.learners)]
                tasks = self._get([rank.start_envs.remote(n) for rank, n in zip(self.ranks, shares)],
                                  r.startup_timeout_s, "start its env workers")[0]
                self._collector = LearnerCollector(self, tasks)
        except BaseException:
            self.close()
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
                cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the rank's own exception
                first = next((ln for ln in str(cause).splitlines() if ln.strip()), "")
                raise PushcutError(f"learner rank {rank} failed to {what} ({type(cause).__name__}: {first[:200]}); "
                                   "the run can continue from its last checkpoint (train.resume=true)") from None
        return ray.get(refs)

    @property
    def sharded(self) -> bool:
        return self.config.train.strategy == "fsdp2"

    def _push(self) -> None:
        """The ranks start from the driver's weights and optimizer state, or a sharded checkpoint."""
        if self._pushed:
            return
        ray = self.ray
        checkpoint = str(self._checkpoint) if self._checkpoint is not None else None
        weights = None if checkpoint is not None else ray.put(  # the ranks read a sharded checkpoint themselves
            {k: v.detach().cpu() for k, v in self.policy.state_dict().items()})
        optimizer = self._optimizer_state
        if optimizer is not None and self.sharded:  # the single-process format, keyed by parameter name
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            optimizer = _to_cpu(get_optimizer_state_dict(self.policy, self.local))
        ref_weights = None if self.reference is None else {k: v.cpu() for k, v in self.reference.state_dict().items()}
        self._get([rank.load.remote(weights, optimizer, ref_weights, self.version, checkpoint) for rank in self.ranks],
                  None, "load the driver's weights")
        self._pushed = True

    def update(self, batch: EpisodeBatch, generator: torch.Generator, targets: ChunkTargets | None = None,
               actor: bool = True, rollout_version: int | None = None) -> dict[str, float]:
        """The update on every rank; the driver's generator (and, with driver inference, its
        policy) come back in sync with rank 0."""
        if targets is not None or not actor:
            raise ConfigError("PPO with a critic runs with train.backend=local only")
        self._push()
        sync = self.config.rollout.inference == "driver"
        shared = self.ray.put(batch)
        state = generator.get_state()
        outs = self._get([rank.update.remote(shared, state, sync) for rank in self.ranks], None, "update")
        first = outs[0]
        generator.set_state(first["generator"])
        if sync:
            with torch.no_grad():
                params = dict(self.policy.named_parameters())
                for name, value in first["weights"].items():
                    params[name].copy_(value.to(params[name].device))
        self.version = int(first["version"])
        metrics = dict(first["metrics"])
        metrics["actor/weight_version"] = float(self.version)
        if rollout_version is not None:
            metrics["rollout/stale_versions"] = float(self.version - 1 - rollout_version)
        return metrics

    def save(self, directory: Path) -> dict[str, Any]:
        self._push()
        on_driver = self.config.rollout.inference == "driver"  # the driver's policy holds the newest weights
        if on_driver:
            self.policy.save(directory / CHECKPOINT_POLICY)
        outs = self._get([rank.save.remote(str(directory), not on_driver) for rank in self.ranks], None,
                         "save its checkpoint shard")
        if not (directory / CHECKPOINT_POLICY).is_dir():
            raise CheckpointError(f"the learner ranks wrote no {CHECKPOINT_POLICY}/ into {directory}: across nodes "
                                  "the run directory must be on a filesystem every rank shares")
        return outs[0]

    def load(self, checkpoint: Path, state: dict[str, Any]) -> None:
        if "optimizer" in state:
            try:
                self.local.load_state_dict(state["optimizer"])  # a ValueError when it does not fit the policy
            except ValueError as exc:
                raise CheckpointError(f"cannot resume from {checkpoint}: the optimizer state does not fit this "
                                      f"policy's trainable parameters ({exc}); use a new run_dir") from None
            self._optimizer_state = state["optimizer"]
            self._checkpoint = None
        elif self.sharded:
            self._optimizer_state, self._checkpoint = None, checkpoint
        else:  # a sharded checkpoint continued by replicated ranks: its optimizer, converted here
            from pushcut.learner import load_sharded_optimizer

            load_sharded_optimizer(self.policy, self.local, checkpoint / SHARDED_DIR)
            self._optimizer_state, self._checkpoint = self.local.state_dict(), None
        self._pushed = False

    def collector(self) -> LearnerCollector | None:
        return self._collector

    def collect(self, shares: Sequence[tuple[list[StartState], list[int], int]], group_size: int,
                temperature: float, seed: int) -> list[tuple[EpisodeBatch, RolloutStats]]:
        self._push()
        return self._get([rank.collect.remote(starts, group_size, temperature, record, seed + k, offset)
                          for k, (rank, (starts, record, offset)) in enumerate(zip(self.ranks, shares))],
                         None, "roll out")

    def close(self) -> None:
        for rank in getattr(self, "ranks", []):
            try:
                self.ray.get(rank.leave.remote(), timeout=10)
            except Exception:
                pass
            try:
                self.ray.kill(rank, no_restart=True)
            except Exception:
                pass
        self.ranks = []


class _RankDetectors:
    """The success detectors live on the ranks and close with their env workers."""

    needs_frames = False

    def close(self) -> None:
        pass


class LearnerCollector:
    """The trainer's collector when the learner ranks roll out (``rollout.inference=learners``):
    each round's start states are split into contiguous shares, one per rank; each rank runs
    its share on its own env workers with its own weights, seeded from this process's torch
    random stream (so a resumed run repeats the uninterrupted one); the batches come back in
    rank order with the groups numbered as one collection would number them."""

    def __init__(self, learners: RayLearners, tasks: list[TaskSpec]) -> None:
        self.learners = learners
        self.tasks: dict[str, TaskSpec] = {t.task_id: t for t in tasks}
        self.detector = _RankDetectors()

    def collect(self, starts: Sequence[StartState], group_size: int, temperature: float,
                record: Callable[[int], bool] | None = None, progress: Callable[[int, int], None] | None = None,
                group_offset: int = 0) -> tuple[EpisodeBatch, RolloutStats]:
        t0 = time.perf_counter()
        world = len(self.learners.ranks)
        n = len(starts)
        shares = []
        for k in range(world):
            lo, hi = n * k // world, n * (k + 1) // world
            wanted = [e - lo * group_size for e in range(lo * group_size, hi * group_size) if record and record(e)]
            shares.append((list(starts[lo:hi]), wanted, group_offset + lo))
        seed = int(torch.randint(0, 2**62, (1,)))
        results = self.learners.collect(shares, group_size, temperature, seed)
        batch = EpisodeBatch.concat([b for b, _ in results], group_size)
        stats = RolloutStats(wall_s=time.perf_counter() - t0)
        for _, s in results:
            stats.episodes += s.episodes
            stats.env_steps += s.env_steps
            stats.policy_calls += s.policy_calls
            stats.failed += s.failed
            stats.policy_s = max(stats.policy_s, s.policy_s)  # the ranks run side by side
            stats.env_s = max(stats.env_s, s.env_s)
            stats.failures.extend(s.failures)
        if progress is not None:
            progress(len(batch), n * group_size)
        return batch, stats
