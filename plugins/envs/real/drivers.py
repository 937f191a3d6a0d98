"""The two built-in robot drivers.

* ``sim``: any registered simulator env driven as if it were a robot (the
  tabletop by default), so the whole bridge — safety layer, watchdog, e-stop,
  pacing, the operator, the network — runs and is tested without hardware.
  Its kinematic model for the safety layer is a delta-position one: the action
  dimensions ``ee_action_dims`` move the end effector by ``ee_step_m`` metres
  per unit per step.
* ``replay``: a dry-run robot that records every command it receives and
  answers with canned frames (PNG files, or generated ones), integrating the
  same delta-position model so workspace limits can be rehearsed.

Both keep a log of what they were sent (``driver.commands``), which is what the
tests check the safety guarantees against.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pushcut.configio import PluginChoice, choice
from pushcut.envcontract import OBS_IMAGE, OBS_STATE, OBS_WRIST_IMAGE, ActionSpec, Env, TaskSpec, split_init_states
from pushcut.errors import ConfigError, EnvError
from pushcut.plugins.envs.real.driver import RobotDriver, RobotObservation, RobotSpec, RobotState


@dataclass
class CommandRecord:
    """One entry of a driver's log: what it was told, when, and the state it was in."""

    kind: str
    """``command``, ``hold``, ``stop``, ``home`` or ``ignored`` (a command after ``stop``, before ``home``)."""
    action: np.ndarray | None
    ee_before: np.ndarray
    time: float
    target: np.ndarray | None = None
    """For a command: where the driver's own kinematic model says it leads (the checked target)."""
    target_after: np.ndarray | None = None
    """For a command to a sim: the simulator's own controller target after it (what its servos track)."""


def _check_dims(name: str, dims: tuple[int, ...], size: int, what: str) -> None:
    bad = [d for d in dims if not 0 <= d < size]
    if bad:
        raise ConfigError(f"env.driver.{name}: indices {bad} outside 0..{size - 1} of the {what}")


class _DeltaKinematics:
    """Delta-position kinematics shared by both drivers: ``ee' = ee + ee_step_m · a[ee_action_dims]``;
    the joints are the state vector, whose ``ee_state_dims`` entries move with the end effector."""

    ee_action_dims: tuple[int, ...]
    ee_state_dims: tuple[int, ...]
    ee_step_m: float
    rest_action: np.ndarray

    def predict(self, state: RobotState, action: np.ndarray) -> RobotState:
        a = np.asarray(action, dtype=np.float64)
        ee = np.asarray(state.ee, dtype=np.float64) + self.ee_step_m * a[list(self.ee_action_dims)]
        joints = np.asarray(state.joints, dtype=np.float64).copy()
        joints[list(self.ee_state_dims)] = ee
        return RobotState(ee=ee, joints=joints)

    def hold_action(self, state: RobotState, previous: np.ndarray | None) -> np.ndarray:
        hold = (np.asarray(previous, dtype=np.float64) if previous is not None else self.rest_action).copy()
        hold[list(self.ee_action_dims)] = 0.0
        return hold


# --------------------------------------------------------------------------- sim


@dataclass
class SimDriverConfig:
    """A registered simulator env driven as a robot."""

    env: PluginChoice = choice("envs", "tabletop")
    """The simulator: ``{type: a registered env, ...its options}``."""
    ee_state_dims: tuple[int, ...] = (0, 1, 2)
    """Where the end-effector x, y, z sit in the env's ``state`` observation."""
    ee_action_dims: tuple[int, ...] = (0, 1, 2)
    """Action dimensions that move the end effector along x, y, z (delta position)."""
    ee_step_m: float = 0.02
    """End-effector travel (m) per step for an action component of 1 (tabletop: 2 cm)."""
    rest_action: tuple[float, ...] = (0.0, 0.0, 0.0, -1.0)
    """The hold action at the start of an episode (tabletop: no motion, gripper open)."""
    target_attr: str = "scene.target_pos"
    """Dotted attribute of the env holding the commanded end-effector target, for a controller that
    integrates its target (the tabletop's servo target); a missing attribute or empty = predict from
    the measured position."""

    def __post_init__(self) -> None:
        if len(self.ee_state_dims) != 3 or len(self.ee_action_dims) != 3:
            raise ConfigError("env.driver.ee_state_dims and ee_action_dims need 3 indices each (x, y, z)")
        if not self.ee_step_m > 0:
            raise ConfigError(f"env.driver.ee_step_m must be > 0 metres, got {self.ee_step_m}")


