"""Options of the tabletop env (the keys under ``env:`` when ``env.type=tabletop``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pushcut.errors import ConfigError
from pushcut.gl import GL_BACKENDS

TASK_IDS: tuple[str, ...] = ("press_button", "close_drawer", "lift_blue", "open_drawer", "push_red_to_target",
                             "place_red_on_plate", "stack_green_on_red")
"""The tasks, roughly from easiest to hardest (defined in :mod:`.tasks`; named here so that a
config validates without importing MuJoCo)."""


@dataclass
class TabletopConfig:
    """The embedded MuJoCo tabletop: a gantry gripper, cubes, a plate, a button and a drawer."""

    tasks: tuple[str, ...] = ()
    """Task ids to offer, in this order; empty means all of them."""
    image_size: int = 64
    """Side (px) of the square ``image`` (and ``wrist_image``) observation."""
    video_size: int = 128
    """Side (px) of frames from ``render()`` and ``step(record=True)``, for videos."""
    wrist_camera: bool = False
    """Also observe ``wrist_image`` from a camera on the gripper."""
    jitter: float | None = None
    """Spread of initial states: None = anywhere on the table, a number (m) = LIBERO-style ±jitter.

    None: objects, gripper and cabinet anywhere on the table. A number (m): each task keeps
    one nominal arrangement and every initial state moves each of them by up to ±jitter."""
    num_init_states: int = 100
    """Initial states per task (state k of task t is always the same scene)."""
    num_eval_init_states: int = 50
    """How many of them (the last ones) are held out for evaluation."""
    max_steps: int = 0
    """Step budget per episode for every task; 0 uses each task's own default (40-120)."""
    step_budgets: dict[str, int] = field(default_factory=dict)
    """Step budgets of single tasks, e.g. ``{press_button: 16}``; they win over ``max_steps``."""
    gl_backend: str = "auto"
    """OpenGL backend for offscreen rendering: ``egl``, ``osmesa`` or ``auto`` ($MUJOCO_GL, else egl)."""
    expert_noise: float = 0.0
    """Std of Gaussian noise on the expert's xyz actions (``expert_action``) for varied demos; 0.3 still solves all."""

    def __post_init__(self) -> None:
        # YAML gives lists; a bare string is one task, not a sequence of letters.
        if isinstance(self.tasks, str):
            self.tasks = (self.tasks,)
        self.tasks = tuple(self.tasks)
        unknown = [t for t in self.tasks if t not in TASK_IDS]
        if unknown:
            raise ConfigError(f"env.tasks: unknown tabletop task(s) {unknown}; valid tasks: {', '.join(TASK_IDS)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"env.tasks lists a task twice: {list(self.tasks)}; give each task once")
        if not 32 <= self.image_size <= 512:
            raise ConfigError(f"env.image_size must be 32..512 pixels, got {self.image_size} (64 is the default)")
        if not 32 <= self.video_size <= 1024:
            raise ConfigError(f"env.video_size must be 32..1024 pixels, got {self.video_size} (128 is the default)")
        if self.num_init_states < 2:
            raise ConfigError(
                f"env.num_init_states must be >= 2 (some to train on, some to evaluate), got {self.num_init_states}"
            )
        if not 1 <= self.num_eval_init_states < self.num_init_states:
            raise ConfigError(
                f"env.num_eval_init_states must be 1..{self.num_init_states - 1} (fewer than num_init_states="
                f"{self.num_init_states}, so some remain for training), got {self.num_eval_init_states}"
            )
        if self.jitter is not None and not 0.0 <= self.jitter <= 0.1:
            raise ConfigError(f"env.jitter must be null (anywhere on the table) or 0..0.1 m around each task's nominal "
                              f"layout, got {self.jitter}")
        if self.max_steps < 0:
            raise ConfigError(f"env.max_steps must be >= 0 (0 = each task's default), got {self.max_steps}")
        unknown = [t for t in self.step_budgets if t not in TASK_IDS]
        if unknown:
            raise ConfigError(f"env.step_budgets: unknown tabletop task(s) {unknown}; valid tasks: {', '.join(TASK_IDS)}")
        bad = {t: n for t, n in self.step_budgets.items() if isinstance(n, bool) or not isinstance(n, int) or n < 1}
        if bad:
            raise ConfigError(f"env.step_budgets: each budget must be a whole number of steps >= 1, got {bad}")
        if not 0.0 <= self.expert_noise <= 1.0:
            raise ConfigError(f"env.expert_noise must be in 0..1 (action units; 0.3 gives varied but solid demos), "
                              f"got {self.expert_noise}")
        if self.gl_backend not in GL_BACKENDS:
            raise ConfigError(f"env.gl_backend must be one of {', '.join(GL_BACKENDS)}, got {self.gl_backend!r}")

    def step_budget(self, task_id: str, default: int) -> int:
        """The step budget of ``task_id``: its own entry, else ``max_steps``, else ``default``."""
        return self.step_budgets.get(task_id) or self.max_steps or default

    def task_ids(self) -> tuple[str, ...]:
        """The tasks this config selects, in order."""
        return self.tasks or TASK_IDS
