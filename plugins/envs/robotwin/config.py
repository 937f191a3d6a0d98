"""Options of the RoboTwin env (the keys under ``env:`` when ``env.type=robotwin``) and the
task tables of RoboTwin 2.0 and 1.0.

This module imports nothing from RoboTwin or SAPIEN: the trainer's venv validates the ``env:``
section with it, and the simulator itself runs in the RoboTwin venv (``rollout.transport.python=``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pushcut.errors import ConfigError

VERSIONS = ("2.0", "1.0")

STEP_LIMITS_2_0: dict[str, int] = {
    "adjust_bottle": 400, "beat_block_hammer": 400, "blocks_ranking_rgb": 1200, "blocks_ranking_size": 1200,
    "click_alarmclock": 400, "click_bell": 400, "dump_bin_bigbin": 600, "grab_roller": 400,
    "handover_block": 800, "handover_mic": 600, "hanging_mug": 900, "lift_pot": 400, "move_can_pot": 400,
    "move_pillbottle_pad": 400, "move_playingcard_away": 400, "move_stapler_pad": 400, "open_laptop": 700,
    "open_microwave": 1500, "pick_diverse_bottles": 400, "pick_dual_bottles": 400, "place_a2b_left": 400,
    "place_a2b_right": 400, "place_bread_basket": 700, "place_bread_skillet": 500, "place_burger_fries": 500,
    "place_can_basket": 700, "place_cans_plasticbox": 800, "place_container_plate": 400,
    "place_dual_shoes": 600, "place_empty_cup": 500, "place_fan": 400, "place_mouse_pad": 400,
    "place_object_basket": 700, "place_object_scale": 400, "place_object_stand": 400,
    "place_phone_stand": 400, "place_shoe": 500, "press_stapler": 400, "put_bottles_dustbin": 1700,
    "put_object_cabinet": 700, "rotate_qrcode": 400, "scan_object": 500, "shake_bottle": 700,
    "shake_bottle_horizontally": 700, "stack_blocks_three": 1200, "stack_blocks_two": 800,
    "stack_bowls_three": 1200, "stack_bowls_two": 900, "stamp_seal": 400, "turn_switch": 400,
}
"""RoboTwin 2.0's 50 tasks and the policy steps its evaluation allows each one
(``robotwin/configs/task/_eval_step_limit.yml``, what ``eval_mode`` sets ``step_lim`` to)."""

PRIMITIVES_ONLY_2_0 = ("stack_blocks_two", "stack_blocks_three", "blocks_ranking_rgb", "blocks_ranking_size",
                       "handover_block")
"""2.0 tasks built from boxes only (no object meshes): the ones that run on the stand-in assets."""

FALLBACK_INSTRUCTIONS_2_0: dict[str, str] = {
    "stack_blocks_two": "Stack the green block on the red block at the center of the table.",
    "stack_blocks_three": "Stack the blue block on the green block on the red block at the center.",
    "blocks_ranking_rgb": "Arrange the red, green and blue blocks in a row from left to right.",
    "blocks_ranking_size": "Arrange the blocks from largest to smallest, left to right.",
    "handover_block": "Pick up the block with one arm, hand it over to the other arm and place it on the target.",
}
"""Used only when RoboTwin's description generator gives no instruction for a task (it has a
template file for every 2.0 task; this covers a checkout without one). Written for pushcut."""

TASKS_1_0: dict[str, str] = {
    "block_hammer_beat": "beat_block_hammer",
    "block_handover": "handover_block",
    "blocks_stack_easy": "stack_blocks_two",
    "blocks_stack_hard": "stack_blocks_three",
    "bottle_adjust": "adjust_bottle",
    "container_place": "place_container_plate",
    "diverse_bottles_pick": "pick_diverse_bottles",
    "dual_bottles_pick_easy": "pick_dual_bottles",
    "dual_bottles_pick_hard": "pick_dual_bottles",
    "dual_shoes_place": "place_dual_shoes",
    "empty_cup_place": "place_empty_cup",
    "mug_hanging_easy": "hanging_mug",
    "mug_hanging_hard": "hanging_mug",
    "pick_apple_messy": "",
    "put_apple_cabinet": "put_object_cabinet",
    "shoe_place": "place_shoe",
    "tool_adjust": "",
}
"""RoboTwin 1.0's 17 tasks (``envs/*.py`` of the RoboTwin-1.0 branch) → the closest 2.0 task by
name and goal (empty: none). 1.0 sets each task's step limit in its ``setup_demo``; the adapter
reads it from the checkout."""

INSTRUCTIONS_1_0: dict[str, str] = {
    "block_hammer_beat": "Pick up the hammer and beat the block.",
    "block_handover": "Hand the block over from the left arm to the right arm and place it on the target.",
    "blocks_stack_easy": "Stack the black block on the red block.",
    "blocks_stack_hard": "Stack the blue block on the black block on the red block.",
    "bottle_adjust": "Pick up the bottle and stand it upright.",
    "container_place": "Place the container onto the plate.",
    "diverse_bottles_pick": "Pick up both bottles and lift them up together.",
    "dual_bottles_pick_easy": "Pick up the two bottles and lift them up together.",
    "dual_bottles_pick_hard": "Pick up the two bottles and lift them up together.",
    "dual_shoes_place": "Place both shoes on the target area, toes pointing the same way.",
    "empty_cup_place": "Place the empty cup onto the coaster.",
    "mug_hanging_easy": "Hang the mug on the rack.",
    "mug_hanging_hard": "Hang the mug on the rack.",
    "pick_apple_messy": "Pick up the apple from the cluttered table.",
    "put_apple_cabinet": "Open the cabinet drawer and put the apple inside.",
    "shoe_place": "Place the shoe on the target area.",
    "tool_adjust": "Pick up the tool and turn it to face forward.",
}
"""1.0 has no description generator: one instruction per task, written for pushcut."""

GRIPPER_OPEN_1_0 = 0.045
"""1.0 drives the ALOHA gripper joints in metres, 0 (closed) .. 0.045 (open); 2.0 uses 0 .. 1."""

SHADERS = ("default", "minimal", "rt")
"""SAPIEN camera shaders: default (rasterised, what training uses), minimal (fastest), rt (ray
traced: what RoboTwin hard-codes; slow without a GPU)."""

CAMERA_TYPES = {"D435": (320, 240, 37.0), "Large_D435": (640, 480, 37.0), "L515": (320, 180, 45.0),
                "Large_L515": (640, 360, 45.0)}
"""RoboTwin's camera types (``_camera_config.yml``): width, height, vertical field of view (deg)."""

