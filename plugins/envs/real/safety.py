"""The robot-side safety layer: every command is checked here before the driver sees it.

:class:`SafetyLayer` turns one proposed action into the action that is safe to
send (or ``None``: hold still instead), reporting each intervention it made.
:class:`EStop` is the latch an e-stop sets and only a person resets.
:class:`InterventionLog` counts and logs every intervention with its episode id.
Nothing here trusts the trainer: limits come from the robot's own config.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from pushcut.envcontract import INFO_COUNTERS
from pushcut.errors import ConfigError, EnvError
from pushcut.plugins.envs.real.config import SafetyConfig
from pushcut.plugins.envs.real.driver import RobotDriver, RobotSpec, RobotState

COUNTERS = (
    "clipped",             # an action dimension was outside its limit and was clipped
    "delta_clipped",       # a dimension changed faster than max_delta and was limited
    "workspace_clipped",   # a motion was shortened to keep the end effector / joints inside
    "workspace_refused",   # a command that would leave the workspace / joint limits was replaced by a hold
    "nonfinite_refused",   # a chunk with NaN / inf was refused whole
    "rate_waits",          # a chunk arrived faster than the control rate and was paced
    "watchdog_holds",      # no command within watchdog_ms: the robot held position
    "step_cap",            # the episode hit its step cap: the rest was refused
    "estops",              # an e-stop stopped the robot
    "disconnects",         # the trainer went away mid-episode: the robot held
)
"""Names of the intervention counters; each appears in ``StepResult.info`` as ``safety/<name>``."""

_EPS = 1e-12
T = TypeVar("T")


@dataclass
class Intervention:
    """One thing the safety layer did instead of obeying the trainer."""

    kind: str
    """One of :data:`COUNTERS`."""
    detail: str


class SafetyLayer:
    """Per-dimension limits, max change per step, end-effector box and joint limits."""

    def __init__(self, config: SafetyConfig, spec: RobotSpec, driver: RobotDriver) -> None:
        self.config, self.driver = config, driver
        dim = spec.action_spec.action_dim
        self.low = np.array(config.action_low or spec.action_spec.low, dtype=np.float64)
        self.high = np.array(config.action_high or spec.action_spec.high, dtype=np.float64)
        if len(self.low) != dim:
            raise ConfigError(f"env.safety.action_low/high have {len(self.low)} values, the robot's actions have "
                              f"{dim}: give one limit per action dimension")
        self.max_delta = np.array(config.max_delta, dtype=np.float64) if config.max_delta else None
        if self.max_delta is not None and len(self.max_delta) != dim:
            raise ConfigError(f"env.safety.max_delta has {len(self.max_delta)} values, the robot's actions have "
                              f"{dim}: give one per action dimension")
        self.ws = (np.array(config.workspace_low), np.array(config.workspace_high)) if config.workspace_low else None
        self.joints = (np.array(config.joint_low), np.array(config.joint_high)) if config.joint_low else None
        if self.joints is not None and len(self.joints[0]) != len(spec.joint_names):
            raise ConfigError(f"env.safety.joint_low/high have {len(self.joints[0])} values, the robot has "
                              f"{len(spec.joint_names)} joints ({', '.join(spec.joint_names)})")
        self.dim = dim

    # ------------------------------------------------------------------ checks

    def check_chunk(self, actions: np.ndarray) -> np.ndarray:
        """``actions`` as float64 (chunk, action_dim), or a ValueError naming what is wrong (the whole
        chunk is then refused: a policy that emits NaN is broken, not merely aggressive)."""
        try:
            a = np.asarray(actions, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"actions must be a numeric (chunk, {self.dim}) array: {exc}") from None
        if a.ndim != 2 or a.shape[1] != self.dim or a.shape[0] < 1:
            raise ValueError(f"actions must have shape (chunk, {self.dim}), got {a.shape}")
        if not np.isfinite(a).all():
            rows = np.flatnonzero(~np.isfinite(a).all(axis=1)).tolist()
            raise ValueError(f"actions contain NaN or inf (chunk rows {rows})")
        return a

    def violation(self, target: RobotState) -> float:
        """How far ``target`` lies outside the workspace box and joint limits (0 = inside)."""
        total = 0.0
        for box, value in ((self.ws, target.ee), (self.joints, target.joints)):
            if box is not None:
                lo, hi = box
                v = np.asarray(value, dtype=np.float64)
                total += float(np.maximum(lo - v, 0).sum() + np.maximum(v - hi, 0).sum())
        return total

    def filter(self, action: np.ndarray, state: RobotState,
               previous: np.ndarray | None) -> tuple[np.ndarray | None, list[Intervention]]:
        """The safe version of ``action`` given the measured ``state`` and the last command sent
        (``previous``), or ``None`` when the robot must hold instead; plus what was changed."""
        events: list[Intervention] = []
        a = np.asarray(action, dtype=np.float64).copy()
        clipped = np.clip(a, self.low, self.high)
        if not np.array_equal(clipped, a):
            dims = np.flatnonzero(clipped != a).tolist()
            events.append(Intervention("clipped", f"dims {dims}: {a[dims].round(4).tolist()} -> "
                                                  f"{clipped[dims].round(4).tolist()}"))
            a = clipped
        if self.max_delta is not None and previous is not None:
            limited = np.clip(a, previous - self.max_delta, previous + self.max_delta)
            if not np.array_equal(limited, a):
                dims = np.flatnonzero(limited != a).tolist()
                events.append(Intervention("delta_clipped", f"dims {dims} changed by "
                                                            f"{(a - previous)[dims].round(4).tolist()}"))
                a = limited
        if self.ws is None and self.joints is None:
            return a, events
        hold = np.clip(np.asarray(self.driver.hold_action(state, previous), dtype=np.float64), self.low, self.high)
        base = self.violation(self.driver.predict(state, hold))  # already outside: may not get worse
        if self.violation(self.driver.predict(state, a)) <= base + _EPS:
            return a, events
        target = self.driver.predict(state, a)
        where = f"target ee {np.round(target.ee, 4).tolist()}, joints {np.round(target.joints, 4).tolist()}"
        if self.config.limit_mode == "refuse":
            events.append(Intervention("workspace_refused", f"{where} is outside the limits; held instead"))
            return None, events
        # Shorten the motion towards the hold action; the violation is convex along the segment for
        # the usual (piecewise-)linear kinematics, so bisection finds the longest admissible fraction.
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.violation(self.driver.predict(state, hold + mid * (a - hold))) <= base:
                lo = mid
            else:
                hi = mid
        safe = hold + lo * (a - hold)
        events.append(Intervention("workspace_clipped", f"{where} is outside the limits; motion scaled by {lo:.3f}"))
        return safe, events


STOP_WAIT_S = 0.02
"""How long an e-stop waits for a motion call already past the gate before it calls ``driver.stop()``
anyway: a command returns once sent (microseconds to milliseconds), so the stop normally follows it;
a call that takes longer (a homing motion, a stalled link) does not hold the stop back longer than
this — and when it returns, ``stop()`` is sent once more, so it is always the driver's last call."""


