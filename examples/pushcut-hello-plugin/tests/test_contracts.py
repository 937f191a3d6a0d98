"""pushcut's reusable contract suites, run against this plugin, plus a few checks
of our own. Run with ``python -m pytest -q`` in this directory."""

from __future__ import annotations

import importlib.metadata as md

import numpy as np
import pytest
import torch

from pushcut.contracts import ObsBatch
from pushcut.errors import CheckpointError, ConfigError, EnvError
from pushcut.pluginmanager import PluginManager
from pushcut.testing import EnvContract, PolicyContract, registered_plugin
from pushcut_hello import plugin
from pushcut_hello.env import HelloLineConfig, HelloLineEnv
from pushcut_hello.policy import HelloGaussianConfig, HelloGaussianPolicy


def observations(env: HelloLineEnv) -> ObsBatch:
    """One observation per (task, first train state), from the real env."""
    obs, instructions, task_ids = [], [], []
    for task in env.tasks():
        for init in task.train_init_states[:2]:
            obs.append(env.reset(task.task_id, init))
            instructions.append(task.instruction)
            task_ids.append(task.task_id)
    return ObsBatch.from_observations(obs, instructions, task_ids)


# ----------------------------------------------------------------- contract suites


class TestHelloLineContract(EnvContract):
    @pytest.fixture
    def env(self):
        env = HelloLineEnv(HelloLineConfig())
        yield env
        env.close()


class TestHelloGaussianContract(PolicyContract):
    @pytest.fixture
    def make_policy(self):
        return lambda: HelloGaussianPolicy(HelloGaussianConfig())

    @pytest.fixture
    def policy(self, make_policy):
        return make_policy()

    @pytest.fixture
    def obs_batch(self):
        return observations(HelloLineEnv(HelloLineConfig()))


# ----------------------------------------------------------------- our own checks


def test_early_stop_inside_a_chunk():
    env = HelloLineEnv(HelloLineConfig(step_size=0.25))
    env.reset("move_right", 7)  # starts at 0.5, target 0.75
    result = env.step(np.ones((4, 1), np.float32), record=True)
    assert result.success and result.done
    assert result.steps == 1 and len(result.frames) == 1


def test_wrong_action_shape_names_action_dim():
    env = HelloLineEnv(HelloLineConfig())
    env.reset("move_left", 0)
    with pytest.raises(EnvError, match="action_dim=1"):
        env.step(np.zeros((4, 3), np.float32))


def test_train_and_eval_states_are_disjoint():
    for task in HelloLineEnv(HelloLineConfig(num_init_states=5, num_eval=2)).tasks():
        assert task.train_init_states == (0, 1, 2) and task.eval_init_states == (3, 4)


@pytest.mark.parametrize("options", [{"num_eval": 0}, {"num_init_states": 1}, {"image_size": 4}])
def test_bad_env_config_is_a_config_error(options):
    with pytest.raises(ConfigError):
        HelloLineConfig(**options)


def test_loading_a_wrong_directory_is_a_checkpoint_error(tmp_path):
    policy = HelloGaussianPolicy(HelloGaussianConfig())
    with pytest.raises(CheckpointError, match="not a hello_gaussian checkpoint"):
        policy.load(tmp_path / "missing")
    policy.save(tmp_path / "ckpt")
    other = HelloGaussianPolicy(HelloGaussianConfig(chunk_size=2))
    with pytest.raises(CheckpointError, match="chunk_size"):
        other.load(tmp_path / "ckpt")


def test_behaviour_cloning_then_greedy_success():
    """The policy can learn the task: SFT on a scripted expert, then greedy eval."""
    torch.manual_seed(0)
    env = HelloLineEnv(HelloLineConfig())
    policy = HelloGaussianPolicy(HelloGaussianConfig())
    obs = observations(env)
    x, target = obs.states[:, 0], obs.states[:, 1]
    # The expert moves at full speed towards the target.
    expert = np.repeat(np.sign(target - x)[:, None, None], policy.chunk_size, axis=1).astype(np.float32)
    optim = torch.optim.Adam(policy.parameters(), lr=0.05)
    for _ in range(300):
        optim.zero_grad()
        policy.sft_loss(obs, expert).backward()
        optim.step()
    for task in env.tasks():
        for init in task.eval_init_states:
            observation, success = env.reset(task.task_id, init), False
            for _ in range(task.max_steps // policy.chunk_size):
                batch = ObsBatch.from_observations([observation], [task.instruction], [task.task_id])
                with torch.no_grad():
                    result = env.step(policy.act(batch, 0.0).actions[0])
                observation, success = result.observation, result.success
                if result.done:
                    break
            assert success, f"{task.task_id} from eval state {init} did not succeed"


# ----------------------------------------------------------------- registration


def test_registers_in_process():
    manager = PluginManager(autoload=False)
    with registered_plugin(plugin, "hello-test", manager):
        assert "hello_line" in manager.envs and "hello_gaussian" in manager.policies
        env = manager.envs.get("hello_line").build(HelloLineConfig())
        assert env.action_spec.action_dim == 1
    assert "hello_line" not in manager.envs


def test_found_through_the_entry_point():
    try:
        md.distribution("pushcut-hello-plugin")
    except md.PackageNotFoundError:
        pytest.skip("pushcut-hello-plugin is not installed (pip install -e .)")
    manager = PluginManager(autoload=True)
    manager.load_entry_points()
    assert manager.infos["hello"].registered == {"policy": ["hello_gaussian"], "env": ["hello_line"]}
