"""Scale-out on Ray, on one local 2-CPU cluster: env workers as Ray actors behind the pool's
transport contract, and the update on 2 gloo learner ranks equal to the single-process one.

Tolerance: the ranks compute the same per-row losses as one process, but sum the gradient in
another order (each rank's share, then across ranks), so gradients differ by float32 rounding
(~1e-7 relative). AdamW divides by sqrt(v), which keeps relative errors relative, so after a few
updates parameters agree to rtol=1e-5, atol=1e-6; rewards, advantages and every rollout count
are compared exactly (rollouts sample from weights this close with the same random numbers).
"""

import dataclasses
import logging
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason='Ray is an optional extra: pip install "pushcut[ray]"')

from pushcut import hookimpl  # noqa: E402
from pushcut.configio import load_config  # noqa: E402
from pushcut.envpool import EnvPool, SlotFailure  # noqa: E402
from pushcut.envpool.transports.ray import RayTransport  # noqa: E402
from pushcut.errors import ConfigError, EnvError, PushcutError  # noqa: E402
from pushcut.testing import registered_plugin  # noqa: E402
from pushcut.toys import BinPolicy, BinPolicyConfig, ReachConfig, ReachEnv, ToyPlugin  # noqa: E402
from pushcut.learner import update_policy  # noqa: E402
from pushcut.trainer import Trainer  # noqa: E402
from toyrun import train  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6
RUN_RTOL, RUN_ATOL = 1e-4, 5e-5
"""For whole runs (three iterations): the two ranks' gradient sums reach the all-reduce in another
float summation order than the single process's, and AdamW divides by the square root of the second
moment, so an element whose gradients are all near zero moves by up to lr x O(1) on a difference of
rounding; rewards, advantages and metrics stay exactly equal (assert_same_run). Measured: one element
of 288 off by 1.3e-5 after three iterations."""

