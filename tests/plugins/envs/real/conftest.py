"""Fixtures for the robot bridge tests: a tabletop robot behind the safety layer (sim driver)."""

from __future__ import annotations

import pytest

from pushcut.configio import build_dataclass
from pushcut.plugins.envs.real import RealEnvConfig, RobotEnv

SIM = {"env": {"type": "tabletop", "image_size": 32, "video_size": 32, "tasks": ["press_button", "lift_blue"]}}
"""A small tabletop (32 px) as the sim robot: quick to build and to step."""


@pytest.fixture
def make_robot():
    """``make_robot(safety=dict(...), **robot_options)`` → a RobotEnv on the sim driver, closed afterwards."""
    built: list[RobotEnv] = []

    def make(safety: dict | None = None, **options) -> RobotEnv:
        options.setdefault("driver", {"type": "sim", **SIM})
        config = build_dataclass(RealEnvConfig, {**options, "safety": safety or {}}, "env")
        robot = RobotEnv(config, log=lambda line: None)
        built.append(robot)
        return robot

    yield make
    for robot in built:
        robot.close()
