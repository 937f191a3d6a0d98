"""Options of the Meta-World env (the keys under ``env:`` when ``env.type=metaworld``), the task
tables of Meta-World v3's benchmarks and a plain-English instruction for each of its 50 tasks.

This module imports nothing from Meta-World or MuJoCo: the trainer's venv validates the ``env:``
section with it, and the simulator itself runs in the Meta-World venv (``rollout.transport.python=``).
The benchmark lists are Meta-World 3.1's (``metaworld.env_dict``), written out here so that a
trainer without Meta-World can check names; a test compares them with the package's own.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from pushcut.errors import ConfigError
from pushcut.gl import GL_BACKENDS

INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "put the ring on the peg",
    "basketball-v3": "dunk the ball into the basket",
    "bin-picking-v3": "move the cube from one bin to the other bin",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button behind the wall from the top",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "press the button behind the wall from the front",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "pull the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "turn the door lock to lock it",
    "door-open-v3": "open the door",
    "door-unlock-v3": "turn the door lock to unlock it",
    "hand-insert-v3": "put the gripper into the hole",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-open-v3": "turn the faucet handle to the left",
    "faucet-close-v3": "turn the faucet handle to the right",
    "hammer-v3": "hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the peg out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-back-v3": "slide the plate out of the cabinet",
    "plate-slide-back-side-v3": "slide the plate sideways out of the cabinet",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "soccer-v3": "kick the ball into the goal",
    "stick-push-v3": "grasp the stick and push the box with it",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck to the goal behind the wall",
    "push-back-v3": "push the puck back to the goal",
    "reach-v3": "reach the goal with the gripper",
    "reach-wall-v3": "reach the goal behind the wall with the gripper",
    "shelf-place-v3": "pick up the puck and place it on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}
"""Meta-World v3's 50 tasks (``metaworld.env_dict.ALL_V3_ENVIRONMENTS``, same order) and the
instruction a policy sees for each; written for pushcut after the task's own description."""

MT10 = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3")
ML10_TRAIN = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-close-v3", "button-press-topdown-v3",
              "peg-insert-side-v3", "window-open-v3", "sweep-v3", "basketball-v3")
ML10_TEST = ("drawer-open-v3", "door-close-v3", "shelf-place-v3", "sweep-into-v3", "lever-pull-v3")
ML45_TEST = ("bin-picking-v3", "box-close-v3", "hand-insert-v3", "door-lock-v3", "door-unlock-v3")

BENCHMARKS: dict[str, tuple[str, ...]] = {
    "mt10": MT10,
    "mt50": tuple(INSTRUCTIONS),
    "ml10-train": ML10_TRAIN,
    "ml10-test": ML10_TEST,
    "ml45-train": tuple(t for t in INSTRUCTIONS if t not in ML45_TEST),
    "ml45-test": ML45_TEST,
}
"""``env.benchmark`` → its tasks. ``mt10``/``mt50`` take each task's 50 variations from
Meta-World's own ``MT10``/``MT50`` benchmark (seeded with ``env.seed``); the ML splits and an
explicit ``env.tasks`` list take them from ``MT1`` per task (goal observable either way: the policy
sees images)."""

CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
"""The cameras every Meta-World v3 scene has (``xyz_base.xml``)."""

NUM_VARIATIONS = 50
"""Meta-World draws 50 seeded variations (object and goal positions) per task."""


