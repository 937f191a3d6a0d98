"""Scripted experts for the tabletop tasks (privileged state, closed loop).

An expert is a small phase machine that reads the simulator state (object
poses, drawer opening, the servo target) and returns one action per env step,
in the env's action convention (see the package docstring). Phases fall back
when the world disagrees (a cube slipped out of the fingers → grasp again), so
experts with action noise still succeed.

API (kept small on purpose):

* ``env.expert_action()`` — the :class:`pushcut.contracts.Env` hook that
  ``pushcut demos`` uses: the next expert action of the current episode
  (noise from ``TabletopConfig.expert_noise``, seeded by the init state).
* ``expert = make_expert(task_id, noise=0.0, seed=0)``; ``expert.reset()`` at the
  start of an episode; ``expert.act(env.scene) -> np.ndarray (4,)`` each step.

Whole demonstrations are recorded by :func:`pushcut.demos.record_expert_demo`
(``pushcut demos``), through ``env.expert_action()`` like any env's expert.

Measured success (initial states 0..299 per task, no noise): 300/300 on every
task but push_red_to_target (299/300); with noise 0.3 (states 0..99): 100 %
everywhere; noise 0.6 is too much (40-99 %). Mean episode lengths are 13-38
steps, about a third of each task's budget.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pushcut.errors import EnvError
from pushcut.plugins.envs.tabletop.scene import (
    BUTTON_TOP,
    BUTTON_TRAVEL,
    CUBE_HALF,
    MAX_DELTA,
    PLATE_TOP,
    TabletopScene,
)
from pushcut.plugins.envs.tabletop.tasks import TASK_IDS

OPEN, CLOSED = -1.0, 1.0
SAFE_Z = 0.11
"""Travel height: fingertips clear cubes, plate, button and the cabinet top."""
DRAWER_GRIP_Z = 0.06
"""Grip-point height at which the fingers (2 cm below to 3 cm above the grip
point) cover the handle bar while the palm still clears the cabinet top."""


def _toward(scene: TabletopScene, goal: np.ndarray) -> np.ndarray:
    """xyz action moving the servo target to ``goal`` as fast as allowed."""
    return np.clip((goal - scene.target_pos) / MAX_DELTA, -1.0, 1.0)


def _near(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    return bool(np.all(np.abs(a - b) < tol))


class Expert:
    """Base class: ``act`` = the task policy + optional Gaussian noise on xyz."""

    def __init__(self, noise: float = 0.0, seed: int = 0) -> None:
        self.noise = noise
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Forget the previous episode (phase, counters) and restart the noise stream."""
        self.phase = 0
        self.count = 0
        self.rng = np.random.default_rng(self.seed)

    def act(self, scene: TabletopScene) -> np.ndarray:
        xyz, grip = self.policy(scene)
        if self.noise > 0:
            xyz = xyz + self.rng.normal(0.0, self.noise, size=3)
        return np.append(np.clip(xyz, -1.0, 1.0), grip).astype(np.float32)

    def policy(self, scene: TabletopScene) -> tuple[np.ndarray, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def goto(self, phase: int) -> None:
        self.phase, self.count = phase, 0


class PressButton(Expert):
    """Travel above the button with closed fingers, then press straight down."""

    def policy(self, s: TabletopScene) -> tuple[np.ndarray, float]:
        b = np.append(s.body_xy("button_base"), 0.0)
        above = b + (0, 0, SAFE_Z)
        # Fingertips reach 2 cm below the grip point: aim them below the cap's travel.
        press = b + (0, 0, BUTTON_TOP - BUTTON_TRAVEL + 0.01)
        if self.phase == 0:
            if _near(s.grip_pos[:2], above[:2], 0.006):
                self.goto(1)
            else:
                goal = above.copy()
                goal[2] = max(s.grip_pos[2], SAFE_Z - 0.02)
                return _toward(s, goal), CLOSED
        return _toward(s, press), CLOSED


class PickPlace(Expert):
    """Grasp ``cube``; then lift it (``place`` is None) or put it down at ``place(scene)``
    (the xyz the cube's centre should end at) and let go."""

    def __init__(self, cube: str, place: Callable[[TabletopScene], np.ndarray] | None, **kw) -> None:
        self.cube = cube
        self.place = place
        super().__init__(**kw)

    def _held(self, s: TabletopScene) -> bool:
        rel = s.cube_pos(self.cube) - s.grip_pos
        return bool(np.all(np.abs(rel) < (0.02, 0.012, 0.02)) and s.finger_gap < 2 * CUBE_HALF + 0.006)

    def policy(self, s: TabletopScene) -> tuple[np.ndarray, float]:
        cube = s.cube_pos(self.cube)
        self.count += 1
        if self.phase in (3, 4, 5) and not self._held(s):
            self.goto(0)  # dropped it: grasp again
        if self.phase == 0:  # above the cube, open
            goal = np.append(cube[:2], SAFE_Z)
            if _near(s.grip_pos[:2], goal[:2], 0.006):
                self.goto(1)
            else:
                goal[2] = max(s.grip_pos[2], SAFE_Z - 0.03)
                return _toward(s, goal), OPEN
        if self.phase == 1:  # straight down, fingers either side of the cube
            goal = cube.copy()
            if not _near(s.grip_pos[:2], goal[:2], 0.012):  # the cube moved: line up again
                self.goto(0)
                return _toward(s, np.append(goal[:2], SAFE_Z)), OPEN
            if _near(s.grip_pos, goal, 0.006):
                self.goto(2)
            else:
                return _toward(s, goal), OPEN
        if self.phase == 2:  # close until the fingers stop on the cube
            if self.count >= 4:
                self.goto(3 if self._held(s) else 0)
            else:
                return _toward(s, cube), CLOSED
        if self.phase == 3:  # lift (for good when there is nowhere to place the cube)
            if self.place is None or s.grip_pos[2] < SAFE_Z:
                return _toward(s, np.append(s.grip_pos[:2], SAFE_Z + 0.04)), CLOSED
            self.goto(4)
        assert self.place is not None
        dest = self.place(s)
        offset = s.grip_pos - cube  # keep the grasp offset when aiming the cube
        if self.phase == 4:  # carry above the destination
            goal = np.append(dest[:2] + offset[:2], SAFE_Z + 0.01)
            if _near(s.grip_pos[:2] - offset[:2], dest[:2], 0.004):
                self.goto(5)
            else:
                return _toward(s, goal), CLOSED
        if self.phase == 5:  # lower until the cube sits at its destination
            goal = dest + offset + (0, 0, 0.003)
            if s.grip_pos[2] - offset[2] < dest[2] + 0.006:
                self.goto(6)
            else:
                return _toward(s, goal), CLOSED
        if self.phase == 6:  # release
            if s.finger_gap > 2 * CUBE_HALF + 0.015:
                self.goto(7)
            return np.zeros(3), OPEN
        return _toward(s, np.append(s.grip_pos[:2], SAFE_Z)), OPEN  # back off


class Push(Expert):
    """Push the red cube onto the target with closed fingers, re-approaching
    from behind whenever the cube drifts off the line."""

    PUSH_Z = CUBE_HALF + 0.002
    LEAD = 0.03
    """How far past the contact point the push aims: the goal then lies 3 cm behind
    the cube centre, ~7 mm inside the cube, which is what makes it move."""
    BEHIND = 0.06
    """Grip point distance behind the cube centre when descending: a yawed cube
    reaches 3.5 cm along a diagonal, the closed finger pair 1.7 cm, plus margin."""

    def policy(self, s: TabletopScene) -> tuple[np.ndarray, float]:
        cube = s.cube_pos("red")[:2]
        to_target = s.body_xy("target") - cube
        dist = np.linalg.norm(to_target)
        u = to_target / max(dist, 1e-6)
        contact = cube - u * self.BEHIND
        grip = s.grip_pos
        rel = grip[:2] - cube
        along, across = float(rel @ u), float(abs(rel @ np.array([-u[1], u[0]])))
        lined_up = along < -0.02 and across < 0.012
        low = grip[2] < self.PUSH_Z + 0.015
        if low and lined_up:
            # The goal is re-computed from the cube every step, so the push follows
            # the line from the cube's current position to the target.
            step = min(dist, self.LEAD)
            goal = np.append(contact + u * step, self.PUSH_Z)
            return _toward(s, goal), CLOSED
        if low and along > -0.035 and across < 0.06:
            return _toward(s, np.append(grip[:2], SAFE_Z - 0.04)), CLOSED  # off the line: rise over the cube
        if _near(grip[:2], contact, 0.006):  # above the contact point: go down
            return _toward(s, np.append(contact, self.PUSH_Z)), CLOSED
        # Travel above the objects; stay low only for short moves behind the cube.
        z = grip[2] if low and _near(grip[:2], contact, 0.03) else max(grip[2], SAFE_Z - 0.04)
        return _toward(s, np.append(contact, z)), CLOSED


class Drawer(Expert):
    """Open: hook the closed fingers behind the handle bar and pull.
    Close: put the fingers in front of the handle bar and push."""

    def __init__(self, opening: bool, **kw) -> None:
        self.opening = opening
        super().__init__(**kw)

    def policy(self, s: TabletopScene) -> tuple[np.ndarray, float]:
        h = s.handle_pos()
        if self.opening:
            slot_y = (h[1] + s.drawer_front_y()) / 2  # between bar and drawer front
        else:
            slot_y = h[1] - 0.03
        slot = np.array([h[0], slot_y, DRAWER_GRIP_Z])
        grip = s.grip_pos
        if self.phase == 0:  # travel high, then drop into the slot
            if _near(grip[:2], slot[:2], 0.005):
                self.goto(1)
            else:
                return _toward(s, np.append(slot[:2], max(grip[2], SAFE_Z))), CLOSED
        if self.phase == 1:
            if grip[2] < DRAWER_GRIP_Z + 0.008:
                self.goto(2)
            else:
                return _toward(s, slot), CLOSED
        direction = -1.0 if self.opening else 1.0
        goal = slot + (0, direction * 0.04, 0)
        return _toward(s, goal), CLOSED


def _place_on_plate(s: TabletopScene) -> np.ndarray:
    return np.append(s.body_xy("plate"), PLATE_TOP + CUBE_HALF)


def _place_on_red(s: TabletopScene) -> np.ndarray:
    red = s.cube_pos("red")
    return red + (0, 0, 2 * CUBE_HALF)


_EXPERTS: dict[str, Callable[..., Expert]] = {
    "press_button": PressButton,
    "close_drawer": lambda **kw: Drawer(opening=False, **kw),
    "lift_blue": lambda **kw: PickPlace("blue", None, **kw),
    "open_drawer": lambda **kw: Drawer(opening=True, **kw),
    "push_red_to_target": Push,
    "place_red_on_plate": lambda **kw: PickPlace("red", _place_on_plate, **kw),
    "stack_green_on_red": lambda **kw: PickPlace("green", _place_on_red, **kw),
}
assert set(_EXPERTS) == set(TASK_IDS), "every task needs a scripted expert"


def make_expert(task_id: str, noise: float = 0.0, seed: int = 0) -> Expert:
    """The scripted expert of ``task_id``. ``noise`` is the std of Gaussian noise
    added to the xyz action components (in action units, e.g. 0.2), drawn from a
    generator seeded with ``seed`` so noisy demos are reproducible too."""
    if task_id not in _EXPERTS:
        raise EnvError(f"no expert for unknown tabletop task {task_id!r}; valid tasks: {', '.join(TASK_IDS)}")
    if noise < 0:
        raise EnvError(f"expert noise must be >= 0, got {noise}")
    return _EXPERTS[task_id](noise=noise, seed=seed)
