"""pushcut.testing's contract suites, run over every built-in plugin (and the engine's toys)."""

import numpy as np
import pytest
import torch

from pushcut.contracts import ObsBatch
from pushcut.pluginmanager import get_plugin_manager
from pushcut.testing import EnvContract, PolicyContract, SuccessDetectorContract
from pushcut.toys import BinPolicy, BinPolicyConfig, GaussianPolicy, GaussianPolicyConfig, ReachConfig, ReachEnv


def _build(kind: str, name: str, **options):
    registry = getattr(get_plugin_manager(), kind)
    entry = registry.get(name)
    return entry.build(entry.config_class(**options))


def test_every_builtin_plugin_is_covered():
    """A new built-in must get a contract class here, or in its own test file (named below)."""
    manager = get_plugin_manager()
    # libero: EnvContract runs in tests/plugins/envs/test_libero.py (needs its extra and the assets);
    # openvla: PolicyContract runs in tests/plugins/policies/test_openvla.py (builds a tiny checkpoint).
    # A plugin whose extra is missing is "unavailable" in every registry (its kind is unknown then).
    # real: EnvContract in tests/plugins/envs/real/test_robot_contract.py (sim driver);
    # human: SuccessDetectorContract in tests/plugins/rewards/test_human_judge.py (answered over HTTP).
    # robotwin: EnvContract in tests/plugins/envs/robotwin/test_robotwin_venv.py (the env runs in RoboTwin's venv).
    # metaworld: EnvContract run by pytest inside the Meta-World venv (no torch there), from
    # tests/plugins/envs/metaworld/test_metaworld_venv.py.
    assert set(manager.envs.names()) <= {"tabletop", "libero", "real", "robotwin", "metaworld"}
    # tinyvla: PolicyContract (log-densities, with and without adapters) in tests/plugins/policies/test_tinyvla.py.
    assert set(manager.policies.names()) <= {"tiny", "openvla", "tinyvla"}
    assert set(manager.success_detectors.names()) == {"env_success", "human"}
    everything = set(manager.envs.unavailable) | {
        n for r in (manager.envs, manager.policies, manager.success_detectors) for n in r.names()}
    assert everything == {"tabletop", "libero", "tiny", "openvla", "env_success", "real", "human", "tinyvla",
                          "robotwin", "metaworld"}


class TestTabletopEnv(EnvContract):
    @pytest.fixture
    def env(self):
        env = _build("envs", "tabletop", tasks=("press_button", "lift_blue"), num_init_states=6,
                     num_eval_init_states=2)
        yield env
        env.close()


class TestReachEnv(EnvContract):
    @pytest.fixture
    def env(self):
        return ReachEnv(ReachConfig())


def _tiny_obs(batch: int = 3) -> ObsBatch:
    rng = np.random.default_rng(0)
    return ObsBatch(
        images=rng.integers(0, 255, (batch, 64, 64, 3), dtype=np.uint8),
        instructions=["press the button", "pick up the blue cube", "open the drawer"][:batch],
        task_ids=["a", "b", "c"][:batch],
        states=rng.normal(size=(batch, 4)).astype(np.float32),
    )


class TestTinyPolicy(PolicyContract):
    options = {"use_state": True, "state_dim": 4}

    @pytest.fixture
    def make_policy(self):
        torch.set_num_threads(1)
        return lambda: _build("policies", "tiny", **self.options)

    @pytest.fixture
    def policy(self, make_policy):
        return make_policy()

    @pytest.fixture
    def obs_batch(self):
        return _tiny_obs()


class TestBinPolicy(PolicyContract):
    @pytest.fixture
    def make_policy(self):
        return lambda: BinPolicy(BinPolicyConfig())

    @pytest.fixture
    def policy(self, make_policy):
        return make_policy()

    @pytest.fixture
    def obs_batch(self):
        return ObsBatch(np.zeros((4, 8, 8, 3), np.uint8), ["x"] * 4, ["t"] * 4,
                        states=np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32))


class TestGaussianPolicy(TestBinPolicy):
    """A continuous head: its log-densities are positive (std 0.05), which the suite accepts only
    with ``log_densities = True``."""

    log_densities = True

    @pytest.fixture
    def make_policy(self):
        return lambda: GaussianPolicy(GaussianPolicyConfig(chunk_size=2))

    def test_log_densities_are_positive_here(self, policy, obs_batch):
        with torch.no_grad():
            sample = policy.act(obs_batch, 1.0)
        assert (sample.log_probs > 0).any()
        strict = type("StrictContract", (PolicyContract,), {})()
        with pytest.raises(AssertionError, match="log_densities = True"):
            strict.test_act_shapes(policy, obs_batch)


class TestEnvSuccess(SuccessDetectorContract):
    @pytest.fixture
    def detector(self):
        return _build("success_detectors", "env_success")
