"""pushcut.testing's EnvContract over the robot env (tabletop sim driver behind the safety layer)."""

from __future__ import annotations

import pytest

from pushcut.configio import build_dataclass
from pushcut.plugins.envs.real import RealEnvConfig, RobotEnv
from pushcut.testing import EnvContract


class TestRobotEnv(EnvContract):
    @pytest.fixture
    def env(self):
        options = {"type": "sim", "env": {"type": "tabletop", "image_size": 32, "video_size": 32, "tasks": ["press_button", "lift_blue"],
                           "num_init_states": 6, "num_eval_init_states": 2}}
        config = build_dataclass(RealEnvConfig, {"driver": options, "safety": {"watchdog_ms": 0}}, "env")
        env = RobotEnv(config, log=lambda line: None)
        yield env
        env.close()
