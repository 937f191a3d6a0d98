"""What the RoboTwin venv's worker needs around RoboTwin 2.0's own code: the checks that turn a
missing package, asset folder or Vulkan driver into one line, the ``setup_demo`` arguments
RoboTwin's eval (and RLinf's ``VectorEnv``) builds, and the few settings RoboTwin hard-codes that
a trainer must choose (camera shader, shadows, camera size, planner collision pairs).

Imported only inside the RoboTwin venv (by :mod:`.env`, :mod:`.seeds`, the setup script's check);
RoboTwin and SAPIEN themselves are imported on first use, so the checks can run first.
"""

from __future__ import annotations

import copy
import glob
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from pushcut.errors import EnvError
from pushcut.plugins.envs.robotwin.config import RobotwinConfig

SETUP_HINT = "run scripts/setup-robotwin.sh and point rollout.transport.python at .venv-robotwin/bin/python"
VULKAN_ICD_DIRS = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d")

_camera_types: dict[str, dict[str, float]] = {}
"""Camera types pushcut adds to RoboTwin's _camera_config (for sizes RoboTwin has no type for)."""


# --------------------------------------------------------------------------- checks


def check_installed() -> None:
    """An EnvError unless RoboTwin 2.0 and SAPIEN import in this interpreter."""
    for module in ("sapien", "mplib", "robotwin"):
        if importlib.util.find_spec(module) is None:
            raise EnvError(f"RoboTwin is not installed in {sys.executable} (no {module!r}): {SETUP_HINT}")


def vulkan_icds() -> list[str]:
    """Vulkan driver manifests the loader would find (``$VK_ICD_FILENAMES`` wins)."""
    listed = [p for p in os.environ.get("VK_ICD_FILENAMES", os.environ.get("VK_DRIVER_FILES", "")).split(":") if p]
    if listed:
        return [p for p in listed if os.path.isfile(p)]
    return sorted(p for d in VULKAN_ICD_DIRS for p in glob.glob(os.path.join(d, "*.json")))


def check_vulkan() -> None:
    """An EnvError when no Vulkan driver is installed (SAPIEN renders every camera with Vulkan)."""
    if not vulkan_icds():
        raise EnvError("SAPIEN finds no Vulkan driver: install Mesa's lavapipe (apt-get install -t "
                       "bookworm-backports mesa-vulkan-drivers libvulkan1, which scripts/setup-robotwin.sh does) "
                       "or an NVIDIA driver")


def assets_root(config: RobotwinConfig) -> Path:
    """The folder holding ``assets/``, checked for the configured embodiment(s)."""
    root = config.assets_root()
    if root is None:
        raise EnvError("RoboTwin's assets are not configured: set env.assets_dir (or $PUSHCUT_ROBOTWIN_ASSETS) to "
                       "the folder holding assets/ (.venv-robotwin/bin/robotwin-download-assets --output DIR fetches them; docs/robotwin.md)")
    root = root.resolve()
    names = config.embodiment[:2] if len(config.embodiment) == 3 else config.embodiment[:1]
    for name in names:
        folder = root / "assets" / "embodiments" / str(name)
        if not (folder / "config.yml").is_file() and not config.embodiment_config:
            raise EnvError(f"RoboTwin assets incomplete: {folder}/config.yml is missing; download RoboTwin's assets "
                           f"into {root} (docs/robotwin.md) or set env.assets_dir to the folder that has them")
    for sub in ("objects", "background_texture"):
        if not (root / "assets" / sub).is_dir():
            raise EnvError(f"RoboTwin assets incomplete: {root / 'assets' / sub} is missing; download RoboTwin's "
                           "assets (docs/robotwin.md) or set env.assets_dir to the folder that has them")
    return root


def check_all(config: RobotwinConfig) -> Path:
    """Every check, in the order a user fixes them; the asset root."""
    check_installed()
    check_vulkan()
    return assets_root(config)


# --------------------------------------------------------------------------- RoboTwin modules


def task_class(name: str) -> type:
    """RoboTwin 2.0's task class ``robotwin.envs.<name>.<name>``."""
    try:
        module = importlib.import_module(f"robotwin.envs.{name}")
    except ImportError as exc:
        raise EnvError(f"RoboTwin task {name!r} does not import: {exc}; {SETUP_HINT}") from None
    return getattr(module, name)


def unstable_error() -> type[BaseException]:
    from robotwin.envs.utils.create_actor import UnStableError

    return UnStableError


def _register_camera_type(width: int, height: int, fovy: float) -> str:
    """A RoboTwin camera type name for this size, added to what RoboTwin's Camera loads."""
    name = f"pushcut_{width}x{height}_{fovy:g}"
    if name not in _camera_types:
        _camera_types[name] = {"fovy": fovy, "w": width, "h": height}
        camera_module = importlib.import_module("robotwin.envs.camera.camera")
        original = getattr(camera_module.load_task_config, "__wrapped__", camera_module.load_task_config)

        def load_task_config(config_name: str) -> dict[str, Any]:
            value = original(config_name)
            if config_name == "_camera_config":
                value.update(copy.deepcopy(_camera_types))
            return value

        load_task_config.__wrapped__ = original  # type: ignore[attr-defined]
        camera_module.load_task_config = load_task_config
    return name


def camera_type(config: RobotwinConfig) -> str:
    """The RoboTwin camera type that renders at ``config.render_size``."""
    from pushcut.plugins.envs.robotwin.config import CAMERA_TYPES

    w, h = config.render_size
    if (w, h, config.fovy_deg) == CAMERA_TYPES[config.camera_type]:
        return config.camera_type
    return _register_camera_type(w, h, config.fovy_deg)


