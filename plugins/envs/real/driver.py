"""The :class:`RobotDriver` contract a robot vendor implements, and the driver registry.

A driver is the only code that talks to the hardware. It knows nothing about
trainers, safety or the wire: :class:`~pushcut.plugins.envs.real.env.RobotEnv`
wraps it, checks every command against the safety limits first, paces it at
the control rate and turns it into the Env contract that ``pushcut robot
serve`` puts on the network.

Drivers are plugins: a package implements the ``pushcut_register_robot_drivers``
hook (:mod:`.hookspecs`) and calls ``registry.add(name, ConfigClass, DriverClass)``,
exactly like an env plugin registers envs; the plugin manager keeps them in its
``robot_drivers`` registry. This module imports no torch (it runs on the robot PC).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pushcut.envcontract import ActionSpec, TaskSpec
from pushcut.registry import Registry


@dataclass
class RobotState:
    """What the robot measures about itself: end-effector position and joint positions."""

    ee: np.ndarray
    """End-effector (grip point) position, (3,) metres in the robot's base frame."""
    joints: np.ndarray
    """Joint positions, (J,) in the driver's units (rad or m), same order as ``RobotSpec.joint_names``."""


@dataclass
class RobotObservation:
    """One reading of the robot's sensors."""

    cameras: dict[str, np.ndarray]
    """Camera name → (H, W, 3) uint8 frame; ``image`` is the main camera, ``wrist_image`` optional."""
    state: np.ndarray
    """The proprio vector the policy sees as ``state`` (float32)."""
    robot: RobotState
    """End-effector and joint positions the safety layer checks."""
    success: bool | None = None
    """The driver's own success flag when it has one (a simulator); None on a real robot."""


@dataclass(frozen=True)
class RobotSpec:
    """What a driver tells the safety layer and the trainer about its robot."""

    action_spec: ActionSpec
    """Shape and nominal bounds of one action."""
    joint_names: tuple[str, ...]
    """Names of the joints in ``RobotState.joints``."""
    tasks: tuple[TaskSpec, ...]
    """The tasks an operator can set up on this robot."""
    info: dict[str, Any] = field(default_factory=dict)
    """Anything else worth showing to a trainer (model, serial number)."""


class RobotDriver(abc.ABC):
    """One robot. Every method but :meth:`stop` is called from one thread at a time;
    :meth:`stop` may be called from any thread at any moment (an e-stop) and must
    stop the robot as fast as the hardware allows.

    The e-stop rule every driver keeps (``pushcut.testing.RobotDriverContract`` checks it):
    after :meth:`stop`, :meth:`command` moves nothing until the next :meth:`home` — it is
    ignored (or raises). :class:`~pushcut.plugins.envs.real.env.RobotEnv` already refuses every
    motion after an e-stop under the same gate as the stop; the driver's own latch is the
    second line, for the command that was already on its way."""

    @abc.abstractmethod
    def connect(self) -> RobotSpec:
        """Open the connection to the robot (and its cameras); return its spec."""

    @abc.abstractmethod
    def observe(self) -> RobotObservation:
        """The current sensor reading."""

    @abc.abstractmethod
    def predict(self, state: RobotState, action: np.ndarray) -> RobotState:
        """Where ``action`` would take the robot from ``state`` within one control period
        (the commanded target). The safety layer calls this *before* the command is sent,
        to keep the end effector in its workspace box and the joints in their limits."""

    @abc.abstractmethod
    def hold_action(self, state: RobotState, previous: np.ndarray | None) -> np.ndarray:
        """The action that keeps the robot where it is (motion zeroed, gripper as ``previous``
        left it). A refused or clipped command moves towards this action."""

    @abc.abstractmethod
    def command(self, action: np.ndarray) -> None:
        """Send one action (action_dim,) that the safety layer already checked; return once
        it is sent (the caller paces commands at the control rate). After :meth:`stop` and
        until the next :meth:`home`, ignore it (or raise): the robot must not move."""

    @abc.abstractmethod
    def hold(self) -> None:
        """Stay where the robot is (brakes or position hold), e.g. when the trainer is silent."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Emergency stop. Thread-safe; must not wait for a command in progress; latches the
        driver so that :meth:`command` moves nothing until the next :meth:`home`."""

    @abc.abstractmethod
    def home(self, task_id: str, init_state: int) -> RobotObservation:
        """Move to the start pose of ``task_id`` (an operator may set the scene up meanwhile)
        and return the first observation of the episode. Releases the latch :meth:`stop` set
        (it is only called once a person has reset the e-stop)."""

    def frame(self) -> np.ndarray:
        """A frame for videos and the human judge; default: the main camera."""
        return self.observe().cameras["image"]

    def close(self) -> None:
        """Release the robot (called once when the server stops)."""
