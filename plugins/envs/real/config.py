"""Options of a robot: the ``env:`` section (``type: real``) of the robot config ``pushcut robot serve`` reads.

The robot's limits live in this file *on the robot PC*: ``pushcut robot serve``
reads them, and nothing a trainer sends can change them (the trainer's own
``env:`` section for a robot server is just ``type: real``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pushcut.configio import PluginChoice, choice
from pushcut.errors import ConfigError

LIMIT_MODES = ("clip", "refuse")


def _box(name: str, low: tuple[float, ...], high: tuple[float, ...], size: int | None = None) -> None:
    if len(low) != len(high):
        raise ConfigError(f"env.safety.{name}_low and {name}_high need the same length, got {len(low)} and "
                          f"{len(high)}")
    if size is not None and low and len(low) != size:
        raise ConfigError(f"env.safety.{name}_low/high need {size} values (x, y, z), got {len(low)}")
    bad = [i for i, (lo, hi) in enumerate(zip(low, high)) if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi)]
    if bad:
        raise ConfigError(f"env.safety.{name}: each low must be a finite number below its high; dimension(s) {bad} "
                          f"are not ({[low[i] for i in bad]} vs {[high[i] for i in bad]})")


@dataclass
class SafetyConfig:
    """The robot-side safety limits. Each one is enforced before a command reaches the driver."""

    action_low: tuple[float, ...] = ()
    """Per-dimension lower action limit; empty = the driver's action spec. Values below are clipped (counted)."""
    action_high: tuple[float, ...] = ()
    """Per-dimension upper action limit; empty = the driver's action spec."""
    max_delta: tuple[float, ...] = ()
    """Largest change of each action dimension from one command to the next; empty = unlimited."""
    workspace_low: tuple[float, ...] = ()
    """End-effector box, lower corner (x, y, z) in metres; empty = no workspace check."""
    workspace_high: tuple[float, ...] = ()
    """End-effector box, upper corner (x, y, z) in metres."""
    joint_low: tuple[float, ...] = ()
    """Lower joint limits in the driver's joint order; empty = no joint check."""
    joint_high: tuple[float, ...] = ()
    """Upper joint limits."""
    limit_mode: str = "clip"
    """What happens to a command that would leave the workspace or a joint limit: ``clip`` (shorten the motion
    to stay inside) or ``refuse`` (hold still for that control period instead)."""
    watchdog_ms: float = 500.0
    """No command for this long during an episode → the robot holds position (counted); 0 = off."""
    max_episode_steps: int = 0
    """Robot-side cap on commands per episode (after it the robot holds and refuses); 0 = each task's max_steps."""

    def __post_init__(self) -> None:
        for name in ("action_low", "action_high", "max_delta", "workspace_low", "workspace_high", "joint_low",
                     "joint_high"):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.action_low or self.action_high:
            _box("action", self.action_low, self.action_high)
        if self.workspace_low or self.workspace_high:
            _box("workspace", self.workspace_low, self.workspace_high, size=3)
        if self.joint_low or self.joint_high:
            _box("joint", self.joint_low, self.joint_high)
        bad = [d for d in self.max_delta if not (math.isfinite(d) and d > 0)]
        if bad:
            raise ConfigError(f"env.safety.max_delta: each entry must be a finite number > 0, got {list(self.max_delta)}")
        if self.limit_mode not in LIMIT_MODES:
            raise ConfigError(f"env.safety.limit_mode must be one of {', '.join(LIMIT_MODES)}, got {self.limit_mode!r}")
        if not (math.isfinite(self.watchdog_ms) and self.watchdog_ms >= 0):
            raise ConfigError(f"env.safety.watchdog_ms must be >= 0 (0 = off), got {self.watchdog_ms}")
        if self.max_episode_steps < 0:
            raise ConfigError(f"env.safety.max_episode_steps must be >= 0 (0 = the task's max_steps), got "
                              f"{self.max_episode_steps}")


@dataclass
class RealEnvConfig:
    """A robot behind the safety layer: which driver, its options, the limits and the control rate."""

    driver: PluginChoice = choice("robot_drivers", "sim")
    """The robot driver: ``{type: sim|replay|a vendor plugin's, ...that driver's own options}``."""
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    """The limits every command is checked against on the robot side."""
    control_hz: float = 0.0
    """Commands per second when executing a chunk (10 = one action every 100 ms); 0 = as fast as the driver goes."""
    confirm_reset: bool = False
    """Wait for an operator's confirmation (console Enter/``c``, or the operator page) before each episode starts."""
    confirm_timeout_s: float = 300.0
    """A reset nobody confirmed within this many seconds fails (the episode is counted as failed)."""
    operator_host: str = "127.0.0.1"
    """Address of the robot-side operator page (e-stop, reset, confirm); bound anywhere but loopback it offers
    only the status and the e-stop (reset and confirm stay with a person at the robot)."""
    operator_port: int = -1
    """Port of the operator page; 0 = any free port, -1 = no page (console and signals only)."""
    intervention_log: str = ""
    """JSON-lines file every safety intervention is appended to (also logged to stderr); empty = stderr only."""
    session_idle_timeout_s: float = 600.0
    """A trainer that sends nothing for this many seconds loses its session: the robot holds and the next
    trainer may connect (the silent one reconnects on its next request); 0 = never."""

    moved_keys = {"driver_options": "env.driver: {type: NAME, ...the driver's options} (the options sit beside "
                                    "the driver's type)"}

    def __post_init__(self) -> None:
        if not (math.isfinite(self.control_hz) and 0 <= self.control_hz <= 1000):
            raise ConfigError(f"env.control_hz must be 0 (unpaced) .. 1000, got {self.control_hz}")
        if not self.confirm_timeout_s > 0:
            raise ConfigError(f"env.confirm_timeout_s must be > 0, got {self.confirm_timeout_s}")
        if not (math.isfinite(self.session_idle_timeout_s) and self.session_idle_timeout_s >= 0):
            raise ConfigError(f"env.session_idle_timeout_s must be >= 0 seconds (0 = never), got "
                              f"{self.session_idle_timeout_s}")
        if not -1 <= self.operator_port < 65536:
            raise ConfigError(f"env.operator_port must be -1 (off), 0 (any free port) or a TCP port, got "
                              f"{self.operator_port}")