def embodiment_files(config: RobotwinConfig, root: Path) -> dict[str, Any]:
    """The robot-file arguments ``setup_demo`` takes, as RLinf's VectorEnv builds them."""
    from robotwin.config import load_task_config

    table = load_task_config("_embodiment_config")

    def folder(name: str) -> str:
        if name not in table:
            raise EnvError(f"env.embodiment: {name!r} is not a RoboTwin embodiment; they are: {', '.join(table)}")
        return str((root / table[name]["file_path"]).resolve())

    def embodiment_config(robot_file: str) -> dict[str, Any]:
        path = Path(config.embodiment_config) if config.embodiment_config else Path(robot_file) / "config.yml"
        try:
            return yaml.safe_load(path.read_text())
        except OSError as exc:
            raise EnvError(f"cannot read the embodiment config {path}: {exc.strerror}") from None

    if len(config.embodiment) == 1:
        left = right = folder(str(config.embodiment[0]))
        extra: dict[str, Any] = {"dual_arm_embodied": True}
    else:
        left, right = folder(str(config.embodiment[0])), folder(str(config.embodiment[1]))
        extra = {"dual_arm_embodied": False, "embodiment_dis": float(config.embodiment[2])}
    name = "_".join(str(e) for e in config.embodiment[:1 if len(config.embodiment) == 1 else 2])
    return {"left_robot_file": left, "right_robot_file": right, "left_embodiment_config": embodiment_config(left),
            "right_embodiment_config": embodiment_config(right), "embodiment_name": name, **extra}


def setup_args(config: RobotwinConfig, task: str, root: Path) -> dict[str, Any]:
    """Keyword arguments of ``setup_demo`` for one task: RoboTwin's clean eval config
    (``demo_clean.yml``: no domain randomisation) with this config's cameras and planner."""
    from robotwin.config import load_task_config

    args = load_task_config("demo_clean")
    kind = camera_type(config)
    args.update(embodiment_files(config, root))
    args.update(
        task_name=task, planner_backend=config.planner_backend, eval_mode=True, render_freq=0, save_data=False,
        collect_data=False, eval_video_log=False, need_plan=True, clear_cache_freq=config.clear_cache_every,
        head_camera_h=config.render_size[1], head_camera_w=config.render_size[0],
    )
    args["camera"] = {"head_camera_type": kind, "wrist_camera_type": kind, "collect_head_camera": True,
                      "collect_wrist_camera": bool(config.wrist_camera)}
    args["data_type"] = {"rgb": True, "third_view": False, "depth": False, "pointcloud": False, "observer": False,
                         "endpose": False, "qpos": True, "mesh_segmentation": False, "actor_segmentation": False}
    if config.step_limit(task):
        args["step_lim"] = config.step_limit(task)
    return args


def prepare(task_obj: Any, config: RobotwinConfig) -> None:
    """Settings RoboTwin hard-codes, applied to one task object before its ``setup_demo``:
    the camera shader (RoboTwin always picks the ray tracer), shadows, and the link pairs its
    planners may let touch (after every ``load_robot``, which rebuilds the planners)."""
    import sapien

    original_setup_scene = task_obj.setup_scene
    original_load_robot = task_obj.load_robot

    def setup_scene(**kwargs: Any) -> None:
        kwargs.setdefault("shadow", config.shadows)
        try:
            original_setup_scene(**kwargs)
        except RuntimeError as exc:  # SAPIEN cannot create its Vulkan renderer
            raise EnvError(f"SAPIEN could not start its renderer ({exc}); install a Vulkan driver (Mesa >= 25 "
                           "lavapipe via scripts/setup-robotwin.sh, or an NVIDIA driver)") from None
        sapien.render.set_camera_shader_dir(config.shader)

    def load_robot(**kwargs: Any) -> None:
        original_load_robot(**kwargs)
        allow_collisions(task_obj.robot, config.allowed_collisions)

    task_obj.setup_scene = setup_scene
    task_obj.load_robot = load_robot


def allow_collisions(robot: Any, pairs: tuple[tuple[str, str], ...]) -> None:
    """Let each link pair touch in every mplib planner of ``robot`` (the stand-in Piper's finger
    meshes overlap, so without this every IK query reports a self-collision)."""
    if not pairs:
        return
    for attr in ("left_planner", "right_planner", "left_mplib_planner", "right_mplib_planner"):
        wrapper = getattr(robot, attr, None)
        world = getattr(getattr(wrapper, "planner", None), "planning_world", None)
        if world is None:
            continue
        matrix = world.get_allowed_collision_matrix()
        for a, b in pairs:
            matrix.set_entry(a, b, True)


def instruction(task_name: str, episode_info: dict[str, str], fallback: str) -> str:
    """One instruction for a task from RoboTwin's description generator: the first "seen"
    template that names no arm (so it holds for every seed), with a fixed generator seed."""
    from robotwin.description import generate_episode_descriptions

    params = {k: str(v) for k, v in episode_info.items() if not (len(k.strip("{}")) == 1 and k.strip("{}").islower())}
    try:
        out = generate_episode_descriptions(task_name, [params], 1, seed=0)
    except (ValueError, OSError):
        return fallback
    seen = out[0]["seen"] if out and out[0].get("seen") else []
    return str(seen[0]) if seen else fallback