class SimDriver(_DeltaKinematics, RobotDriver):
    """``sim``: the env is built on ``connect``; between commands simulated time stands still,
    which is what holding means for a simulator (the hold is still logged)."""

    def __init__(self, config: SimDriverConfig | None = None, manager: Any = None) -> None:
        self.config = config or SimDriverConfig()
        self.ee_action_dims, self.ee_state_dims = self.config.ee_action_dims, self.config.ee_state_dims
        self.ee_step_m = self.config.ee_step_m
        self._manager = manager
        self.env: Env | None = None
        self.commands: list[CommandRecord] = []
        self._lock = threading.Lock()
        self._last: dict[str, np.ndarray] = {}
        self._success = False
        self.stopped = False
        self._stops = 0

    def connect(self) -> RobotSpec:
        from pushcut.configio import resolve_choice
        from pushcut.pluginmanager import get_plugin_manager

        manager = self._manager or get_plugin_manager()
        chosen = resolve_choice(self.config.env, "envs", "tabletop", "env.driver.env", manager)
        name = chosen.type
        self.env = manager.envs.get(name).factory(chosen.options)
        spec = self.env.action_spec
        task = self.env.tasks()[0]
        first = self.env.reset(task.task_id, task.train_init_states[0] if task.train_init_states else 0)
        size = len(first[OBS_STATE])
        _check_dims("ee_state_dims", self.ee_state_dims, size, "env's state vector")
        _check_dims("ee_action_dims", self.ee_action_dims, spec.action_dim, "action")
        if len(self.config.rest_action) != spec.action_dim:
            raise ConfigError(f"env.driver.rest_action needs {spec.action_dim} values (the env's action_dim), "
                              f"got {len(self.config.rest_action)}")
        self.rest_action = np.array(self.config.rest_action, dtype=np.float64)
        self._last = first
        return RobotSpec(spec, tuple(f"state_{i}" for i in range(size)), tuple(self.env.tasks()),
                         {"driver": "sim", "env": name})

    def predict(self, state: RobotState, action: np.ndarray) -> RobotState:
        target = self._target()
        if target is not None:  # the controller integrates its target: that is what a command moves
            state = RobotState(ee=target, joints=state.joints)
        return super().predict(state, action)

    def _target(self) -> np.ndarray | None:
        obj: Any = self.env
        for part in filter(None, self.config.target_attr.split(".")):
            obj = getattr(obj, part, None)
        if obj is None or obj is self.env:
            return None
        return np.array(obj, dtype=np.float64).reshape(3)

    def observe(self) -> RobotObservation:
        state = np.asarray(self._last[OBS_STATE], dtype=np.float64)
        cameras = {k: v for k, v in self._last.items() if k in (OBS_IMAGE, OBS_WRIST_IMAGE)}
        return RobotObservation(cameras, state.astype(np.float32),
                                RobotState(ee=state[list(self.ee_state_dims)], joints=state), self._success)

    def command(self, action: np.ndarray) -> None:
        with self._lock:
            if self.stopped:  # latched by stop until home: the robot does not move
                self.commands.append(CommandRecord("ignored", np.array(action, dtype=np.float64),
                                                   self.observe().robot.ee.copy(), time.monotonic()))
                return
            state = self.observe().robot
            record = CommandRecord("command", np.array(action, dtype=np.float64), state.ee.copy(), time.monotonic(),
                                   target=self.predict(state, action).ee)
            self.commands.append(record)
            result = self.env.step(np.asarray(action, dtype=np.float64)[None])
            self._last, self._success = result.observation, bool(result.success)
            record.target_after = self._target()

    def hold(self) -> None:
        with self._lock:
            self.commands.append(CommandRecord("hold", None, self.observe().robot.ee.copy(), time.monotonic()))

    def stop(self) -> None:
        self.stopped = True  # set before the lock: a command waiting for it is ignored
        self._stops += 1
        with self._lock:
            self.commands.append(CommandRecord("stop", None, self.observe().robot.ee.copy(), time.monotonic()))

    def home(self, task_id: str, init_state: int) -> RobotObservation:
        stops = self._stops
        with self._lock:
            self._last = self.env.reset(task_id, init_state)
            self._success = False
            self.stopped = self._stops != stops  # a stop during homing keeps the latch
            self.commands.append(CommandRecord("home", None, self.observe().robot.ee.copy(), time.monotonic()))
        return self.observe()

    def frame(self) -> np.ndarray:
        with self._lock:
            return self.env.render()

    def close(self) -> None:
        if self.env is not None:
            self.env.close()


# --------------------------------------------------------------------------- replay


