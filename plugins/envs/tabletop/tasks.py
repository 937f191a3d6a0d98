"""The tabletop tasks: instruction, step budget, initial-state sampler and success predicate.

Initial state ``k`` of task ``t`` is drawn from a numpy Generator seeded with
``(crc32(t), k)``, so it never depends on the process, the Python hash seed or
how many initial states a run asked for. All three cubes, the plate, the target,
the button and the cabinet are in every scene: the instruction is what says
which object matters.

Two spreads of initial states:

* anywhere (``jitter=None``, the default): every object, the gripper and the
  cabinet are placed anywhere on the table, so a policy has to find them;
* LIBERO-style (``jitter=j`` metres): each task has one nominal arrangement
  (its layout drawn from a fixed seed) and every initial state moves each
  object, the gripper start and the cabinet by up to ``±j`` from it, as
  LIBERO's init states perturb a fixed scene. Every random choice of a sampler
  is named, so the same sampler code serves both spreads.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pushcut.plugins.envs.tabletop.config import TASK_IDS
from pushcut.plugins.envs.tabletop.scene import (
    BUTTON_TRAVEL,
    CUBE_HALF,
    CUBES,
    DRAWER_RANGE,
    PLATE_RADIUS,
    PLATE_TOP,
    TARGET_HALF,
    Layout,
    TabletopScene,
)

# Where loose objects may start: in front of the cabinet, inside the camera view
# and the gripper's reach.
_REGION_X = (-0.21, 0.21)
_REGION_Y = (-0.18, 0.06)
_RADIUS = {"cube": 0.042, "plate": PLATE_RADIUS + 0.005, "target": TARGET_HALF + 0.005, "button": 0.04}
_GAP = 0.012
"""Extra clearance between the keep-out circles of any two objects."""
_MAX_TRIES = 500
"""Random positions tried per object before the whole layout is sampled again."""


@dataclass(frozen=True)
class Task:
    """One tabletop task."""

    task_id: str
    instruction: str
    max_steps: int
    """Default step budget, about three times the expert's average episode."""
    sample: Callable[[_Draw], Layout]
    success: Callable[[TabletopScene], bool]
    stages: tuple[tuple[str, Stage], ...] = ()
    """Ordered milestones on the way to success, each a name and a test of the scene against
    the episode's initial layout. A diagnostic of where failures stop, never a reward."""

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.stages)

    def furthest_stage(self, scene: TabletopScene, start: Layout, reached: int) -> int:
        """The index of the furthest milestone that holds now or did before (``reached``; -1 = none)."""
        for i in range(len(self.stages) - 1, reached, -1):
            if self.stages[i][1](scene, start):
                return i
        return reached

    def layout(self, init_state: int, jitter: float | None = None) -> Layout:
        """The deterministic layout of initial state ``init_state``: anywhere on the
        table (``jitter=None``) or within ``±jitter`` m of the task's nominal layout."""
        return _layout(self, int(init_state), None if jitter is None else float(jitter))

    def nominal_layout(self) -> Layout:
        """The fixed arrangement that ``jitter`` initial states perturb."""
        return _layout(self, NOMINAL, None)


NOMINAL = -1
"""Pseudo init state of each task's nominal layout (drawn like any other, from its own seed)."""


@functools.lru_cache(maxsize=8192)
def _layout(task: Task, init_state: int, jitter: float | None) -> Layout:
    # Cached because rejection sampling costs a few ms, more than a reset's physics.
    if init_state == NOMINAL:
        return task.sample(_Draw(np.random.default_rng(zlib.crc32(f"{task.task_id}/nominal".encode()))))
    rng = np.random.default_rng([zlib.crc32(task.task_id.encode()), init_state])
    if jitter is None:
        return task.sample(_Draw(rng))
    return task.sample(_Draw(rng, around=task.nominal_layout(), jitter=jitter))


# ----------------------------------------------------------------- sampling

_YAW_PER_M = 5.0
"""Yaw jitter (rad) per metre of position jitter: 3 cm moves a cube's yaw by up to ±0.15 rad."""


