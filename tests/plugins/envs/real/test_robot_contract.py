"""pushcut.testing's EnvContract over the robot env (tabletop sim driver behind the safety layer)."""

from __future__ import annotations

import pytest

from pushcut.plugins.envs.real import RealEnvConfig, RobotEnv, SafetyConfig
from pushcut.testing import EnvContract


class TestRobotEnv(EnvContract):
    @pytest.fixture
    def env(self):
        options = {"env": {"type": "tabletop", "image_size": 32, "video_size": 32, "tasks": ["press_button", "lift_blue"],
                           "num_init_states": 6, "num_eval_init_states": 2}}
        env = RobotEnv(RealEnvConfig(driver_options=options, safety=SafetyConfig(watchdog_ms=0)), log=lambda line: None)
        yield env
        env.close()
