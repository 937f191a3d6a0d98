"""The e-stop and the control rate under hostile timing, against drivers that do not help: a driver
that keeps moving after its own ``stop`` (no latch), one whose homing takes long, one whose
``command`` is slow. Each test reads the driver's own log — what the robot actually received."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from pushcut.errors import EnvError
from pushcut.plugins.envs.real import RealEnvConfig, ReplayDriver, ReplayDriverConfig, RobotEnv, SafetyConfig
from pushcut.testing import RobotDriverContract


class NonLatchingDriver(ReplayDriver):
    """A replay robot that obeys every command, even after its own ``stop``: the driver contract
    asks it to latch, this one does not, so only RobotEnv's gate stands between an e-stop and motion."""

    def command(self, action: np.ndarray) -> None:
        with self._lock:
            a = np.array(action, dtype=np.float64)
            self._log("command", a)
            self._ee = self._ee + self.ee_step_m * a[:3]
            self._tick += 1

    def stop(self) -> None:
        with self._lock:
            self._log("stop", None)


class SlowHomeDriver(NonLatchingDriver):
    """Homing takes ``home_s`` seconds (a real arm driving to its start pose)."""

    home_s = 0.4

    def home(self, task_id: str, init_state: int):
        time.sleep(self.home_s)
        return super().home(task_id, init_state)


class SlowCommandDriver(NonLatchingDriver):
    """Each command takes 3 ms to go out (a slow field bus)."""

    def command(self, action: np.ndarray) -> None:
        time.sleep(0.003)
        super().command(action)


def robot_on(driver: ReplayDriver, **options) -> RobotEnv:
    config = RealEnvConfig(driver="replay", safety=SafetyConfig(watchdog_ms=0), **options)
    return RobotEnv(config, driver=driver, log=lambda line: None)


def after_stop(driver: ReplayDriver) -> list[str]:
    """Kinds of everything the driver received after its first ``stop`` and before the next ``home``,
    other than ``stop`` itself, but for the one motion already past the gate when the e-stop came
    (under load it may reach the driver after the first ``stop``: then ``stop`` is sent once more,
    after it — and nothing may follow that)."""
    kinds = [c.kind for c in driver.commands]
    rest = kinds[kinds.index("stop") + 1:]
    rest = rest[:rest.index("home")] if "home" in rest else rest
    if "command" in rest:
        assert rest.count("command") == 1 and rest.index("command") < len(rest) - 1 - rest[::-1].index("stop"), (
            f"a command reached the driver after its last stop: {kinds}")
    return [k for k in rest if k not in ("stop", "command")]


def test_no_command_reaches_a_non_latching_driver_after_an_estop_at_any_offset_into_a_chunk():
    """40 e-stops, each at another moment of a 16-command chunk at 200 Hz (inside the pacing wait,
    just before a command, during one): never one command between ``stop`` and the next ``home``."""
    rng = random.Random(0)
    period, chunk = 1 / 200, 16
    offsets = [i * period * chunk / 40 + rng.uniform(0, period / 4) for i in range(40)]
    stopped_mid_chunk = 0
    for i, offset in enumerate(offsets):  # every other one with 3 ms commands: e-stops land inside them too
        driver = (SlowCommandDriver if i % 2 else NonLatchingDriver)(ReplayDriverConfig(max_steps=500))
        robot = robot_on(driver, control_hz=200.0)
        try:
            robot.reset("dry_run", 0)
            errors: list[BaseException] = []

            def run_chunk() -> None:
                try:
                    robot.step(np.full((chunk, 4), 0.1))
                except EnvError as exc:
                    errors.append(exc)

            worker = threading.Thread(target=run_chunk)
            worker.start()
            time.sleep(offset)
            robot.estop.trigger(f"offset {offset * 1e3:.1f} ms")
            worker.join(5)
            assert not worker.is_alive()
            assert "stop" in [c.kind for c in driver.commands]
            assert after_stop(driver) == [], (offset, after_stop(driver))
            stopped_mid_chunk += bool(errors)
            # and nothing moves on until a person resets it: not the next chunk, not a reset
            for attempt in (lambda: robot.step(np.zeros((2, 4))), lambda: robot.reset("dry_run", 1)):
                with pytest.raises(EnvError, match="e-stop engaged"):
                    attempt()
            assert after_stop(driver) == []
        finally:
            robot.close()
    assert stopped_mid_chunk >= 30  # most e-stops landed inside the chunk, not after it