class _Draw:
    """Every random choice of a layout sampler, by name (``"red"``, ``"gripper"``,
    ``"red_yaw"``, ``"drawer"``, …): uniform over its whole range, or, ``around`` a
    nominal layout, uniform within ``±jitter`` of the nominal value (clipped to the range)."""

    def __init__(self, rng: np.random.Generator, around: Layout | None = None, jitter: float = 0.0) -> None:
        self.rng = rng
        self.around = around
        self.jitter = jitter

    def __call__(self, name: str, lo, hi, size: tuple[int, ...] | None = None) -> np.ndarray:
        if self.around is None:
            return self.rng.uniform(lo, hi, size)
        centre = np.asarray(_nominal_value(self.around, name), dtype=np.float64)
        width = self.jitter * (_YAW_PER_M if name.endswith("_yaw") else 1.0)
        shape = size if size is not None else centre.shape
        return np.clip(centre + self.rng.uniform(-width, width, shape), lo, hi)


def _nominal_value(layout: Layout, name: str):
    if name.endswith("_yaw"):
        return layout.cubes[name[:-4]][2]
    if name in CUBES:
        return layout.cubes[name][:2]
    return getattr(layout, name)


class _Placer:
    """Rejection sampler for non-overlapping object positions on the table."""

    def __init__(
        self, draw: _Draw, cabinet_x: float, keep_out: Callable[[np.ndarray], bool] | None = None
    ) -> None:
        self.draw = draw
        self.cabinet_x = cabinet_x
        self.keep_out = keep_out
        self.placed: list[tuple[np.ndarray, float]] = []

    def free(self, p: np.ndarray, radius: float) -> bool:
        if self.near_cabinet(p):
            return False
        if self.keep_out is not None and self.keep_out(p):
            return False
        return all(np.linalg.norm(p - q) >= radius + r + _GAP for q, r in self.placed)

    def near_cabinet(self, p: np.ndarray, margin: float = 0.0) -> bool:
        # In front of the cabinet the gripper's palm would hit the drawer handle
        # while working on an object, so objects keep their distance there.
        return bool(abs(p[0] - self.cabinet_x) < 0.135 + margin and p[1] > -0.005 - margin)

    def add(self, name: str, fixed: np.ndarray | None = None) -> np.ndarray:
        """Place object ``name`` at ``fixed`` or at a random free spot."""
        radius = _RADIUS["cube" if name in CUBES else name]
        if fixed is not None:
            self.placed.append((np.asarray(fixed, dtype=np.float64), radius))
            return np.asarray(fixed, dtype=np.float64)
        for _ in range(_MAX_TRIES):
            p = self.draw(name, (_REGION_X[0], _REGION_Y[0]), (_REGION_X[1], _REGION_Y[1]))
            if self.free(p, radius):
                self.placed.append((p, radius))
                return p
        raise _Retry


class _Retry(Exception):
    """The objects placed so far leave no room; sample the whole layout again."""


def _gripper_start(draw: _Draw) -> tuple[float, float, float]:
    x, y, z = draw("gripper", (-0.15, -0.16, 0.10), (0.15, -0.02, 0.16))
    return float(x), float(y), float(z)


def _yaw(draw: _Draw, cube: str) -> float:
    # Small yaw only: the parallel gripper cannot rotate, and a pinch on a cube's
    # corners would make grasps fragile.
    return float(draw(f"{cube}_yaw", -0.3, 0.3))


def _finish(draw: _Draw, placer: _Placer, positions: dict[str, np.ndarray], drawer: float = 0.0) -> Layout:
    """Place every object not yet in ``positions`` and build the layout."""
    for name in (*CUBES, "plate", "target", "button"):
        if name not in positions:
            positions[name] = placer.add(name)
    return Layout(
        gripper=_gripper_start(draw),
        cubes={c: (float(positions[c][0]), float(positions[c][1]), _yaw(draw, c)) for c in CUBES},
        plate=(float(positions["plate"][0]), float(positions["plate"][1])),
        target=(float(positions["target"][0]), float(positions["target"][1])),
        button=(float(positions["button"][0]), float(positions["button"][1])),
        cabinet_x=placer.cabinet_x,
        drawer=drawer,
    )


