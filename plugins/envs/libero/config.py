"""Options of the LIBERO env (the keys under ``env:`` when ``env.type=libero``)."""

from __future__ import annotations

from dataclasses import dataclass

from pushcut.errors import ConfigError
from pushcut.gl import GL_BACKENDS

SUITE_MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
"""Step budget per suite in the OpenVLA-OFT LIBERO evaluation (about the longest
training demo plus a margin); SimpleVLA-RL uses 512 for every suite."""

SUITES = tuple(SUITE_MAX_STEPS)

NUM_INIT_STATES = 50
"""Stored initial states per task in every suite."""

GRIPPER_CONVENTIONS = ("openvla", "libero")
IMAGE_RESIZES = ("jpeg_lanczos", "lanczos")


@dataclass
class LiberoConfig:
    """LIBERO manipulation suites through the real ``libero`` package (robosuite + MuJoCo)."""

    suite: str = "libero_spatial"
    """Task suite: libero_spatial, libero_object, libero_goal, libero_10 or libero_90."""
    tasks: tuple[str, ...] = ()
    """Task names (BDDL file stems) to offer, in this order; empty means every task of the suite."""
    num_eval_init_states: int = 10
    """How many of each task's 50 stored initial states (the last ones) are held out for eval; 50 = all (no RL)."""
    max_steps: int = 0
    """Policy steps per episode; 0 uses the suite's OpenVLA-OFT budget (220/280/300/520/400); SimpleVLA-RL: 512."""
    num_steps_wait: int = 10
    """No-op steps after every reset so objects settle (not counted in max_steps), as in the published protocol."""
    image_size: int = 224
    """Side (px) of the square ``image`` / ``wrist_image`` observations the policy gets."""
    render_size: int = 256
    """Side (px) the cameras render at (0 = image_size); frames are then resized to image_size. Videos use it too."""
    image_resize: str = "jpeg_lanczos"
    """How render_size frames become image_size: jpeg_lanczos (JPEG q95 round trip, then Lanczos, like OpenVLA's data) or lanczos."""
    wrist_camera: bool = True
    """Also observe ``wrist_image`` from the gripper camera (robot0_eye_in_hand)."""
    flip_images: bool = True
    """Rotate camera frames 180° (LIBERO renders upside down; the OpenVLA family trains on rotated frames)."""
    gripper_convention: str = "openvla"
    """Action gripper dim: openvla (policy gives 0 = close .. 1 = open; binarised and inverted) or libero (-1 open, +1 close, as in LIBERO's demo files)."""
    seed: int = 0
    """Seed given to LIBERO before every reset (the published protocol seeds 0); makes resets reproducible."""
    gl_backend: str = "auto"
    """Offscreen OpenGL backend: egl, osmesa or auto ($MUJOCO_GL, else egl)."""
    assets_dir: str = ""
    """LIBERO assets folder (scenes/, textures/, ...); empty = $PUSHCUT_LIBERO_ASSETS, else the libero package's own."""
    shadows: bool = True
    """Speed knob: False renders without shadows (faster on software GL; changes what the policy sees)."""
    reflections: bool = True
    """Speed knob: False renders without reflections (changes what the policy sees)."""
    soft_reset: bool = False
    """Speed knob: reset the simulator in place instead of rebuilding the scene from XML (LIBERO's default) every episode."""
    cached_tasks: int = 1
    """Task simulators an env instance keeps alive (each LIBERO task is its own scene: ~0.43 GB each, measured; see docs/performance.md)."""

    def __post_init__(self) -> None:
        if self.suite not in SUITE_MAX_STEPS:
            raise ConfigError(f"env.suite must be one of {', '.join(SUITES)}, got {self.suite!r}")
        if isinstance(self.tasks, str):  # YAML / CLI: a bare string is one task
            self.tasks = (self.tasks,)
        self.tasks = tuple(self.tasks)
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"env.tasks lists a task twice: {list(self.tasks)}; give each task once")
        if self.tasks:
            from pushcut.plugins.envs.libero.runtime import suite_tasks

            valid = [t.name for t in suite_tasks(self.suite)]
            unknown = [t for t in self.tasks if t not in valid]
            if unknown:
                raise ConfigError(f"env.tasks: {unknown} not in {self.suite}; its tasks are: {', '.join(valid)}")
        if not 1 <= self.num_eval_init_states <= NUM_INIT_STATES:
            raise ConfigError(
                f"env.num_eval_init_states must be 1..{NUM_INIT_STATES} (of the {NUM_INIT_STATES} stored initial "
                f"states per task; 10 is the default), got {self.num_eval_init_states}"
            )
        if self.max_steps < 0:
            raise ConfigError(f"env.max_steps must be >= 0 (0 = the suite's default), got {self.max_steps}")
        if self.num_steps_wait < 0:
            raise ConfigError(f"env.num_steps_wait must be >= 0 (the protocol uses 10), got {self.num_steps_wait}")
        if not 32 <= self.image_size <= 512:
            raise ConfigError(f"env.image_size must be 32..512 pixels, got {self.image_size} (224 for OpenVLA)")
        if self.render_size and not 32 <= self.render_size <= 1024:
            raise ConfigError(f"env.render_size must be 0 or 32..1024 pixels, got {self.render_size}")
        if self.image_resize not in IMAGE_RESIZES:
            raise ConfigError(f"env.image_resize must be one of {', '.join(IMAGE_RESIZES)}, got {self.image_resize!r}")
        if self.gripper_convention not in GRIPPER_CONVENTIONS:
            raise ConfigError(
                f"env.gripper_convention must be one of {', '.join(GRIPPER_CONVENTIONS)}, got "
                f"{self.gripper_convention!r} (openvla for OpenVLA checkpoints, libero for policies trained on "
                f"LIBERO's demo files)"
            )
        if self.gl_backend not in GL_BACKENDS:
            raise ConfigError(f"env.gl_backend must be one of {', '.join(GL_BACKENDS)}, got {self.gl_backend!r}")
        if self.cached_tasks < 1:
            raise ConfigError(f"env.cached_tasks must be >= 1, got {self.cached_tasks}")

    @property
    def camera_size(self) -> int:
        """The resolution the cameras render at."""
        return self.render_size or self.image_size

    @property
    def episode_steps(self) -> int:
        """The step budget under this config."""
        return self.max_steps or SUITE_MAX_STEPS[self.suite]