def test_an_estop_while_homing_stops_at_once_and_the_episode_never_starts():
    driver = SlowHomeDriver(ReplayDriverConfig())
    robot = robot_on(driver)
    try:
        errors: list[BaseException] = []
        worker = threading.Thread(target=lambda: errors.append(pytest.raises(EnvError, robot.reset, "dry_run", 0)))
        worker.start()
        time.sleep(0.1)  # homing is under way
        t0 = time.monotonic()
        robot.estop.trigger("during homing")
        stop = next(c for c in driver.commands if c.kind == "stop")
        assert stop.time - t0 < 0.2  # the stop did not wait for the 0.4 s homing to finish
        worker.join(5)
        assert "e-stop engaged while homing" in str(errors[0].value)
        robot.estop.reset()  # even once released, the interrupted episode does not go on
        with pytest.raises(EnvError, match="without a running episode"):
            robot.step(np.zeros((1, 4)))
        assert [c.kind for c in driver.commands if c.kind == "command"] == []
    finally:
        robot.close()


def test_an_estop_before_homing_is_refused_before_the_driver_moves():
    driver = NonLatchingDriver(ReplayDriverConfig())
    robot = robot_on(driver)
    try:
        robot.estop.trigger("before the episode")
        with pytest.raises(EnvError, match="e-stop engaged"):
            robot.reset("dry_run", 0)
        assert [c.kind for c in driver.commands] == ["stop"]
        assert robot.estop.reset()
        robot.reset("dry_run", 0)
        assert robot.step(np.zeros((2, 4))).steps == 2
    finally:
        robot.close()


def test_every_command_is_a_full_period_after_the_previous_across_chunks_and_pauses():
    """Chunks of varying length with trainer pauses between them (none, shorter than a period,
    longer than one, much longer): every gap between two commands the driver received is at least
    one control period. The old schedule sent the first two commands of a late chunk back to back."""
    hz, tolerance = 50.0, 1e-3  # 20 ms periods; 1 ms for the clock reads around the driver's own timestamp
    driver = NonLatchingDriver(ReplayDriverConfig(max_steps=500))
    robot = robot_on(driver, control_hz=hz)
    try:
        robot.reset("dry_run", 0)
        for pause, length in [(0.0, 3), (0.005, 4), (0.03, 2), (0.0, 1), (0.1, 5), (0.021, 3), (0.019, 2)]:
            time.sleep(pause)
            robot.step(np.zeros((length, 4)))
        times = np.array([c.time for c in driver.commands if c.kind == "command"])
        assert len(times) == 20
        gaps = np.diff(times)
        assert gaps.min() >= 1 / hz - tolerance, gaps.round(4)
    finally:
        robot.close()


class SlowObserveDriver(NonLatchingDriver):
    """A camera read takes 50 ms once ``slow`` is set: the e-stop and its reset fit between two commands."""

    slow = False

    def observe(self):
        if self.slow:
            time.sleep(0.05)
        return super().observe()


def test_an_estop_and_its_reset_between_two_commands_still_end_the_episode():
    driver = SlowObserveDriver(ReplayDriverConfig(max_steps=100))
    robot = robot_on(driver, control_hz=10.0)
    try:
        robot.reset("dry_run", 0)
        driver.slow = True
        errors: list[BaseException] = []
        worker = threading.Thread(target=lambda: errors.append(pytest.raises(EnvError, robot.step, np.full((5, 4), 0.5))))
        worker.start()
        while not any(c.kind == "command" for c in driver.commands):
            time.sleep(0.001)
        time.sleep(0.01)  # inside the 50 ms camera read after the first command
        robot.estop.trigger("pressed")
        robot.estop.reset()  # and released at once (a script, a second operator, "e\nr\n" on the console)
        worker.join(5)
        assert "e-stop engaged during the chunk" in str(errors[0].value)
        assert after_stop(driver) == []  # not one more command without a new home
        with pytest.raises(EnvError, match="without a running episode"):
            robot.step(np.zeros((1, 4)))
    finally:
        robot.close()