BASE = [
    "env.type=reach", "policy.type=bins", "algo.temperature=1.0", "train.lr=0.03", "train.batch_size=4",
    "train.minibatch_size=12", "train.micro_batch_size=7", "rollout.num_workers=2", "rollout.envs_per_worker=8",
    "train.eval_every=0", "eval.max_init_states=2", "train.save_every=1", "train.torch_threads=1",
]
RAY = ["rollout.transport=ray", "rollout.transport.num_cpus=0.5", "train.backend=ray", "train.learners=2",
       "train.learner_num_cpus=0.5"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def manager():
    with registered_plugin(ToyPlugin(), "toys") as m:
        yield m


def run(manager, run_dir, *overrides):
    return train(manager, BASE, run_dir, *overrides)[1:]


def final_state(run_dir, step):
    return torch.load(Path(run_dir) / f"checkpoints/step_{step:06d}/policy/bin_policy.pt", weights_only=True)["state"]


EXACT = ("rollout/", "eval/", "actor/advantage_abs_mean", "actor/optimizer_steps", "actor/skipped_updates", "step")
CLOSE = ("actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl", "actor/entropy", "actor/grad_norm", "actor/lr")


def assert_same_run(lines, reference):
    assert len(lines) == len(reference)
    for got, want in zip(lines, reference):
        for key, value in want.items():
            if key.startswith(EXACT):
                assert got[key] == value or (value != value and got[key] != got[key]), (key, got[key], value)
            elif key in CLOSE:
                assert got[key] == pytest.approx(value, rel=RTOL, abs=ATOL), key


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The single-process reference: 3 iterations on inline envs, one learner."""
    run_dir = tmp_path_factory.mktemp("local") / "run"
    with registered_plugin(ToyPlugin(), "toys") as m:
        _, lines = run(m, run_dir, "train.iterations=3", "rollout.transport=inline")
    return run_dir, lines


# --------------------------------------------------------------------------- env actors


def test_ray_env_actors_answer_like_inline_envs_and_a_killed_actor_is_replaced(cluster):
    config = ReachConfig(step_delay_s=0.4)
    with EnvPool(ReachEnv, config, num_workers=2, envs_per_worker=2, transport="inline") as inline, \
            EnvPool(ReachEnv, config, num_workers=2, envs_per_worker=2, timeout_s=30,
                    transport=RayTransport(num_cpus=0.5, startup_timeout_s=60)) as pool:
        assert pool.tasks() == inline.tasks() and pool.action_spec == inline.action_spec
        starts = {0: ("reach_0", 3), 1: ("reach_1", 4), 2: ("reach_0", 5), 3: ("reach_1", 6)}
        for slot, obs in pool.reset(starts).items():
            np.testing.assert_array_equal(obs["state"], inline.reset(starts)[slot]["state"])
        actions = {s: np.full((1, 1), 0.5, dtype=np.float32) for s in range(4)}
        want = inline.step(actions)
        got = pool.step(actions)
        for s in range(4):
            assert (got[s].done, got[s].success, got[s].steps) == (want[s].done, want[s].success, want[s].steps)
            np.testing.assert_array_equal(got[s].observation["state"], want[s].observation["state"])
        pids = pool.worker_pids()
        assert len(set(pids)) == 2 and os.getpid() not in pids
        ticket = pool.submit_step(actions)
        time.sleep(0.15)  # mid-step: the actor is inside env.step's delay
        os.kill(pids[0], signal.SIGKILL)
        t0 = time.monotonic()
        out = pool.collect(ticket)
        assert time.monotonic() - t0 < 20  # the death is seen, not waited out
        assert isinstance(out[0], SlotFailure) and isinstance(out[1], SlotFailure)
        assert "died" in out[0].reason and "new ray actor" in out[0].reason
        assert not isinstance(out[2], SlotFailure) and not isinstance(out[3], SlotFailure)
        assert pool.restarts == 1 and pool.pop_lost_slots() == {0, 1}
        assert pool.worker_pids()[0] not in pids and pool.worker_pids()[1] == pids[1]
        again = pool.reset(starts)  # the replacement serves the same envs
        assert not any(isinstance(v, SlotFailure) for v in again.values())
        np.testing.assert_array_equal(again[0]["state"], inline.reset(starts)[0]["state"])


def test_an_env_actor_whose_runtime_env_cannot_start_is_one_line(cluster):
    t0 = time.monotonic()
    with pytest.raises(EnvError) as err:
        EnvPool(ReachEnv, ReachConfig(), num_workers=1, envs_per_worker=1,
                transport=RayTransport(num_cpus=0.5, python="/nonexistent/venv/bin/python", startup_timeout_s=8))
    assert time.monotonic() - t0 < 60
    msg = str(err.value)
    assert "\n" not in msg and "ray env actor 0" in msg and "/nonexistent/venv/bin/python" in msg


def test_env_actors_run_on_the_interpreter_the_config_names(cluster):
    transport = RayTransport(num_cpus=0.5, python=sys.executable, runtime_env={"env_vars": {"PUSHCUT_X": "1"}})
    assert transport.options["runtime_env"]["py_executable"] == sys.executable
    with EnvPool(ReachEnv, ReachConfig(), num_workers=1, envs_per_worker=1, transport=transport) as pool:
        assert pool.reset({0: ("reach_0", 0)})[0]["state"].shape == (2,)


# --------------------------------------------------------------------------- learner ranks


@pytest.mark.parametrize("strategy", ["replicate", "fsdp2"])
def test_update_on_two_gloo_ranks_equals_update_policy(cluster, manager, tmp_path, strategy):
    from pushcut.distributed import RayLearners

    cfg = load_config(None, [*BASE, "train.ppo_epochs=2", *RAY[2:], f"train.strategy={strategy}",
                             f"run_dir={tmp_path}"], manager)
    with EnvPool(ReachEnv, ReachConfig(), num_workers=1, envs_per_worker=16, transport="inline") as pool:
        from pushcut.build import build_collector
        from pushcut.sampling import make_sampler
        from pushcut.trainer import collect_batch

        torch.manual_seed(0)
        policy = BinPolicy(BinPolicyConfig())
        batch, _ = collect_batch(build_collector(cfg, pool, policy), make_sampler("uniform", pool.tasks(), 0, 8),
                                 cfg, None)
    assert batch is not None and len(batch) >= 16
    single = BinPolicy(BinPolicyConfig())
    single.load_state_dict(policy.state_dict())
    opt = torch.optim.AdamW(single.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    want = update_policy(single, opt, batch, cfg, torch.Generator().manual_seed(5))
    group = RayLearners(cfg, policy, torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr), None, manager)
    try:
        got = group.update(batch, torch.Generator().manual_seed(5), rollout_version=0)
        assert len(group.ranks) == 2
        (tmp_path / "ckpt").mkdir()
        state = group.save(tmp_path / "ckpt") if strategy == "replicate" else None
    finally:
        group.close()
    assert want["actor/optimizer_steps"] >= 4  # several minibatches × 2 epochs, each split over micro-batches
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=RTOL, abs=ATOL), key
    assert got["actor/weight_version"] == 1 and got["rollout/stale_versions"] == 0
    moved = 0.0
    for name, p in single.named_parameters():
        torch.testing.assert_close(dict(policy.named_parameters())[name], p, rtol=RTOL, atol=ATOL)
        moved = max(moved, float((p.detach() - BinPolicy(BinPolicyConfig()).state_dict()[name]).abs().max()))
    assert moved > 1e-3  # the update did move the weights
    if state is not None:
        ref = opt.state_dict()["state"]
        for k, s in state["optimizer"]["state"].items():  # rank 0's AdamW state is the single-process one
            torch.testing.assert_close(s["exp_avg"], ref[k]["exp_avg"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("placement", [[], ["train.strategy=fsdp2"], ["train.strategy=fsdp2", "rollout.inference=learners"]],
                         ids=["replicate", "fsdp2", "fsdp2-learners-roll-out"])
def test_ray_backend_run_equals_the_single_process_run(cluster, manager, local_run, tmp_path, placement):
    local_dir, reference = local_run
    overrides = RAY if "rollout.inference=learners" not in placement else \
        [*RAY[2:], "rollout.transport=process"]  # each rank starts its own env worker
    summary, lines = run(manager, tmp_path / "ray", "train.iterations=3", *overrides, *placement)
    assert summary["status"] == "completed"
    updates = [r for r in lines if r["step"] > 0]  # (step 0 is the evaluation before training)
    assert [r["actor/weight_version"] for r in updates] == [1.0, 2.0, 3.0]
    assert all(r["rollout/stale_versions"] == 0 for r in updates)
    if "rollout.inference=learners" in placement:
        # the ranks sample from their own random streams, so the episodes differ from the driver's; the
        # greedy evaluation before any update does not sample, and must be the same episode for episode
        evals = [k for k in reference[0] if k.startswith("eval/")]
        assert evals and {k: lines[0][k] for k in evals} == {k: reference[0][k] for k in evals}
        assert all(r["rollout/episodes"] >= 32 and r["rollout/episodes_failed"] == 0 for r in updates)
        return
    assert_same_run(lines, reference)
    a, b = final_state(local_dir, 3), final_state(tmp_path / "ray", 3)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=RUN_RTOL, atol=RUN_ATOL)


@pytest.mark.parametrize("strategy", ["replicate", "fsdp2"])
def test_resume_on_another_number_of_learners(cluster, manager, local_run, tmp_path, strategy):
    local_dir, reference = local_run
    run(manager, tmp_path / "run", "train.iterations=2", *RAY, f"train.strategy={strategy}")
    if strategy == "fsdp2":  # the shards of 2 ranks, written by torch.distributed.checkpoint, beside policy/
        shards = tmp_path / "run/checkpoints/step_000002/learner"
        assert sorted(p.name for p in shards.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
        assert "optimizer" not in torch.load(shards.parent / "trainer.pt", weights_only=False)
    # continue the 2-rank run on one learner in this process: the checkpoint converts to the single-process format
    _, lines = run(manager, tmp_path / "run", "train.iterations=3", "rollout.transport=inline")
    assert_same_run(lines, reference)
    a, b = final_state(local_dir, 3), final_state(tmp_path / "run", 3)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=RUN_RTOL, atol=RUN_ATOL)


def test_a_sharded_checkpoint_resumes_on_two_and_on_one_rank_and_a_torn_shard_falls_back(cluster, manager,
                                                                                          local_run, tmp_path):
    local_dir, reference = local_run
    fsdp = [*RAY, "train.strategy=fsdp2"]
    run(manager, tmp_path / "run", "train.iterations=2", *fsdp)
    _, lines = run(manager, tmp_path / "run", "train.iterations=3", *fsdp)  # 2 ranks read 2 ranks' shards
    assert_same_run(lines, reference)
    for k, v in final_state(local_dir, 3).items():
        torch.testing.assert_close(final_state(tmp_path / "run", 3)[k], v, rtol=RUN_RTOL, atol=RUN_ATOL)
    # 1 sharded rank reads 2 ranks' shards
    run(manager, tmp_path / "one", "train.iterations=2", *fsdp)
    _, lines = run(manager, tmp_path / "one", "train.iterations=3", *fsdp, "train.learners=1")
    assert_same_run(lines, reference)
    # a torn shard: the newest checkpoint does not verify, the run goes back to the one before it
    run(manager, tmp_path / "torn", "train.iterations=2", *fsdp)
    shard = tmp_path / "torn/checkpoints/step_000002/learner/__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    _, lines = run(manager, tmp_path / "torn", "train.iterations=3", *fsdp)
    assert [r["step"] for r in lines] == [0, 1, 2, 3]  # iteration 2 ran again from checkpoint 1
    assert_same_run(lines, reference)


# --------------------------------------------------------------------------- faults and bad input


@dataclasses.dataclass
class DyingReachConfig(ReachConfig):
    """ReachEnv whose process dies (once: a marker file) on stepping ``die_on_init_state``."""

    die_on_init_state: int = -1
    marker: str = ""


class DyingReachEnv(ReachEnv):
    def step(self, actions, record=False):
        c = self.config
        if self.init_state == c.die_on_init_state and c.marker and not os.path.exists(c.marker):
            Path(c.marker).write_text(str(os.getpid()))
            os._exit(1)  # the actor's process is gone mid-iteration, as on a lost node
        return super().step(actions, record)


class DyingPlugin:
    @hookimpl
    def pushcut_register_envs(self, registry):
        registry.add("dying_reach", DyingReachConfig, DyingReachEnv)


@pytest.mark.slow
def test_a_dead_env_actor_mid_iteration_loses_its_episodes_and_training_continues(cluster, manager, tmp_path, caplog):
    marker = tmp_path / "died"
    with registered_plugin(DyingPlugin(), "dying", manager):
        with caplog.at_level(logging.WARNING, logger="pushcut"):
            summary, lines = run(manager, tmp_path / "run", "env.type=dying_reach", "train.iterations=3",
                                 "env.die_on_init_state=0", f"env.marker={marker}", *RAY)
    assert marker.is_file() and summary["status"] == "completed"
    failed = [r["rollout/episodes_failed"] for r in lines if r["step"] > 0]
    assert sum(failed) >= 1, failed
    assert any("new ray actor" in r.getMessage() for r in caplog.records)
    assert [r["actor/weight_version"] for r in lines if r["step"] > 0] == [1.0, 2.0, 3.0]


def test_more_learner_ranks_than_the_cluster_holds_is_one_line(cluster, manager, tmp_path):
    cfg = load_config(None, [*BASE, *RAY, "train.learners=3", "train.learner_num_cpus=1",
                             f"run_dir={tmp_path}"], manager)
    with pytest.raises(ConfigError, match=r"train.learners=3 rank\(s\) .* reserve \d+ CPUs, the Ray cluster has 2 in all") as err:
        Trainer(cfg, manager).run()
    assert "\n" not in str(err.value)


def test_more_env_actors_than_the_cluster_holds_is_one_line_at_once(cluster, manager, tmp_path):
    cfg = load_config(None, [*BASE, "rollout.transport=ray", "rollout.num_workers=3", "rollout.transport.num_cpus=1",
                             f"run_dir={tmp_path}"], manager)
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"3 env actor\(s\) .* reserve 3 CPUs, the Ray cluster has 2 in all") as err:
        Trainer(cfg, manager).run()
    assert "\n" not in str(err.value) and time.monotonic() - t0 < 30  # refused up front, not after a wait


def test_learners_above_one_need_the_ray_backend(manager):
    with pytest.raises(ConfigError, match="needs train.backend=ray"):
        load_config(None, [*BASE, "train.learners=2"], manager)
    with pytest.raises(ConfigError, match="'rollout.ray_python' has moved: set rollout.transport.python "
                                          r"\(with rollout.transport.type=ray"):
        load_config(None, [*BASE, "rollout.ray_python=/usr/bin/python3"], manager)
    with pytest.raises(ConfigError, match="unknown config key 'rollout.transport.runtime_env'"):
        load_config(None, [*BASE, "rollout.transport.runtime_env={}"], manager)  # the default transport is process


def test_without_ray_installed_the_error_names_the_extra(manager, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when Ray is not installed
    with pytest.raises(ConfigError, match=r'rollout.transport=ray needs Ray.*pip install "pushcut\[ray\]"'):
        RayTransport()
    cfg = load_config(None, [*BASE, "train.backend=ray", f"run_dir={tmp_path}"], manager)
    with pytest.raises(ConfigError, match=r'train.backend=ray needs Ray.*pip install "pushcut\[ray\]"') as err:
        Trainer(cfg, manager).run()
    assert "\n" not in str(err.value)



@dataclasses.dataclass
class DyingBinConfig(BinPolicyConfig):
    """BinPolicy options plus ``marker``: once ``marker + ".armed"`` exists, learner rank 1 dies
    inside its next update and leaves ``marker`` (so it dies once)."""

    marker: str = ""


class DyingBinPolicy(BinPolicy):
    def log_probs(self, obs, sample, temperature):
        import torch.distributed as dist

        marker = self.config.marker
        if (marker and dist.is_initialized() and dist.get_rank() == 1 and os.path.exists(marker + ".armed")
                and not os.path.exists(marker)):
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)  # the rank's process is gone mid-update, as on a lost node
        return super().log_probs(obs, sample, temperature)


class DyingPolicyPlugin:
    @hookimpl
    def pushcut_register_policies(self, registry):
        registry.add("dying_bins", DyingBinConfig, DyingBinPolicy)


def test_a_sharded_rank_killed_mid_update_is_one_line_and_the_rerun_resumes(cluster, manager, tmp_path):
    marker = tmp_path / "died"
    fsdp = [*RAY, "train.strategy=fsdp2", "policy.type=dying_bins", f"policy.marker={marker}"]
    with registered_plugin(DyingPolicyPlugin(), "dying_policy", manager):
        run(manager, tmp_path / "run", "train.iterations=1", *fsdp)  # checkpoint 1
        Path(f"{marker}.armed").touch()
        t0 = time.monotonic()
        with pytest.raises(PushcutError) as err:
            run(manager, tmp_path / "run", "train.iterations=3", *fsdp)
        assert time.monotonic() - t0 < 120  # seen when the rank dies, not after the collective's timeout
        msg = str(err.value)
        assert marker.is_file() and "\n" not in msg, msg
        assert "learner rank 1 failed to update" in msg and "train.resume=true" in msg
        summary, lines = run(manager, tmp_path / "run", "train.iterations=3", *fsdp)  # the same command: resumes
    assert summary["status"] == "completed"
    assert [r["step"] for r in lines] == [0, 1, 2, 3]