ACTION_NORMALIZATIONS = ("none", "minmax")

DEFAULT_ASSETS_ENV = "PUSHCUT_ROBOTWIN_ASSETS"


@dataclass
class RobotwinConfig:
    """RoboTwin 2.0 (or 1.0) dual-arm tasks on the real RoboTwin code, in its own venv."""

    version: str = "2.0"
    """RoboTwin version: 2.0 (the robotwin package, rlinf-robotwin-runtime) or 1.0 (a checkout in robotwin_root)."""
    tasks: tuple[str, ...] = ("stack_blocks_two",)
    """Task names (RoboTwin module names, e.g. stack_blocks_two), in this order."""
    assets_dir: str = ""
    """Folder holding RoboTwin's assets/ (embodiments, objects, textures); empty = $PUSHCUT_ROBOTWIN_ASSETS, then $ROBOTWIN_ASSETS_ROOT."""
    robotwin_root: str = ""
    """1.0 only: the RoboTwin-1.0 checkout (holds envs/, task_config/, aloha_maniskill_sim/)."""
    embodiment: tuple[str | float, ...] = ("aloha-agilex",)
    """RoboTwin embodiment: one name (a dual-arm robot) or [left, right, distance_m] (two single arms), e.g. [piper, piper, 0.6]."""
    embodiment_config: str = ""
    """A config.yml to use instead of the embodiment folder's own (e.g. an improved stand-in); empty = the folder's."""
    planner_backend: str = "mplib"
    """Motion planner RoboTwin builds: mplib (CPU) or curobo (CUDA; RoboTwin's default)."""
    allowed_collisions: tuple[tuple[str, str], ...] = ()
    """Link pairs the planners may let touch (e.g. [[link7, link8]] for the stand-in Piper's overlapping fingers)."""
    seeds_dir: str = ""
    """Folder of <task>.json seed lists from `pushcut robotwin seeds` (expert-verified); empty = seeds seed_start.. (unverified)."""
    seed_start: int = 100000
    """First seed of the fallback seed range (RoboTwin's own eval starts at 100000)."""
    num_init_states: int = 100
    """Seeds per task when seeds_dir is empty (with seeds_dir: the length of each task's list)."""
    num_eval_init_states: int = 20
    """How many of each task's seeds (the last ones) are held out for eval."""
    max_steps: int = 0
    """Policy steps per episode; 0 = RoboTwin's eval step limit of the task (e.g. 800 for stack_blocks_two)."""
    camera_type: str = "D435"
    """RoboTwin camera type the cameras render with: D435 (320x240, fovy 37), Large_D435, L515, Large_L515."""
    camera_width: int = 0
    """Render width in px; 0 = the camera type's (the field of view stays the type's)."""
    camera_height: int = 0
    """Render height in px; 0 = the camera type's."""
    image_size: int = 0
    """Side (px) of the square image the policy gets (area-resampled); 0 = the rendered frame as is."""
    wrist_camera: bool = False
    """Also observe wrist_image (the left wrist camera; the right one is in info only when both are used)."""
    shader: str = "default"
    """SAPIEN camera shader: default (rasterised, for training), minimal (fastest) or rt (ray traced, RoboTwin's fidelity setting)."""
    shadows: bool = True
    """Lights cast shadows (RoboTwin's setting); False renders several times faster on a CPU."""
    action_normalization: str = "none"
    """none: actions are RoboTwin's 14 joint targets (rad, gripper 0..1); minmax: actions in [-1, 1] are un-normalised with the min/max bounds, as OpenVLA-OFT's ALOHA checkpoints are."""
    action_stats: str = ""
    """minmax: a dataset_statistics.json (OFT format: {key: {action: {min, max}}}) with the bounds; empty = the robot's joint limits, gripper 0..1."""
    action_stats_key: str = ""
    """Entry of action_stats to use; empty = its only entry."""
    clear_cache_every: int = 8
    """Resets between clearing SAPIEN's asset cache (RoboTwin's clear_cache_freq)."""

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ConfigError(f"env.version must be one of {', '.join(VERSIONS)}, got {self.version!r}")
        if isinstance(self.tasks, str):
            self.tasks = (self.tasks,)
        self.tasks = tuple(self.tasks)
        if not self.tasks:
            raise ConfigError("env.tasks is empty; name at least one RoboTwin task, e.g. [stack_blocks_two]")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"env.tasks lists a task twice: {list(self.tasks)}; give each task once")
        table = STEP_LIMITS_2_0 if self.version == "2.0" else TASKS_1_0
        unknown = [t for t in self.tasks if t not in table]
        if unknown:
            raise ConfigError(f"env.tasks: {unknown} are not RoboTwin {self.version} tasks; they are: "
                              f"{', '.join(sorted(table))}")
        if self.version == "1.0" and not self.robotwin_root:
            raise ConfigError("env.version=1.0 needs env.robotwin_root=/path/to/RoboTwin (a checkout of the "
                              "RoboTwin-1.0 branch); 1.0 is not packaged")
        if isinstance(self.embodiment, str):
            self.embodiment = (self.embodiment,)
        self.embodiment = tuple(str(e) for e in self.embodiment)
        if len(self.embodiment) not in (1, 3):
            raise ConfigError(f"env.embodiment must be [name] or [left, right, distance_m], got {list(self.embodiment)}")
        if len(self.embodiment) == 3:
            try:
                distance = float(self.embodiment[2])
            except ValueError:
                distance = -1.0
            if distance <= 0:
                raise ConfigError(f"env.embodiment[2] is the distance between the two arms in metres (> 0, e.g. "
                                  f"0.6), got {self.embodiment[2]!r}")
        if self.planner_backend not in ("mplib", "curobo"):
            raise ConfigError(f"env.planner_backend must be mplib or curobo, got {self.planner_backend!r}")
        pairs = []
        for pair in self.allowed_collisions:
            pair = tuple(str(p) for p in pair)
            if len(pair) != 2:
                raise ConfigError(f"env.allowed_collisions holds link pairs like [link7, link8], got {list(pair)}")
            pairs.append(pair)
        self.allowed_collisions = tuple(pairs)
        if self.num_init_states < 2:
            raise ConfigError(f"env.num_init_states must be >= 2 (train and eval seeds), got {self.num_init_states}")
        if not 1 <= self.num_eval_init_states < self.num_init_states:
            raise ConfigError(f"env.num_eval_init_states must be 1..{self.num_init_states - 1} (the rest trains), "
                              f"got {self.num_eval_init_states}")
        if self.seed_start < 0:
            raise ConfigError(f"env.seed_start must be >= 0, got {self.seed_start}")
        if self.max_steps < 0:
            raise ConfigError(f"env.max_steps must be >= 0 (0 = RoboTwin's eval step limit), got {self.max_steps}")
        if self.camera_type not in CAMERA_TYPES:
            raise ConfigError(f"env.camera_type must be one of {', '.join(CAMERA_TYPES)}, got {self.camera_type!r}")
        for name in ("camera_width", "camera_height"):
            value = getattr(self, name)
            if value and not 16 <= value <= 1920:
                raise ConfigError(f"env.{name} must be 0 (the camera type's) or 16..1920 px, got {value}")
        if self.image_size and not 16 <= self.image_size <= 1024:
            raise ConfigError(f"env.image_size must be 0 (as rendered) or 16..1024 px, got {self.image_size}")
        if self.shader not in SHADERS:
            raise ConfigError(f"env.shader must be one of {', '.join(SHADERS)}, got {self.shader!r}")
        if self.action_normalization not in ACTION_NORMALIZATIONS:
            raise ConfigError(f"env.action_normalization must be none or minmax, got {self.action_normalization!r}")
        if self.action_stats and self.action_normalization != "minmax":
            raise ConfigError("env.action_stats is only read with env.action_normalization=minmax")
        if self.clear_cache_every < 1:
            raise ConfigError(f"env.clear_cache_every must be >= 1, got {self.clear_cache_every}")

    # ------------------------------------------------------------------ derived

    @property
    def render_size(self) -> tuple[int, int]:
        """(width, height) the cameras render at."""
        w, h, _ = CAMERA_TYPES[self.camera_type]
        return self.camera_width or w, self.camera_height or h

    @property
    def fovy_deg(self) -> float:
        return CAMERA_TYPES[self.camera_type][2]

    def step_limit(self, task: str) -> int:
        """The policy-step budget of ``task`` (2.0: the eval table; 1.0: the checkout's, so 0 here)."""
        if self.max_steps:
            return self.max_steps
        return STEP_LIMITS_2_0.get(task, 0) if self.version == "2.0" else 0

    def assets_root(self) -> Path | None:
        """The folder holding ``assets/``, or None when none is configured."""
        value = self.assets_dir or os.environ.get(DEFAULT_ASSETS_ENV, "") or os.environ.get("ROBOTWIN_ASSETS_ROOT", "")
        return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class SeedList:
    """The seeds of one task: what `pushcut robotwin seeds` writes as ``<task>.json``."""

    task: str
    seeds: tuple[int, ...]
    verified: bool = True
    """True when every seed passed the scripted expert (play_once + check_success)."""
    meta: dict = field(default_factory=dict, compare=False)
