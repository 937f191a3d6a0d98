"""Every safety limit of the robot bridge, on the tabletop sim driver: each test drives the robot
with bad commands and then checks the driver's own log — what the robot actually received."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pushcut.errors import ConfigError, EnvError
from pushcut.pluginmanager import get_plugin_manager
from pushcut.plugins.envs.real import ReplayDriver, ReplayDriverConfig, RobotEnv, RealEnvConfig, SafetyConfig
from pushcut.plugins.envs.tabletop.scene import MAX_DELTA


def commands(robot: RobotEnv) -> list[np.ndarray]:
    return [c.action for c in robot.driver.commands if c.kind == "command"]


def kinds(robot: RobotEnv) -> list[str]:
    return [c.kind for c in robot.driver.commands]


def test_drivers_are_registered_through_the_hook():
    registry = get_plugin_manager().robot_drivers
    assert {"sim", "replay"} <= set(registry.names())
    assert registry.get("sim").plugin == "real"
    with pytest.raises(Exception, match="unknown robot driver 'simm'.*did you mean 'sim'"):
        registry.get("simm")


def test_out_of_limit_actions_are_clipped_and_counted(make_robot):
    robot = make_robot(safety={"action_low": (-0.5, -0.5, -0.5, -1), "action_high": (0.5, 0.5, 0.5, 1)})
    robot.reset("press_button", 0)
    wild = np.array([[3.0, -7.0, 0.2, 1.0], [0.9, 0.1, -0.6, -4.0], [0.1, 0.2, 0.3, 0.4]])
    result = robot.step(wild)
    sent = np.array(commands(robot))
    assert len(sent) == 3
    assert (sent >= [-0.5, -0.5, -0.5, -1]).all() and (sent <= [0.5, 0.5, 0.5, 1]).all()
    np.testing.assert_allclose(sent[2], wild[2])  # an in-limit action passes untouched
    assert result.info["safety/clipped"] == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_chunks_are_refused_whole(make_robot, bad):
    robot = make_robot()
    robot.reset("press_button", 0)
    robot.step(np.zeros((2, 4)))
    chunk = np.zeros((4, 4))
    chunk[2, 1] = bad
    with pytest.raises(EnvError, match="NaN or inf.*holds and the episode ends"):
        robot.step(chunk)
    assert len(commands(robot)) == 2  # not one action of the bad chunk reached the robot
    assert kinds(robot)[-1] == "hold"
    assert robot.interventions.counts["nonfinite_refused"] == 1
    with pytest.raises(EnvError, match="without a running episode"):
        robot.step(np.zeros((1, 4)))


BOX = {"workspace_low": (-0.1, -0.1, 0.06), "workspace_high": (0.1, 0.1, 0.16)}


@pytest.mark.parametrize("direction", [(1, 1, 1), (-1, -1, -1), (1, -1, 0), (0, 0, -1)])
def test_workspace_clip_keeps_every_command_inside_the_box(make_robot, direction):
    robot = make_robot(safety=BOX)
    robot.reset("lift_blue", 3)
    push = np.tile([*direction, -1.0], (10, 1)).astype(float)
    infos = [robot.step(push).info for _ in range(4)]
    low, high = np.array(BOX["workspace_low"]), np.array(BOX["workspace_high"])
    records = [c for c in robot.driver.commands if c.kind == "command"]
    assert len(records) == 40
    for c in records:
        assert (c.target >= low - 1e-9).all() and (c.target <= high + 1e-9).all(), c.target
        # the simulator's own servo target, i.e. what the gripper really tracks, stays inside too
        assert (c.target_after >= low - 1e-6).all() and (c.target_after <= high + 1e-6).all(), c.target_after
    ee = robot.driver.observe().robot.ee
    assert (ee >= low - 0.01).all() and (ee <= high + 0.01).all()
    assert infos[-1]["safety/workspace_clipped"] > 0


def test_workspace_refuse_holds_instead(make_robot):
    robot = make_robot(safety={**BOX, "limit_mode": "refuse"})
    robot.reset("lift_blue", 3)
    for _ in range(4):
        result = robot.step(np.tile([1.0, 0.0, 0.0, -1.0], (10, 1)))
    assert result.steps == 10  # a refused command still takes its control period
    records = [c for c in robot.driver.commands if c.kind == "command"]
    assert all(c.target[0] <= 0.1 + 1e-9 for c in records)
    assert "hold" in kinds(robot)
    assert result.info["safety/workspace_refused"] > 0
    assert result.info["safety/workspace_clipped"] == 0


def test_joint_limits(make_robot):
    # the sim's joints are its state vector: gantry x, y, z and the finger gap; limit z to >= 0.09
    robot = make_robot(safety={"joint_low": (-1, -1, 0.09, -1), "joint_high": (1, 1, 1, 1)})
    robot.reset("lift_blue", 3)
    for _ in range(3):
        result = robot.step(np.tile([0.0, 0.0, -1.0, -1.0], (10, 1)))
    assert all(c.target[2] >= 0.09 - 1e-9 for c in robot.driver.commands if c.kind == "command")
    assert robot.driver.observe().robot.joints[2] >= 0.09 - 0.01
    assert result.info["safety/workspace_clipped"] > 0


def test_max_change_per_step(make_robot):
    robot = make_robot(safety={"max_delta": (0.25, 0.25, 0.25, 0.5)})
    robot.reset("press_button", 0)
    zigzag = np.array([[1.0, -1.0, 1.0, 1.0], [-1.0, 1.0, -1.0, -1.0]] * 4)
    result = robot.step(zigzag)
    sent = np.array(commands(robot))
    assert (np.abs(np.diff(sent, axis=0)) <= [0.25 + 1e-12, 0.25 + 1e-12, 0.25 + 1e-12, 0.5 + 1e-12]).all()
    np.testing.assert_allclose(sent[1], [0.75, -0.75, 0.75, 0.5])  # each step moves at most max_delta back
    # the first command has nothing to change from; from 0.75 the way back to 1.0 is within reach
    assert result.info["safety/delta_clipped"] == 4


def test_episode_step_cap(make_robot):
    robot = make_robot(safety={"max_episode_steps": 5})
    robot.reset("press_button", 0)
    first = robot.step(np.zeros((3, 4)))
    second = robot.step(np.zeros((4, 4)))
    assert (first.steps, second.steps) == (3, 2)
    assert second.done and second.info["truncated"]
    assert len(commands(robot)) == 5
    assert second.info["safety/step_cap"] == 1
    with pytest.raises(EnvError, match="without a running episode"):
        robot.step(np.zeros((1, 4)))


def test_control_rate_paces_a_too_fast_trainer(make_robot):
    robot = make_robot(control_hz=40.0)
    robot.reset("press_button", 0)
    for _ in range(3):  # chunk after chunk, as fast as a trainer can send them
        result = robot.step(np.zeros((4, 4)))
    times = np.array([c.time for c in robot.driver.commands if c.kind == "command"])
    assert len(times) == 12
    assert np.diff(times).min() >= 1 / 40 - 2e-3
    # (how often it had to wait depends on how fast this machine steps the simulator, so not asserted)
    assert result.info["safety/rate_waits"] <= 11


def test_watchdog_holds_when_commands_stop(make_robot):
    robot = make_robot(safety={"watchdog_ms": 100})
    robot.reset("press_button", 0)
    robot.step(np.tile([0.5, 0.0, 0.0, -1.0], (3, 1)))
    last = robot.driver.commands[-1].time
    time.sleep(0.4)
    holds = [c for c in robot.driver.commands if c.kind == "hold" and c.time > last]
    assert len(holds) == 1  # held once, not every tick
    assert holds[0].time - last >= 0.1
    assert robot.interventions.counts["watchdog_holds"] == 1
    robot.step(np.zeros((1, 4)))  # a new command resumes; the count shows in the next step's info
    assert robot.step(np.zeros((1, 4))).info["safety/watchdog_holds"] == 1


def test_estop_latches_until_a_person_resets_it(make_robot):
    robot = make_robot()
    robot.reset("press_button", 0)
    robot.step(np.zeros((2, 4)))
    robot.estop.trigger("test button")
    assert kinds(robot)[-1] == "stop"
    for attempt in (lambda: robot.step(np.zeros((1, 4))), lambda: robot.reset("press_button", 1)):
        with pytest.raises(EnvError, match="e-stop engaged.*a person must reset it"):
            attempt()
    assert len(commands(robot)) == 2
    assert robot.estop.reset()
    robot.reset("press_button", 1)
    assert robot.step(np.zeros((1, 4))).steps == 1


def test_estop_interrupts_a_chunk_in_progress(make_robot):
    robot = make_robot(control_hz=50.0)
    robot.reset("press_button", 0)
    stopped_at = []

    def press():
        time.sleep(0.15)
        stopped_at.append(time.monotonic())
        robot.estop.trigger("mid-chunk")

    threading.Thread(target=press).start()
    with pytest.raises(EnvError, match="e-stop engaged during the chunk"):
        robot.step(np.zeros((50, 4)))  # a second of commands at 50 Hz
    sent = [c for c in robot.driver.commands if c.kind == "command"]
    assert 3 <= len(sent) < 20
    assert all(c.time <= stopped_at[0] + 0.001 for c in sent)


def test_operator_confirms_each_reset(make_robot):
    robot = make_robot(confirm_reset=True, confirm_timeout_s=0.3)
    with pytest.raises(EnvError, match="nobody confirmed the reset"):
        robot.reset("press_button", 0)
    assert "home" not in kinds(robot)[1:]  # connect homes once; the unconfirmed reset did not move

    def confirm_soon():
        while not robot.waiting_for_confirmation:
            time.sleep(0.01)
        robot.confirm()

    threading.Thread(target=confirm_soon).start()
    robot.reset("press_button", 0)
    assert kinds(robot)[-1] == "home"


def test_disconnect_mid_episode_holds_and_ends_it(make_robot):
    robot = make_robot()
    robot.reset("press_button", 0)
    robot.step(np.zeros((2, 4)))
    robot.trainer_gone("peer closed the connection")
    assert kinds(robot)[-1] == "hold"
    assert robot.interventions.counts["disconnects"] == 1
    with pytest.raises(EnvError):
        robot.step(np.zeros((1, 4)))


def test_intervention_log_file_names_the_episode(make_robot, tmp_path):
    import json

    path = tmp_path / "interventions.jsonl"
    robot = make_robot(safety={"action_high": (0.5, 1, 1, 1), "action_low": (-1, -1, -1, -1)},
                       intervention_log=str(path))
    robot.reset("press_button", 0)
    robot.reset("lift_blue", 2)
    robot.step(np.array([[0.9, 0, 0, 0]]))
    (entry,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert entry["kind"] == "clipped" and entry["episode"] == 2 and entry["episode_label"] == "lift_blue#2"


def test_bad_safety_configs_are_one_line_errors():
    with pytest.raises(ConfigError, match="workspace_low/high need 3 values"):
        SafetyConfig(workspace_low=(0, 0), workspace_high=(1, 1))
    with pytest.raises(ConfigError, match="below its high"):
        SafetyConfig(action_low=(1.0,), action_high=(0.0,))
    with pytest.raises(ConfigError, match="limit_mode must be one of clip, refuse"):
        SafetyConfig(limit_mode="ignore")
    with pytest.raises(ConfigError, match="4 values|one limit per action dimension"):
        RobotEnv(RealEnvConfig(driver="replay", safety=SafetyConfig(action_low=(-1,), action_high=(1,))))


def test_replay_driver_records_commands_and_serves_canned_frames(tmp_path):
    record = tmp_path / "commands.jsonl"
    driver = ReplayDriver(ReplayDriverConfig(record_file=str(record), image_size=32))
    robot = RobotEnv(RealEnvConfig(driver="replay", safety=SafetyConfig(
        workspace_low=(-0.05, -0.05, 0.0), workspace_high=(0.05, 0.05, 0.2))), driver=driver, log=lambda line: None)
    try:
        obs = robot.reset("dry_run", 0)
        assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8
        result = robot.step(np.tile([1.0, 0, 0, 0], (6, 1)), record=True)
        assert len(result.frames) == 6 and not np.array_equal(result.frames[0], result.frames[-1])
        xs = [c.ee_before[0] for c in driver.commands if c.kind == "command"]
        assert max(xs) <= 0.05 + 1e-9 and driver.observe().robot.ee[0] <= 0.05 + 1e-9
        assert len(record.read_text().splitlines()) == len(driver.commands)
    finally:
        robot.close()
