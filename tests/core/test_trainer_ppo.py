"""PPO with a critic (algo.advantage=gae) in the RL loop, on the toy reach env with a toy
bin policy that has a value head: the loop learns, the critic learns, the warm-up trains
the value head alone, and a policy without a value head is one clear error."""

import json
from collections.abc import Mapping

import numpy as np
import pytest
import torch

from pushcut import algos, hookimpl
from pushcut.cli import main
from pushcut.configio import load_config
from pushcut.contracts import ObsBatch, Scores, has_value_head
from pushcut.errors import ConfigError
from pushcut.testing import registered_plugin
from pushcut.toys import BinPolicy, BinPolicyConfig, ReachConfig, ReachEnv
from pushcut.learner import update_policy
from pushcut.trainer import Trainer, chunk_values, collect_batch, critic_targets
from pushcut.build import build_collector, build_policy, build_pool
from pushcut.rundir import RunDir
from pushcut.sampling import make_sampler
from toyrun import train

BASE = [
    "env.type=reach", "policy.type=bins_v", "algo.temperature=1.0", "train.lr=0.03", "train.batch_size=8",
    "train.minibatch_size=32", "rollout.num_workers=1", "rollout.envs_per_worker=16", "rollout.transport=inline",
    "algo.advantage=gae", "env.max_steps=8", "env.step_size=0.2", "algo.critic.lr=0.03",
]


class ValueBinPolicy(BinPolicy):
    """The toy bin policy plus a value head on the proprio state (the ValueHead capability)."""

    def __init__(self, config: BinPolicyConfig) -> None:
        super().__init__(config)
        g = torch.Generator().manual_seed(config.seed + 1)
        self.value_head = torch.nn.Sequential(torch.nn.Linear(config.state_dim, config.hidden), torch.nn.Tanh(),
                                              torch.nn.Linear(config.hidden, 1))
        with torch.no_grad():
            for p in self.value_head.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def values(self, obs: ObsBatch) -> torch.Tensor:
        return self.value_head(torch.as_tensor(obs.states, dtype=torch.float32)).squeeze(-1)

    def value_parameters(self):
        return self.value_head.parameters()

    def log_probs(self, obs: ObsBatch, sample: Mapping[str, torch.Tensor], temperature: float) -> Scores:
        scores = super().log_probs(obs, sample, temperature)
        return Scores(scores.log_probs, scores.entropy, self.values(obs))


class PPOToys:
    @hookimpl
    def pushcut_register_envs(self, registry) -> None:
        registry.add("reach", ReachConfig, ReachEnv)

    @hookimpl
    def pushcut_register_policies(self, registry) -> None:
        registry.add("bins", BinPolicyConfig, BinPolicy)
        registry.add("bins_v", BinPolicyConfig, ValueBinPolicy)


@pytest.fixture
def manager():
    with registered_plugin(PPOToys(), "ppo_toys") as m:
        yield m


def run(manager, tmp_path, name, *overrides):
    return train(manager, BASE, tmp_path / name, *overrides)


def test_ppo_with_gae_learns_and_logs_the_critic(manager, tmp_path):
    _, summary, lines = run(manager, tmp_path, "ppo", "train.iterations=10", "train.eval_every=5")
    assert summary["status"] == "completed"
    evals = [r["eval/success_rate"] for r in lines if "eval/success_rate" in r]
    assert evals[-1] >= evals[0] + 0.25, evals
    steps = [r for r in lines if r.get("step", 0) > 0]
    for key in ("critic/value_loss", "critic/explained_variance", "critic/values_mean", "critic/vf_clipfrac",
                "critic/grad_norm", "actor/pg_loss"):
        assert all(key in r and np.isfinite(r[key]) for r in steps), key
    assert all(r["critic/warmup"] == 0.0 for r in steps)


def test_critic_warmup_trains_the_value_head_alone(manager, tmp_path):
    cfg = load_config(None, [*BASE, f"run_dir={tmp_path / 'w'}", "train.iterations=2", "algo.critic.warmup_iterations=2",
                             "train.eval_every=0"], manager)
    Trainer(cfg, manager).run()
    lines = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [r["critic/warmup"] for r in lines if r.get("step", 0) > 0] == [1.0, 1.0]
    trained = build_policy(cfg, str(RunDir(tmp_path / "w").checkpoint(2) / "policy"))
    fresh = build_policy(cfg, None)
    assert torch.equal(trained.net[0].weight, fresh.net[0].weight)  # the actor never moved
    assert not torch.equal(trained.value_head[0].weight, fresh.value_head[0].weight)  # the critic did
    # one iteration past the warm-up moves the actor too
    cfg3 = load_config(None, [*BASE, f"run_dir={tmp_path / 'w'}", "train.iterations=3",
                              "algo.critic.warmup_iterations=2", "train.eval_every=0"], manager)
    Trainer(cfg3, manager).run()
    after = build_policy(cfg, str(RunDir(tmp_path / "w").checkpoint(3) / "policy"))
    assert not torch.equal(after.net[0].weight, fresh.net[0].weight)