def _retrying(sample: Callable[[_Draw], Layout]) -> Callable[[_Draw], Layout]:
    def run(draw: _Draw) -> Layout:
        for _ in range(100):
            try:
                return sample(draw)
            except _Retry:
                continue
        raise RuntimeError("tabletop: could not sample a layout in 100 attempts")  # pragma: no cover

    return run


def _cabinet_x(draw: _Draw) -> float:
    return float(draw("cabinet_x", -0.1, 0.1))


def _drawer_keep_out(cabinet_x: float) -> Callable[[np.ndarray], bool]:
    """Objects stay out of the opened drawer's sweep and the gripper's path to its handle."""
    return lambda p: abs(p[0] - cabinet_x) < 0.14 and p[1] > -0.10


@_retrying
def _sample_default(draw: _Draw) -> Layout:
    return _finish(draw, _Placer(draw, _cabinet_x(draw)), {})


def _sample_pick(cube: str) -> Callable[[_Draw], Layout]:
    @_retrying
    def sample(draw: _Draw) -> Layout:
        placer = _Placer(draw, _cabinet_x(draw))
        # Pick tasks place their cube first so it is never the one squeezed out.
        positions = {cube: placer.add(cube)}
        return _finish(draw, placer, positions)

    return sample


@_retrying
def _sample_push(draw: _Draw) -> Layout:
    placer = _Placer(draw, _cabinet_x(draw))
    red = placer.add("red")
    # Target 12-20 cm from the red cube, room behind the cube for the gripper to
    # start the push, and a push path that keeps the palm away from the cabinet.
    # Candidates are drawn in a batch: most random targets fail these tests.
    lo, hi = np.array((_REGION_X[0], _REGION_Y[0])), np.array((_REGION_X[1], _REGION_Y[1]))
    candidates = draw("target", lo, hi, size=(256, 2))
    dist = np.linalg.norm(candidates - red, axis=1)
    units = (candidates - red) / dist[:, None]
    starts = red - units * 0.07
    ok = (dist > 0.12) & (dist < 0.20) & np.all((starts >= lo - 0.03) & (starts <= hi + 0.03), axis=1)
    for i in np.flatnonzero(ok):
        target, u, start = candidates[i], units[i], starts[i]
        path = [start + f * (target + u * 0.04 - start) for f in np.linspace(0.0, 1.0, 12)]
        if not any(placer.near_cabinet(p, margin=0.02) for p in path):
            break
    else:
        raise _Retry
    placer.add("target", fixed=target)
    seg_a, seg_b = start, target + u * 0.04

    def in_corridor(p: np.ndarray) -> bool:
        # Nothing else may sit on the push path (or the cube would shove it along).
        t = np.clip(np.dot(p - seg_a, seg_b - seg_a) / np.dot(seg_b - seg_a, seg_b - seg_a), 0.0, 1.0)
        return bool(np.linalg.norm(p - (seg_a + t * (seg_b - seg_a))) < 0.10)

    placer.keep_out = in_corridor
    return _finish(draw, placer, {"red": red, "target": target})


def _sample_drawer(opening: tuple[float, float]) -> Callable[[_Draw], Layout]:
    @_retrying
    def sample(draw: _Draw) -> Layout:
        cabinet_x = _cabinet_x(draw)
        placer = _Placer(draw, cabinet_x, keep_out=_drawer_keep_out(cabinet_x))
        drawer = float(draw("drawer", *opening))
        return _finish(draw, placer, {}, drawer)

    return sample


# ----------------------------------------------------------------- success


def _lifted(cube: str) -> Callable[[TabletopScene], bool]:
    return lambda s: bool(s.cube_pos(cube)[2] > 0.10)


def _pushed_onto_target(s: TabletopScene) -> bool:
    p = s.cube_pos("red")
    d = np.abs(p[:2] - s.body_xy("target"))
    # Cube centre inside the target square and still on the table (pushed, not carried).
    return bool(np.all(d < TARGET_HALF - 0.01) and p[2] < CUBE_HALF + 0.01)