def _closest(name: str, options: list[str] | tuple[str, ...], what: str) -> str:
    near = difflib.get_close_matches(name, list(options), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return f"unknown {what} {name!r}{hint}"


@dataclass
class MetaworldConfig:
    """Meta-World v3 tasks: which ones, how they look, how long an episode may run."""

    benchmark: str = "mt10"
    """Task set: mt10, mt50, ml10-train, ml10-test, ml45-train or ml45-test (ignored when ``tasks`` is given)."""
    tasks: tuple[str, ...] = ()
    """Explicit task names (e.g. [pick-place-v3, door-open-v3]); empty = the benchmark's."""
    seed: int = 0
    """Seed of Meta-World's task variations (the benchmark's own ``seed=``): which 50 start states each task has."""
    num_eval_init_states: int = 10
    """The last this many of each task's 50 variations are held out for evaluation (disjoint from training)."""
    max_steps: int = 200
    """Policy steps an episode may take (Meta-World allows 500; its experts need 40-150 on most tasks)."""
    image_size: int = 64
    """Side (px) of the square ``image`` observation."""
    video_size: int = 128
    """Side (px) of recorded frames (videos, the human judge)."""
    camera: str = "corner"
    """The camera the policy sees through: corner, corner2, corner3, corner4, topview, behindGripper, gripperPOV."""
    wrist_camera: bool = False
    """Also observe ``wrist_image`` from the gripper's own camera (gripperPOV)."""
    state_goal: bool = False
    """Append the task's goal position (x, y, z; Meta-World's last 3 state entries) to the 4-D state: a
    7-D state (set ``policy.state_dim: 7``). The goal of reach, push and pick-place is a 2 cm marker,
    ~3 pixels of a 64 px corner frame; the MT benchmarks put it in the state, the ML ones hide it."""
    gl_backend: str = "auto"
    """OpenGL platform for offscreen rendering: auto, egl or osmesa (see docs/metaworld.md)."""

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        if not self.tasks and self.benchmark not in BENCHMARKS:
            raise ConfigError(f"env.benchmark: {_closest(self.benchmark, tuple(BENCHMARKS), 'benchmark')} "
                              f"(one of {', '.join(BENCHMARKS)}, or list env.tasks)")
        for task in self.tasks:
            if task not in INSTRUCTIONS:
                raise ConfigError(f"env.tasks: {_closest(task, tuple(INSTRUCTIONS), 'Meta-World task')} "
                                  "(names end in -v3, e.g. pick-place-v3)")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"env.tasks lists a task twice: {list(self.tasks)}")
        if self.camera not in CAMERAS:
            raise ConfigError(f"env.camera: {_closest(self.camera, CAMERAS, 'camera')}; Meta-World scenes have "
                              f"{', '.join(CAMERAS)}")
        if not 1 <= self.num_eval_init_states < NUM_VARIATIONS:
            raise ConfigError(f"env.num_eval_init_states must be 1..{NUM_VARIATIONS - 1} (of the {NUM_VARIATIONS} "
                              f"variations per task), got {self.num_eval_init_states}")
        if not 1 <= self.max_steps <= 500:
            raise ConfigError(f"env.max_steps must be 1..500 (Meta-World's own limit), got {self.max_steps}")
        if not 32 <= self.image_size <= 512:
            raise ConfigError(f"env.image_size must be 32..512 pixels, got {self.image_size}")
        if not 32 <= self.video_size <= 1024:
            raise ConfigError(f"env.video_size must be 32..1024 pixels, got {self.video_size}")
        if self.state_goal and not self.tasks and self.benchmark.startswith("ml"):
            raise ConfigError(f"env.state_goal: Meta-World's {self.benchmark} hides the goal from the state "
                              "(meta-learning); use an MT benchmark or an explicit env.tasks list")
        if self.gl_backend not in GL_BACKENDS:
            raise ConfigError(f"env.gl_backend must be one of {', '.join(GL_BACKENDS)}, got {self.gl_backend!r}")

    @property
    def task_names(self) -> tuple[str, ...]:
        """The tasks this env offers, in order."""
        return self.tasks or BENCHMARKS[self.benchmark]

    @property
    def state_dim(self) -> int:
        """Size of the ``state`` observation: 4, or 7 with ``state_goal``."""
        return 7 if self.state_goal else 4

    @property
    def variation_source(self) -> str:
        """Which Meta-World benchmark draws the variations: ``MT10``, ``MT50`` or ``MT1`` (per task)."""
        if self.tasks:
            return "MT1"
        return {"mt10": "MT10", "mt50": "MT50"}.get(self.benchmark, "MT1")
