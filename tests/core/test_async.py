"""One-step asynchronous training (``train.async_rollouts``): iteration k+1's rollouts are collected
with iteration k's weights while iteration k's update runs in a thread."""

import pytest
import torch

from pushcut.configio import load_config
from pushcut.errors import ConfigError
from pushcut.testing import registered_plugin
from pushcut.toys import ToyPlugin
from toyrun import train

BASE = [
    "env.type=reach", "policy.type=bins", "algo.temperature=1.0", "train.lr=0.03", "train.batch_size=6",
    "train.minibatch_size=16", "rollout.num_workers=1", "rollout.envs_per_worker=16", "rollout.transport=inline",
    "train.eval_every=0", "eval.max_init_states=3", "train.save_every=3", "train.iterations=6",
]


@pytest.fixture
def manager():
    with registered_plugin(ToyPlugin(), "toys") as m:
        yield m


def run(manager, run_dir, *overrides):
    return train(manager, BASE, run_dir, *overrides)[1:]


def weights(run_dir, step):
    return torch.load(run_dir / f"checkpoints/step_{step:06d}/policy/bin_policy.pt", weights_only=True)["state"]


def test_async_rollouts_lag_one_version_and_still_learn_from_the_clipped_ratio(manager, tmp_path):
    _, sync = run(manager, tmp_path / "sync")
    summary, lines = run(manager, tmp_path / "async", "train.async_rollouts=true")
    assert summary["status"] == "completed"
    steps = [r for r in lines if r["step"] > 0]
    # saves at 3 and 6: the iteration after a checkpoint samples with fresh weights, the others one behind
    assert [r["rollout/stale_versions"] for r in steps] == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert all(r["rollout/stale_versions"] == 0.0 for r in sync if r["step"] > 0)
    # the first iteration is the same in both modes; from the second on the rollouts differ (older weights)
    assert steps[0]["rollout/success_rate"] == sync[1]["rollout/success_rate"]
    assert any(a["actor/ppo_kl"] != b["actor/ppo_kl"] for a, b in zip(steps[1:], sync[2:]))
    # off-policy data shows in the ratio: clipping engages at least once across the stale iterations
    assert max(r["actor/pg_clipfrac"] for r in steps if r["rollout/stale_versions"] == 1.0) > 0
    assert all(r["actor/optimizer_steps"] >= 1 for r in steps)


def test_an_async_run_resumed_from_its_checkpoint_repeats_the_uninterrupted_one(manager, tmp_path):
    _, straight = run(manager, tmp_path / "straight", "train.async_rollouts=true")
    run(manager, tmp_path / "resumed", "train.async_rollouts=true", "train.iterations=3")
    _, resumed = run(manager, tmp_path / "resumed", "train.async_rollouts=true")
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    same = lambda r: {k: v for k, v in r.items() if not k.startswith(("time/", "eval/"))}  # noqa: E731
    assert [same(r) for r in resumed] == [same(r) for r in straight]  # (the short run evaluated at 3)
    assert resumed[-1]["eval/success_rate"] == straight[-1]["eval/success_rate"]
    for k, v in weights(tmp_path / "straight", 6).items():
        torch.testing.assert_close(weights(tmp_path / "resumed", 6)[k], v, rtol=0, atol=0)


def test_async_rollouts_need_the_local_backend(manager):
    with pytest.raises(ConfigError, match="train.async_rollouts .* needs train.backend=local"):
        load_config(None, [*BASE, "train.async_rollouts=true", "train.backend=ray"], manager)
