"""Tests of the aim diagnostic: does a policy reach for the object or replay a path?"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the tabletop env needs mujoco (pip install mujoco)")

from pushcut.errors import ConfigError  # noqa: E402
from pushcut.plugins.envs.tabletop import TabletopConfig, TabletopEnv  # noqa: E402
from pushcut.plugins.envs.tabletop.aim import fit_aim, main, measure_aim  # noqa: E402

STATES = range(12)


@pytest.fixture(scope="module")
def env() -> Iterator[TabletopEnv]:
    env = TabletopEnv(TabletopConfig(jitter=0.03, tasks=("press_button", "lift_blue")))
    yield env
    env.close()


def test_fit_recovers_known_slopes() -> None:
    rng = np.random.default_rng(0)
    obj, start = rng.uniform(-0.03, 0.03, (2, 40, 2))
    aims = 0.8 * obj + 0.1 * start + np.array([0.01, -0.02])
    aim = fit_aim("lift_blue", obj, start, aims, [True] * 30 + [False] * 10)
    assert aim.slope_object == pytest.approx((0.8, 0.8))
    assert aim.slope_start == pytest.approx((0.1, 0.1), abs=1e-9)
    assert aim.bias_cm == pytest.approx((1.0, -2.0))
    assert aim.residual_cm == pytest.approx((0.0, 0.0), abs=1e-9)
    assert aim.success == 0.75


def test_fit_needs_enough_episodes() -> None:
    with pytest.raises(ValueError, match="at least 6 episodes"):
        fit_aim("lift_blue", np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 2)), [True] * 3)


@pytest.mark.parametrize("task_id", ["press_button", "lift_blue"])
def test_the_expert_follows_the_object(env: TabletopEnv, task_id: str) -> None:
    aim = measure_aim(env, lambda obs, instruction, task: env.expert_action()[None], task_id, STATES)
    assert aim.success == 1.0 and aim.on_target == 1.0
    assert aim.slope_object == pytest.approx((1.0, 1.0), abs=0.1)
    assert aim.slope_start == pytest.approx((0.0, 0.0), abs=0.1)


def test_a_replayed_path_follows_its_own_start(env: TabletopEnv) -> None:
    # The expert's actions from state 0, replayed open loop from other states: a blind policy.
    env.reset("press_button", 0)
    path = []
    while not env.success:
        path.append(env.expert_action())
        env.step(path[-1][None])
    steps = iter([])

    def replay(obs, instruction, task_id):
        nonlocal steps
        if env._steps == 0:  # a new episode starts the path again
            steps = iter(path)
        return np.array([next(steps, np.zeros(4))])

    aim = measure_aim(env, replay, "press_button", STATES)
    assert aim.slope_object == pytest.approx((0.0, 0.0), abs=0.15)
    assert aim.slope_start == pytest.approx((1.0, 1.0), abs=0.15)
    assert aim.median_miss_cm > 1.0


def test_bad_requests_are_refused(env: TabletopEnv) -> None:
    with pytest.raises(ConfigError, match="aim works on press_button"):
        measure_aim(env, lambda *a: np.zeros((1, 4)), "open_drawer", STATES)
    with pytest.raises(ConfigError, match="not offered by this env"):
        measure_aim(env, lambda *a: np.zeros((1, 4)), "place_red_on_plate", STATES)
    anywhere = TabletopEnv(TabletopConfig(tasks=("press_button",)))
    with pytest.raises(ConfigError, match="env.jitter"):
        measure_aim(anywhere, lambda *a: np.zeros((1, 4)), "press_button", STATES)
    anywhere.close()


def test_command_line_on_a_saved_policy(tmp_path, capsys) -> None:
    pytest.importorskip("torch", reason="the tiny policy needs torch")
    from pushcut.plugins.policies.tiny import TinyTokenVLA, TinyTokenVLAConfig

    TinyTokenVLA(TinyTokenVLAConfig(chunk_size=4, action_dim=4, state_dim=4)).save(tmp_path / "policy")
    config = tmp_path / "config.yaml"
    config.write_text("env:\n  type: tabletop\n  jitter: 0.03\n  tasks: [press_button, open_drawer]\n"
                      "policy:\n  type: tiny\n  chunk_size: 4\n  action_dim: 4\n  state_dim: 4\n")
    assert main([str(config), str(tmp_path / "policy"), "--states", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("press_button") and "(6 episodes" in lines[0]
    assert main([str(config), str(tmp_path / "policy"), "--tasks", "lift_blue"]) == 2
    assert "not in" in capsys.readouterr().err