class FlakyStopDriver(ReplayDriver):
    """A driver whose ``stop()`` raises once (a link hiccup), after latching."""

    def __init__(self, config):
        super().__init__(config)
        self.fail = True

    def stop(self) -> None:
        super().stop()
        if self.fail:
            self.fail = False
            raise OSError("link hiccup while sending stop")


def test_a_stop_that_raises_still_latches_ends_the_episode_and_the_next_press_works():
    lines: list[str] = []
    driver = FlakyStopDriver(ReplayDriverConfig())
    robot = RobotEnv(RealEnvConfig(driver="replay", safety=SafetyConfig(watchdog_ms=0)), driver=driver, log=lines.append)
    try:
        robot.reset("dry_run", 0)
        robot.step(np.zeros((2, 4)))
        robot.estop.trigger("pressed")  # does not raise into the signal watcher / console / page
        assert robot.estop.engaged and any("may NOT have stopped" in line for line in lines)
        robot.estop.reset()
        with pytest.raises(EnvError, match="without a running episode"):  # the old episode does not go on
            robot.step(np.full((3, 4), 0.5))
        robot.estop.trigger("again")  # the second press reaches the driver
        assert [c.kind for c in driver.commands].count("stop") == 2
    finally:
        robot.close()


def test_nothing_but_home_reaches_the_driver_after_stop_not_even_a_hold():
    driver = ReplayDriver(ReplayDriverConfig())
    robot = robot_on(driver)
    robot.reset("dry_run", 0)
    robot.step(np.zeros((1, 4)))
    robot.estop.trigger("pressed")
    robot.trainer_gone("peer closed the connection")  # what the server does when the trainer leaves after it
    robot.close()
    kinds = [c.kind for c in driver.commands]
    assert kinds[kinds.index("stop"):] == ["stop"], kinds


class SlowResetEnv:
    """A simulator whose reset (the sim driver's homing) takes 0.2 s."""

    def __init__(self, env):
        self.env = env

    def reset(self, task_id, init_state):
        time.sleep(0.2)
        return self.env.reset(task_id, init_state)

    def __getattr__(self, name):
        return getattr(self.env, name)


def test_a_stop_during_homing_keeps_the_sim_drivers_own_latch():
    from pushcut.plugins.envs.real import SimDriver, SimDriverConfig

    driver = SimDriver(SimDriverConfig(env={"type": "tabletop", "image_size": 32, "video_size": 32,
                                            "tasks": ["press_button"]}))
    try:
        spec = driver.connect()
        driver.env = SlowResetEnv(driver.env)
        task = spec.tasks[0]
        homing = threading.Thread(target=driver.home, args=(task.task_id, task.train_init_states[0]))
        homing.start()
        time.sleep(0.05)
        driver.stop()  # lands mid-home
        homing.join(5)
        before = driver.observe().robot.ee.copy()
        driver.command(np.array([1.0, 0.0, 0.0, -1.0]))
        assert driver.stopped and np.allclose(driver.observe().robot.ee, before)
        assert [c.kind for c in driver.commands][-1] == "ignored"
    finally:
        driver.close()


class TestReplayDriverContract(RobotDriverContract):
    @pytest.fixture
    def driver(self):
        return ReplayDriver(ReplayDriverConfig())


class TestSimDriverContract(RobotDriverContract):
    @pytest.fixture
    def driver(self):
        from pushcut.plugins.envs.real import SimDriver, SimDriverConfig

        driver = SimDriver(SimDriverConfig(env={"type": "tabletop", "image_size": 32, "video_size": 32,
                                                "tasks": ["press_button"]}))
        yield driver
        driver.close()


def test_the_driver_contract_catches_a_driver_that_moves_after_stop():
    suite = RobotDriverContract()
    with pytest.raises(AssertionError, match="moved after stop"):
        suite.test_command_after_stop_moves_nothing_until_home(NonLatchingDriver(ReplayDriverConfig()))