def test_chunk_targets_are_gae_over_each_episodes_chunks(manager, tmp_path):
    cfg = load_config(None, [*BASE, f"run_dir={tmp_path / 't'}", "algo.critic.gamma=0.9", "algo.critic.lam=0.7",
                             "algo.critic.whiten_advantages=false"], manager)
    policy = build_policy(cfg, None)
    assert has_value_head(policy)
    pool = build_pool(cfg)
    try:
        batch, _ = collect_batch(build_collector(cfg, pool, policy), make_sampler("uniform", pool.tasks(), 0, 8), cfg)
    finally:
        pool.close()
    assert batch is not None and batch.advantages is None  # gae leaves the per-episode advantages unset
    targets, metrics = critic_targets(policy, batch, cfg)
    lengths = [ep.num_chunks for ep in batch]
    assert targets.mask.sum(dim=1).tolist() == lengths and len(set(lengths)) > 1  # ragged episodes
    values, _ = chunk_values(policy, batch, micro_batch_size=7)  # any micro-batching gives the same values
    torch.testing.assert_close(values, targets.values)
    for i, ep in enumerate(batch):
        # by hand for this episode: the value of each observation, the reward at its last chunk
        with torch.no_grad():
            v = policy.values(ObsBatch.from_observations(ep.observations, [ep.instruction] * ep.num_chunks,
                                                         [ep.task_id] * ep.num_chunks))
        adv, nxt_v, nxt_a = [0.0] * ep.num_chunks, 0.0, 0.0
        for c in reversed(range(ep.num_chunks)):
            r = ep.reward if c == ep.num_chunks - 1 else 0.0
            nxt_a = r + 0.9 * nxt_v - float(v[c]) + 0.9 * 0.7 * nxt_a
            nxt_v, adv[c] = float(v[c]), nxt_a
        torch.testing.assert_close(targets.advantages[i, :ep.num_chunks], torch.tensor(adv), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(targets.returns[i, :ep.num_chunks], torch.tensor(adv) + v, rtol=1e-5, atol=1e-6)
    assert metrics["critic/values_mean"] == pytest.approx(float(algos.masked_mean(targets.values, targets.mask)))


def _batch_and_targets(manager, tmp_path, *overrides):
    cfg = load_config(None, [*BASE, f"run_dir={tmp_path / 'u'}", *overrides], manager)
    policy = build_policy(cfg, None)
    pool = build_pool(cfg)
    try:
        batch, _ = collect_batch(build_collector(cfg, pool, policy), make_sampler("uniform", pool.tasks(), 0, 8), cfg)
    finally:
        pool.close()
    targets, _ = critic_targets(policy, batch, cfg)
    return cfg, policy, batch, targets


def test_value_updates_fit_the_returns_and_per_chunk_advantages_drive_the_actor(manager, tmp_path):
    cfg, policy, batch, targets = _batch_and_targets(manager, tmp_path, "train.minibatch_size=1000",
                                                     "algo.critic.cliprange_value=10")
    optimizer = Trainer(cfg, manager)._optimizer(policy)
    assert [g["lr"] for g in optimizer.param_groups] == [0.03, 0.03]
    actor_before = [p.detach().clone() for p in policy.net.parameters()]

    def mse() -> float:
        values, mask = chunk_values(policy, batch, 64)
        return float(algos.masked_mean((values - targets.returns) ** 2, mask))

    first = mse()
    losses = []
    for _ in range(30):  # the critic's warm-up on one batch: the value loss falls, the actor stays put
        m = update_policy(policy, optimizer, batch, cfg, torch.Generator().manual_seed(0), targets=targets, actor=False)
        losses.append(m["critic/value_loss"])
    assert all(torch.equal(a, p) for a, p in zip(actor_before, policy.net.parameters()))
    assert losses[-1] < 0.75 * losses[0], losses  # binary returns: much of their variance is noise
    assert mse() < 0.75 * first
    # the actor's step follows each chunk's own advantage: flip the sign of every advantage and
    # the log-prob of the sampled bins moves the other way
    obs, sample, _, _ = batch.gather(batch.rows(range(len(batch))))
    with torch.no_grad():
        before = policy.log_probs(obs, sample, 1.0).log_probs
    moved = {}
    for sign in (1.0, -1.0):
        trial = ValueBinPolicy(policy.config)
        trial.load_state_dict(policy.state_dict())
        flipped = type(targets)(sign * targets.advantages, targets.returns, targets.values, targets.mask)
        update_policy(trial, Trainer(cfg, manager)._optimizer(trial), batch, cfg, torch.Generator().manual_seed(0),
                      targets=flipped)
        with torch.no_grad():
            after = trial.log_probs(obs, sample, 1.0).log_probs
        chunk_adv = targets.advantages[[e for e, _ in batch.rows(range(len(batch)))],
                                       [r for _, r in batch.rows(range(len(batch)))]]
        moved[sign] = float(((after - before).squeeze(-1) * chunk_adv).sum())
    assert moved[1.0] > 0 > moved[-1.0], moved


def test_gae_with_a_policy_without_a_value_head_is_one_clear_error(manager, tmp_path):
    cfg = load_config(None, [*BASE, "policy.type=bins", f"run_dir={tmp_path / 'x'}"], manager)
    with pytest.raises(ConfigError, match=r"algo.advantage=gae needs a policy with a value head .*policy.type='bins'"):
        Trainer(cfg, manager).run()
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def test_cli_gae_without_value_head_exits_2_with_one_line(manager, tmp_path, capsys):
    cfg_file = tmp_path / "reach.yaml"
    cfg_file.write_text("env: {type: reach}\npolicy: {type: bins}\nalgo: {advantage: gae}\n"
                        f"rollout: {{transport: inline, num_workers: 1, envs_per_worker: 8}}\nrun_dir: {tmp_path / 'c'}\n")
    code = main(["train", str(cfg_file)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "needs a policy with a value head" in err, err


@pytest.mark.parametrize("override, fragment", [
    ("algo.critic.gamma=1.5", "algo.critic.gamma must be in [0, 1]"),
    ("algo.critic.lam=-0.1", "algo.critic.lam must be in [0, 1]"),
    ("algo.critic.cliprange_value=0", "algo.critic.cliprange_value must be a finite number > 0"),
    ("algo.critic.warmup_iterations=-1", "algo.critic.warmup_iterations must be >= 0"),
    ("algo.critic.value_loss=huber", "algo.critic.value_loss='huber' is not one of clipped"),
    ("algo.advantage=gea", "did you mean 'gae'"),
])
def test_bad_critic_config_is_one_line(manager, override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, [*BASE, override], manager)
    assert fragment in str(info.value) and "\n" not in str(info.value)


class Interrupt:
    """Raises KeyboardInterrupt after the rollout of a given iteration (mid-iteration kill)."""

    def __init__(self, at):
        self.at = at

    @hookimpl
    def pushcut_after_rollout(self, run_dir, step, metrics):
        if step == self.at:
            raise KeyboardInterrupt


def test_interrupted_ppo_run_with_band_sampling_resumes_to_the_same_result(manager, tmp_path):
    """The critic's optimizer group (its own lr, warmed up with the actor's), the warm-up
    iterations and the band sampler's per-state estimates all come back from a checkpoint."""
    common = ["train.iterations=4", "train.save_every=1", "train.eval_every=2", "eval.max_init_states=4",
              "algo.critic.warmup_iterations=1", "train.lr_warmup_steps=3", "train.start_sampling=band"]
    run(manager, tmp_path, "straight", *common)
    with registered_plugin(Interrupt(3), "interrupt", manager):
        with pytest.raises(KeyboardInterrupt):
            run(manager, tmp_path, "resumed", *common)
    _, _, lines = run(manager, tmp_path, "resumed", *common)
    straight = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert [drop(r) for r in lines] == [drop(r) for r in straight]
    assert [r.get("critic/warmup") for r in lines if r.get("step", 0) > 0] == [1.0, 0.0, 0.0, 0.0]
    assert any(k.startswith("rollout/draw_weight/") for k in lines[-1])
    a = torch.load(tmp_path / "straight/checkpoints/step_000004/policy/bin_policy.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "resumed/checkpoints/step_000004/policy/bin_policy.pt", weights_only=True)["state"]
    assert a.keys() == b.keys() and any(k.startswith("value_head.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_lr_warmup_ramps_the_critic_to_its_own_rate():
    from pushcut.config import TrainConfig
    from pushcut.learner import warmup_lr

    actor, critic = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([{"params": [actor], "lr": 1e-4, "base_lr": 1e-4},
                                   {"params": [critic], "lr": 1e-2, "base_lr": 1e-2}])
    train = TrainConfig(lr=1e-4, lr_warmup_steps=4)
    seen = []
    for _ in range(5):
        warmup_lr(optimizer, train)
        seen.append([g["lr"] for g in optimizer.param_groups])
        (actor.sum() + critic.sum()).backward()
        optimizer.step()
    assert seen[0] == pytest.approx([0.25e-4, 0.25e-2]) and seen[-1] == pytest.approx([1e-4, 1e-2])
