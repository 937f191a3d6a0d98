"""``RobotEnv``: a robot driver behind the safety layer, as an :class:`~pushcut.envcontract.Env`.

This is what ``pushcut robot serve`` serves. A chunk is executed one action per
control period (``control_hz``); before each command the action goes through
:class:`~pushcut.plugins.envs.real.safety.SafetyLayer`; a watchdog thread holds
the robot when no command came for ``safety.watchdog_ms``; an e-stop latches
until a person resets it. Every intervention is logged with the episode id and
reported in the step's ``info`` as ``safety/<counter>`` (the episode's totals so far).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from pushcut.envcontract import OBS_IMAGE, OBS_STATE, OBS_WRIST_IMAGE, ActionSpec, Env, Observation, StepResult, TaskSpec
from pushcut.errors import EnvError
from pushcut.plugins.envs.real.config import RealEnvConfig
from pushcut.plugins.envs.real.driver import RobotDriver, RobotObservation
from pushcut.plugins.envs.real.safety import EStop, EStopEngaged, Intervention, InterventionLog, SafetyLayer

ESTOP_FIX = ("a person must reset it at the robot: type r + Enter in the `pushcut robot serve` terminal, or press "
             "Reset on its operator page")


def build_driver(config: RealEnvConfig, manager=None) -> RobotDriver:
    """The driver ``config.driver`` names (``{type: NAME, ...its options}``), built through the plugin
    manager's ``robot_drivers`` registry (default: the process-wide manager's)."""
    from pushcut.configio import resolve_choice
    from pushcut.pluginmanager import get_plugin_manager

    manager = manager or get_plugin_manager()
    chosen = resolve_choice(config.driver, "robot_drivers", "sim", "env.driver", manager)
    return manager.robot_drivers.get(chosen.type).factory(chosen.options)


class RobotEnv(Env):
    """One robot. ``driver`` defaults to the one ``config.driver`` names."""

    deterministic = False
    """A real robot does not repeat itself (the sim driver does, but the env makes no such promise)."""

    def __init__(self, config: RealEnvConfig | None = None, driver: RobotDriver | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.config = config or RealEnvConfig()
        self.driver = driver or build_driver(self.config)
        self.spec = self.driver.connect()
        self.safety = SafetyLayer(self.config.safety, self.spec, self.driver)
        self.interventions = InterventionLog(self.config.intervention_log, log)
        self.estop = EStop(self._stop_now)
        self._tasks = {t.task_id: t for t in self.spec.tasks}
        self._lock = threading.RLock()
        """Serialises driver calls of the serving thread and the watchdog (``stop`` bypasses it)."""
        self._obs: RobotObservation | None = None
        self._active = False
        """An episode is running: the watchdog watches, steps are accepted."""
        self._previous: np.ndarray | None = None
        self._epoch = 0
        """The e-stop epoch the running episode homed in (see :attr:`EStop.epoch`)."""
        self._steps = 0
        self._cap = 0
        self._last_command = time.monotonic()
        self._held = True
        self._confirm = threading.Event()
        self._closed = threading.Event()
        self.waiting_for_confirmation = False
        self._watchdog = threading.Thread(target=self._watch, daemon=True, name="pushcut-robot-watchdog")
        self._watchdog.start()

    # ------------------------------------------------------------------ Env contract

    def tasks(self) -> list[TaskSpec]:
        return list(self.spec.tasks)

    @property
    def action_spec(self) -> ActionSpec:
        return self.spec.action_spec

    def reset(self, task_id: str, init_state: int) -> Observation:
        self._refuse_if_stopped()
        epoch = self.estop.epoch  # an e-stop from here on (even one already reset) ends this reset
        if task_id not in self._tasks:
            raise EnvError(f"robot: unknown task {task_id!r}; this robot offers {', '.join(self._tasks)}")
        task = self._tasks[task_id]
        with self._lock:
            self._end_episode()
        if self.config.confirm_reset:
            self._wait_for_operator(f"{task_id} #{init_state}")
        with self._lock:
            self.interventions.new_episode(f"{task_id}#{init_state}")
            self._previous = None
            self._steps = 0
            cap = self.config.safety.max_episode_steps
            self._cap = min(cap, task.max_steps) if cap else task.max_steps
            self._held = True
            self._active = True  # before homing: an e-stop from here on clears it, and the episode never starts
            self._epoch = epoch
            try:  # homing moves the arm: through the e-stop's gate like every command
                self._obs = self.estop.guarded(lambda: self.driver.home(task_id, int(init_state)), epoch)
            except EStopEngaged:
                self._end_episode()
                raise EnvError(f"robot: e-stop engaged ({self.estop.reason}); {ESTOP_FIX}") from None
            except Exception:
                self._end_episode()
                raise
            if not self.estop.current(epoch) or not self._active:  # stopped while homing
                self._end_episode()
                raise EnvError(f"robot: e-stop engaged while homing ({self.estop.reason}); {ESTOP_FIX}")
            self._last_command = time.monotonic()
            return self._observation(self._obs)

    def step(self, actions: np.ndarray, record: bool = False) -> StepResult:
        self._refuse_if_stopped()
        with self._lock:
            if not self._active or self._obs is None:
                raise EnvError("robot: step() without a running episode (call reset first; an episode ends at "
                               "success, its step cap, an e-stop or a refused chunk)")
            try:
                chunk = self.safety.check_chunk(actions)
            except ValueError as exc:
                if "NaN" not in str(exc):
                    raise EnvError(f"robot: {exc}") from None
                self.interventions.record(Intervention("nonfinite_refused", f"chunk refused: {exc}"))
                self._hold()
                self._end_episode()
                raise EnvError(f"robot: refused the chunk ({exc}); the robot holds and the episode ends") from None
            frames: list[np.ndarray] = []
            executed = 0
            period = 1.0 / self.config.control_hz if self.config.control_hz else 0.0
            if period and time.monotonic() < self._last_command + period:
                early = 1e3 * (self._last_command + period - time.monotonic())
                self.interventions.record(Intervention("rate_waits", f"chunk came {early:.0f} ms before the "
                                                                     "control period allows; paced"))
            for action in chunk:
                if not self.estop.current(self._epoch):
                    raise self._stopped_mid_chunk()
                if self._steps >= self._cap:
                    self.interventions.record(Intervention("step_cap", f"episode reached its cap of {self._cap} "
                                                                       "commands; the rest of the chunk is refused"))
                    break
                # Each command one period after the previous one was sent (not after when it was due:
                # a chunk arriving late must not send two back to back); an e-stop ends the wait.
                if period:
                    self.estop.wait(self._last_command + period - time.monotonic())  # wakes at an e-stop
                if not self.estop.current(self._epoch):
                    raise self._stopped_mid_chunk()
                self.interventions.step = self._steps
                safe, events = self.safety.filter(action, self._obs.robot, self._previous)
                for event in events:
                    self.interventions.record(event)
                try:
                    if safe is None:
                        self._last_command = time.monotonic()
                        self.estop.guarded(self.driver.hold, self._epoch)
                    else:
                        self.estop.guarded(lambda: self._send(safe), self._epoch)
                        self._previous = safe
                except EStopEngaged:
                    raise self._stopped_mid_chunk() from None
                except Exception as exc:
                    if not self.estop.current(self._epoch):  # a driver that raises on a command racing its own stop
                        raise self._stopped_mid_chunk() from None
                    self._end_episode()
                    raise EnvError(f"robot: the driver failed ({type(exc).__name__}: {exc}); the episode "
                                   "ends") from None
                self._held = safe is None
                self._steps += 1
                executed += 1
                self._obs = self.driver.observe()
                if record:
                    frames.append(self.driver.frame())
                if self._obs.success:
                    break
            success = bool(self._obs.success)
            truncated = not success and self._steps >= self._cap
            info = {"success": success, "truncated": truncated, "episode_steps": self._steps,
                    "episode_id": self.interventions.episode, **self.interventions.info()}
            observation = self._observation(self._obs)
            if success or truncated:
                self._hold()
                self._end_episode()
            return StepResult(observation, executed, success, success or truncated, info, frames)

    def render(self) -> np.ndarray:
        with self._lock:
            return self.driver.frame()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            try:
                self._hold()
            finally:
                self.driver.close()

    # ------------------------------------------------------------------ operator, e-stop, watchdog

    def confirm(self) -> bool:
        """An operator confirmed that the next episode may start; True if a reset was waiting."""
        waiting = self.waiting_for_confirmation
        self._confirm.set()
        return waiting

    def trainer_gone(self, why: str) -> None:
        """The trainer's session ended: hold the robot, end the episode (counted when mid-episode)."""
        with self._lock:
            if self._active:
                self.interventions.record(Intervention("disconnects", f"trainer session ended mid-episode ({why}); "
                                                                      "holding"))
            self._hold()
            self._held = True
            self._end_episode()

    def status(self) -> dict:
        """What the operator page shows."""
        return {"estop": self.estop.engaged, "estop_reason": self.estop.reason, "episode": self.interventions.episode,
                "episode_label": self.interventions.episode_label, "active": self._active, "steps": self._steps,
                "waiting_for_confirmation": self.waiting_for_confirmation, "counts": dict(self.interventions.counts),
                "totals": dict(self.interventions.totals)}

    def _send(self, action: np.ndarray) -> None:
        """One command to the driver; called only through the e-stop's gate."""
        self._last_command = time.monotonic()
        self.driver.command(action)

    def _hold(self) -> None:
        """Hold position, unless the e-stop is engaged: after ``stop()`` nothing but a home (after a
        person's reset) reaches the driver — on some arms a hold would re-energise the motors."""
        try:
            self.estop.guarded(self.driver.hold)
        except EStopEngaged:
            pass

    def _stop_now(self, reason: str, again: bool = False) -> None:
        """The e-stop's action (under its gate, never the env's lock: a chunk in progress must not
        delay it); ``again``: once more after a motion that was in flight returned. It never raises:
        the latch is already set, and the callers (signal watcher, console, page) must stay alive
        for the next press."""
        self._active = False
        try:
            self.driver.stop()
        except Exception as exc:
            self.interventions.log(f"E-STOP: driver.stop() raised {type(exc).__name__}: {exc}; the robot may NOT "
                                   "have stopped: use the hardware e-stop. Commands stay refused.")
        if again:
            self.interventions.log(f"e-stop ({reason}): stop sent again after the motion in flight returned")
            return
        try:
            self.interventions.record(Intervention("estops", f"e-stop: {reason}"))
        except Exception as exc:
            self.interventions.log(f"E-STOP ({reason}); the intervention log failed: {type(exc).__name__}: {exc}")

    def _stopped_mid_chunk(self) -> EnvError:
        self._end_episode()
        return EnvError(f"robot: e-stop engaged during the chunk ({self.estop.reason}); {ESTOP_FIX}")

    def _refuse_if_stopped(self) -> None:
        if self.estop.engaged:
            raise EnvError(f"robot: e-stop engaged ({self.estop.reason}); {ESTOP_FIX}")

    def _wait_for_operator(self, what: str) -> None:
        self._confirm.clear()
        self.waiting_for_confirmation = True
        self.interventions.log(f"waiting for the operator to confirm the next episode ({what}): set the scene, "
                               "then press Enter (or c + Enter) here or Confirm on the operator page")
        try:
            if not self._confirm.wait(self.config.confirm_timeout_s):
                raise EnvError(f"robot: nobody confirmed the reset for {what} within {self.config.confirm_timeout_s:g} s "
                               "(env.confirm_timeout_s); confirm at the robot or set env.confirm_reset=false")
        finally:
            self.waiting_for_confirmation = False

    def _end_episode(self) -> None:
        self._active = False

    def _watch(self) -> None:
        limit = self.config.safety.watchdog_ms / 1e3
        if not limit:
            return
        tick = min(0.02, limit / 5)
        while not self._closed.wait(tick):
            if not self._active or self._held or time.monotonic() - self._last_command < limit:
                continue
            if not self._lock.acquire(timeout=tick):
                continue  # a command is being executed: that is not silence
            try:
                if self._active and not self._held and time.monotonic() - self._last_command >= limit:
                    silent = 1e3 * (time.monotonic() - self._last_command)
                    self._hold()
                    self._held = True
                    self.interventions.record(Intervention("watchdog_holds", f"no command for {silent:.0f} ms "
                                                                             f"(watchdog {limit * 1e3:.0f} ms); holding"))
            finally:
                self._lock.release()

    @staticmethod
    def _observation(obs: RobotObservation) -> Observation:
        out: Observation = {OBS_IMAGE: obs.cameras["image"]}
        if OBS_WRIST_IMAGE in obs.cameras:
            out[OBS_WRIST_IMAGE] = obs.cameras[OBS_WRIST_IMAGE]
        out[OBS_STATE] = np.asarray(obs.state, dtype=np.float32)
        return out