class EStopEngaged(EnvError):
    """A motion was refused because the e-stop is engaged."""


class EStop:
    """A latch: :meth:`trigger` stops the robot at once and refuses every motion until a person
    calls :meth:`reset` (console or the operator page on the robot PC; never the trainer).

    It is also the gate every motion goes through (:meth:`guarded`): the latch is read under the
    gate immediately before the driver call, and :meth:`trigger` sets the latch *before* it takes
    the gate to call ``stop``. So a motion either passed the gate before the e-stop (and ``stop``
    follows it), or it sees the latch and never reaches the driver — nothing reaches a driver
    between its ``stop`` and the next reset, even a driver that does not latch on its own."""

    def __init__(self, on_trigger: Callable[[str, bool], None], stop_wait_s: float = STOP_WAIT_S) -> None:
        self._engaged = threading.Event()
        self._lock = threading.Lock()
        self._gate = threading.Lock()
        self.reason = ""
        self.epoch = 0
        """How many times the e-stop was triggered. An episode remembers the epoch it homed in and
        its motions pass only in that epoch: an e-stop *and* a reset between two commands still end it."""
        self.stop_wait_s = stop_wait_s
        self._on_trigger = on_trigger

    @property
    def engaged(self) -> bool:
        return self._engaged.is_set()

    def trigger(self, reason: str) -> None:
        with self._lock:
            first = not self._engaged.is_set()
            self._engaged.set()  # first: from here on no motion passes the gate
            self.epoch += 1
            if first:
                self.reason = reason
        # Every trigger stops again (a second press must never be ignored). A motion already past the
        # gate normally returns within microseconds: wait for it, so stop() follows it.
        if self._gate.acquire(timeout=self.stop_wait_s):
            try:
                self._on_trigger(reason, False)
            finally:
                self._gate.release()
            return
        # It has not returned (a homing motion, a stalled link, a starved thread): stop now, concurrently
        # (the driver must interrupt it), and once more when it returns, so stop() is the driver's last word.
        self._on_trigger(reason, False)
        threading.Thread(target=self._stop_after_motion, args=(reason,), daemon=True,
                         name="pushcut-estop-again").start()

    def _stop_after_motion(self, reason: str) -> None:
        with self._gate:
            if self._engaged.is_set():
                self._on_trigger(reason, True)

    def current(self, epoch: int) -> bool:
        """True if the e-stop is released and was not triggered since ``epoch``."""
        return not self._engaged.is_set() and self.epoch == epoch

    def guarded(self, motion: Callable[[], T], epoch: int | None = None) -> T:
        """``motion()`` (a driver call that moves the robot, or a hold) if and only if the latch is
        released — and, given ``epoch``, no e-stop came since — decided under the gate;
        :class:`EStopEngaged` otherwise."""
        with self._gate:
            if self._engaged.is_set() or (epoch is not None and epoch != self.epoch):
                raise EStopEngaged(self.reason or "e-stop engaged since this episode started")
            return motion()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking the moment the e-stop engages; True if it is engaged."""
        return self._engaged.wait(seconds) if seconds > 0 else self._engaged.is_set()

    def reset(self) -> bool:
        """Release the latch; True if it was engaged."""
        with self._lock:
            was = self._engaged.is_set()
            self._engaged.clear()
            self.reason = ""
        return was


class InterventionLog:
    """Counts interventions per episode (and over the server's life) and logs each one as a line
    with its episode id, to stderr and optionally to a JSON-lines file."""

    def __init__(self, path: str = "", log: Callable[[str], None] | None = None) -> None:
        self.path = Path(path) if path else None
        self.log = log or (lambda line: print(f"pushcut robot: {line}", file=sys.stderr, flush=True))
        self.episode = 0
        self.episode_label = "-"
        self.step = 0
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.totals = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()

    def new_episode(self, label: str) -> None:
        with self._lock:
            self.episode += 1
            self.episode_label = label
            self.step = 0
            self.counts = dict.fromkeys(COUNTERS, 0)

    def record(self, event: Intervention) -> None:
        with self._lock:
            self.counts[event.kind] += 1
            self.totals[event.kind] += 1
            entry = {"time": time.time(), "episode": self.episode, "episode_label": self.episode_label,
                     "step": self.step, "kind": event.kind, "detail": event.detail}
        self.log(f"episode {entry['episode']} ({entry['episode_label']}) step {entry['step']}: "
                 f"{event.kind}: {event.detail}")
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    def info(self) -> dict[str, int]:
        """This episode's counters as ``safety/<name>`` info keys."""
        with self._lock:
            return {f"{INFO_COUNTERS}{k}": v for k, v in self.counts.items()}