@dataclass
class ReplayDriverConfig:
    """A dry-run robot: records commands, answers with canned frames."""

    frames_dir: str = ""
    """Directory of PNG/JPEG frames returned in turn; empty = generated frames."""
    image_size: int = 64
    """Side (px) of generated frames."""
    action_dim: int = 4
    """Floats per action."""
    tasks: dict[str, str] = field(default_factory=lambda: {"dry_run": "move the arm around"})
    """Task id → instruction."""
    num_init_states: int = 10
    """Start poses per task (the operator's scene set-ups)."""
    max_steps: int = 50
    """Commands per episode."""
    start_ee: tuple[float, float, float] = (0.0, 0.0, 0.1)
    """End-effector position after homing (m)."""
    ee_step_m: float = 0.02
    """End-effector travel (m) per step for an action component of 1 along dims 0, 1, 2."""
    record_file: str = ""
    """JSON-lines file every received command is appended to; empty = in memory only."""

    def __post_init__(self) -> None:
        if self.action_dim < 3:
            raise ConfigError(f"env.driver.action_dim must be >= 3 (dx, dy, dz first), got {self.action_dim}")
        if not self.tasks:
            raise ConfigError("env.driver.tasks needs at least one task id: instruction")
        if self.num_init_states < 2 or self.max_steps < 1:
            raise ConfigError("env.driver: num_init_states must be >= 2 and max_steps >= 1")


class ReplayDriver(_DeltaKinematics, RobotDriver):
    """``replay``: nothing moves; every command is recorded (``commands``, ``record_file``)."""

    ee_action_dims = ee_state_dims = (0, 1, 2)

    def __init__(self, config: ReplayDriverConfig | None = None) -> None:
        self.config = config or ReplayDriverConfig()
        self.ee_step_m = self.config.ee_step_m
        self.rest_action = np.zeros(self.config.action_dim)
        self.commands: list[CommandRecord] = []
        self._frames: list[np.ndarray] = []
        self._ee = np.array(self.config.start_ee, dtype=np.float64)
        self._tick = 0
        self._lock = threading.Lock()
        self.stopped = False
        self._stops = 0

    def connect(self) -> RobotSpec:
        if self.config.frames_dir:
            from PIL import Image

            paths = sorted(p for p in Path(self.config.frames_dir).iterdir()
                           if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            if not paths:
                raise EnvError(f"replay robot: no PNG/JPEG frames in {self.config.frames_dir!r}; put some there or "
                               "leave env.driver.frames_dir empty for generated frames")
            self._frames = [np.array(Image.open(p).convert("RGB"), dtype=np.uint8) for p in paths]
        n = self.config.num_init_states
        train, evaluate = split_init_states(n, max(1, n // 5))
        tasks = tuple(TaskSpec(t, instr, n, train, evaluate, self.config.max_steps) for t, instr in self.config.tasks.items())
        dim = self.config.action_dim
        return RobotSpec(ActionSpec(dim, (-1.0,) * dim, (1.0,) * dim), ("x", "y", "z"), tasks, {"driver": "replay"})

    def _frame(self) -> np.ndarray:
        if self._frames:
            return self._frames[self._tick % len(self._frames)]
        s = self.config.image_size
        ramp = np.linspace(0, 255, s, dtype=np.float64)
        img = np.empty((s, s, 3), dtype=np.uint8)
        img[..., 0] = ramp[None, :]
        img[..., 1] = ramp[:, None]
        img[..., 2] = (self._tick * 17) % 256
        return img

    def observe(self) -> RobotObservation:
        return RobotObservation({OBS_IMAGE: self._frame()}, self._ee.astype(np.float32),
                                RobotState(ee=self._ee.copy(), joints=self._ee.copy()))

    def _log(self, kind: str, action: np.ndarray | None) -> None:
        self.commands.append(CommandRecord(kind, action, self._ee.copy(), time.monotonic()))
        if self.config.record_file:
            with open(self.config.record_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"kind": kind, "action": None if action is None else action.tolist(),
                                     "ee": self._ee.tolist(), "time": time.time()}) + "\n")

    def command(self, action: np.ndarray) -> None:
        with self._lock:
            a = np.array(action, dtype=np.float64)
            if self.stopped:  # latched by stop until home: nothing moves
                self._log("ignored", a)
                return
            self._log("command", a)
            self._ee = self._ee + self.ee_step_m * a[:3]
            self._tick += 1

    def hold(self) -> None:
        with self._lock:
            self._log("hold", None)

    def stop(self) -> None:
        self.stopped = True  # before the lock: a command waiting for it is ignored
        self._stops += 1
        with self._lock:
            self._log("stop", None)

    def home(self, task_id: str, init_state: int) -> RobotObservation:
        stops = self._stops
        with self._lock:
            self.stopped = self._stops != stops  # a stop during homing keeps the latch
            self._ee = np.array(self.config.start_ee, dtype=np.float64)
            self._tick = 0
            self._log("home", None)
        return self.observe()
