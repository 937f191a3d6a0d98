"""pushcut.testing's suites catch what they claim to: an env whose chunks ignore early stop, one that
miscounts its steps, a robot driver that moves after stop; and the Env half imports without torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pushcut.envcontract import Env, StepResult
from pushcut.testing import EnvContract


class Mutated(Env):
    """The tabletop with one bug: ``ignore_early_stop`` keeps executing a chunk after success;
    ``miscount`` reports the whole chunk as executed even when it stopped early."""

    def __init__(self, inner, mutation: str) -> None:
        self.inner, self.mutation = inner, mutation

    def tasks(self):
        return self.inner.tasks()

    @property
    def action_spec(self):
        return self.inner.action_spec

    def reset(self, task_id, init_state):
        return self.inner.reset(task_id, init_state)

    def expert_action(self):
        return self.inner.expert_action()

    def render(self):
        return self.inner.render()

    def step(self, actions, record=False):
        if self.mutation == "miscount":
            result = self.inner.step(actions, record)
            frames = result.frames + result.frames[-1:] * (len(actions) - len(result.frames)) if record else []
            return StepResult(result.observation, len(actions), result.success, result.done, result.info, frames)
        success, frames, result = False, [], None
        for action in actions:  # one at a time, on through success
            result = self.inner.step(np.asarray(action)[None], record)
            success = success or result.success
            frames += result.frames
        return StepResult(result.observation, len(actions), success, success or result.done, result.info, frames)

    def close(self):
        self.inner.close()


@pytest.mark.parametrize("mutation", ["ignore_early_stop", "miscount"])
def test_the_env_contract_catches_broken_early_stop_and_step_counts(mutation):
    from pushcut.plugins.envs.tabletop import TabletopConfig, TabletopEnv

    env = Mutated(TabletopEnv(TabletopConfig(image_size=32, video_size=32, tasks=("press_button",))), mutation)
    try:
        with pytest.raises(AssertionError, match="executed steps|reported"):
            EnvContract().test_early_stop_and_step_bookkeeping(env)
    finally:
        env.close()


def test_the_env_contract_passes_the_real_tabletop():
    from pushcut.plugins.envs.tabletop import TabletopConfig, TabletopEnv

    with TabletopEnv(TabletopConfig(image_size=32, video_size=32, tasks=("press_button", "lift_blue"))) as env:
        EnvContract().test_early_stop_and_step_bookkeeping(env)


def assert_runs(code: str) -> None:
    """``code`` runs in a fresh interpreter and prints ok."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_env_suite_imports_without_torch():
    """A simulator's venv has no torch: the Env and robot-driver suites must import there."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import pushcut.testing as t, pushcut.testing.contracts as c\n"
            "assert c.torch is None and t.EnvContract and t.RobotDriverContract\n"
            "import pushcut.demos, pushcut.envpool.slot\n"
            "print('ok')")
    assert_runs(code)


def test_importing_pushcut_testing_imports_neither_pytest_nor_torch():
    """Runtime code may import pushcut.testing (registered_plugin); the suites load pytest when first named."""
    code = ("import sys\n"
            "from pushcut.testing import registered_plugin\n"
            "assert 'pytest' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
            "from pushcut.testing import EnvContract\n"
            "assert 'pytest' in sys.modules\n"
            "print('ok')")
    assert_runs(code)


class Jittery(Mutated):
    """The tabletop seen through a camera with sensor noise: never the same frame twice."""

    def __init__(self, inner, deterministic: bool) -> None:
        super().__init__(inner, "none")
        self.deterministic = deterministic
        self.rng = np.random.default_rng(0)

    def reset(self, task_id, init_state):
        obs = dict(self.inner.reset(task_id, init_state))
        obs["image"] = np.clip(obs["image"].astype(int) + self.rng.integers(-2, 3, obs["image"].shape), 0, 255
                               ).astype(np.uint8)
        return obs


def test_the_env_contract_demands_determinism_only_of_envs_that_promise_it():
    from pushcut.plugins.envs.tabletop import TabletopConfig, TabletopEnv

    with TabletopEnv(TabletopConfig(image_size=32, video_size=32, tasks=("press_button",))) as inner:
        with pytest.raises(AssertionError, match="same observation"):
            EnvContract().test_reset_is_deterministic(Jittery(inner, deterministic=True))
        with pytest.raises(pytest.skip.Exception, match="deterministic is False"):
            EnvContract().test_reset_is_deterministic(Jittery(inner, deterministic=False))