def _on_plate(s: TabletopScene) -> bool:
    p = s.cube_pos("red")
    near = np.linalg.norm(p[:2] - s.body_xy("plate")) < PLATE_RADIUS - 0.015
    resting = abs(p[2] - (PLATE_TOP + CUBE_HALF)) < 0.008
    return bool(near and resting and not s.fingers_touch("red"))


def _stacked(s: TabletopScene) -> bool:
    g, r = s.cube_pos("green"), s.cube_pos("red")
    aligned = np.linalg.norm(g[:2] - r[:2]) < 0.02
    on_top = abs(g[2] - r[2] - 2 * CUBE_HALF) < 0.008
    return bool(aligned and on_top and r[2] < CUBE_HALF + 0.008 and not s.fingers_touch("green"))


# ----------------------------------------------------------------- stages

Stage = Callable[[TabletopScene, Layout], bool]

RAISED = CUBE_HALF + 0.01
"""A cube whose centre is this high (m) is off the table: 1 cm up."""
MOVED = 0.02
"""How far (m) a pushed cube or the drawer must move from its start to count as moved."""


def _carried_over_plate(s: TabletopScene, start: Layout) -> bool:
    p = s.cube_pos("red")
    return bool(p[2] > PLATE_TOP + RAISED and np.linalg.norm(p[:2] - s.body_xy("plate")) < PLATE_RADIUS - 0.015)


def _carried_over_red(s: TabletopScene, start: Layout) -> bool:
    g, r = s.cube_pos("green"), s.cube_pos("red")
    return bool(g[2] > r[2] + CUBE_HALF and np.linalg.norm(g[:2] - r[:2]) < 0.02)


def _cube_moved(s: TabletopScene, start: Layout) -> bool:
    return bool(np.linalg.norm(s.cube_pos("red")[:2] - start.cubes["red"][:2]) > MOVED)


def _drawer_moved(direction: float) -> Stage:
    return lambda s, start: (s.drawer_opening - start.drawer) * direction > MOVED


def _picked(cube: str) -> tuple[tuple[str, Stage], ...]:
    """Both fingers on ``cube``, then ``cube`` off the table."""
    return (("grasped", lambda s, start: s.fingers_grip(cube)),
            ("lifted", lambda s, start: bool(s.cube_pos(cube)[2] > RAISED)))


_DRAWER = (("touched", lambda s, start: s.gripper_touches(s.drawer_geoms)),)


DRAWER_OPEN = 0.08
"""Opening (m) at which the drawer counts as open (of 0.12 possible)."""
DRAWER_SHUT = 0.01

TASKS: dict[str, Task] = {
    t.task_id: t
    for t in (
        Task("press_button", "press the button", 40, _sample_default, lambda s: s.button_depth > 0.7 * BUTTON_TRAVEL,
             (("touched", lambda s, start: s.gripper_touches(s.button_geoms)),)),
        Task("close_drawer", "close the drawer", 50, _sample_drawer((0.08, DRAWER_RANGE)),
             lambda s: s.drawer_opening < DRAWER_SHUT, (*_DRAWER, ("moved", _drawer_moved(-1.0)))),
        Task("lift_blue", "pick up the blue cube", 60, _sample_pick("blue"), _lifted("blue"),
             _picked("blue")),
        Task("open_drawer", "open the drawer", 60, _sample_drawer((0.0, 0.01)),
             lambda s: s.drawer_opening > DRAWER_OPEN, (*_DRAWER, ("moved", _drawer_moved(1.0)))),
        Task("push_red_to_target", "push the red cube onto the yellow target", 80, _sample_push,
             _pushed_onto_target, (("touched", lambda s, start: s.gripper_touches(s.cube_geoms["red"])),
                                   ("moved", _cube_moved))),
        Task("place_red_on_plate", "put the red cube on the plate", 100, _sample_pick("red"), _on_plate,
             (*_picked("red"), ("over_plate", _carried_over_plate))),
        Task("stack_green_on_red", "stack the green cube on the red cube", 120, _sample_pick("green"), _stacked,
             (*_picked("green"), ("over_red", _carried_over_red))),
    )
}
"""All tasks, roughly from easiest to hardest."""

assert tuple(TASKS) == TASK_IDS, "config.TASK_IDS must list the tasks in order"
