"""``LiberoEnv``: the :class:`pushcut.contracts.Env` over LIBERO's own simulator.

One instance offers every task of one suite. LIBERO builds one scene per task,
so a reset to another task creates that task's simulator (seconds); up to
``cached_tasks`` simulators are kept alive.

Protocol (as the OpenVLA-OFT and SimpleVLA-RL LIBERO evaluations run it):
``seed`` → LIBERO reset → stored initial state → ``num_steps_wait`` no-op steps
(arm still, gripper open) → policy steps until LIBERO's goal predicate holds
(``done`` of its ``step``) or ``max_steps`` policy steps have run.
"""

from __future__ import annotations

import functools
import io
import math
from collections import OrderedDict
from collections.abc import Collection
from typing import Any

import numpy as np

from pushcut.envcontract import (
    check_action_chunk,
    OBS_IMAGE,
    OBS_STATE,
    OBS_WRIST_IMAGE,
    ActionSpec,
    Env,
    Observation,
    StepResult,
    TaskSpec,
    split_init_states,
)
from pushcut.errors import EnvError
from pushcut.plugins.envs.libero import runtime
from pushcut.plugins.envs.libero.config import LiberoConfig

ACTION_DIM = 7
"""dx, dy, dz, droll, dpitch, dyaw (OSC_POSE deltas, [-1, 1]) and the gripper."""
STATE_DIM = 8
"""End-effector position (3), orientation as axis-angle (3), the two finger joint positions (2)."""
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
"""What the settle steps execute, in LIBERO's own units: no motion, gripper open."""

AGENTVIEW = "agentview"
WRIST = "robot0_eye_in_hand"


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) unit quaternion → axis-angle vector (3,), the angle in radians
    times the unit axis; zeros for the identity rotation. robosuite's convention."""
    x, y, z, w = (float(v) for v in quat)
    w = min(1.0, max(-1.0, w))
    sin_half = math.sqrt(1.0 - w * w)
    if sin_half == 0.0:
        return np.zeros(3)
    return np.array([x, y, z]) * (2.0 * math.acos(w) / sin_half)


def proprio_state(raw: dict[str, np.ndarray]) -> np.ndarray:
    """The 8-dim state the OpenVLA-OFT LIBERO policies take, from robosuite's observation dict."""
    return np.concatenate([
        np.asarray(raw["robot0_eef_pos"], dtype=np.float64),
        quat_to_axis_angle(np.asarray(raw["robot0_eef_quat"])),
        np.asarray(raw["robot0_gripper_qpos"], dtype=np.float64),
    ]).astype(np.float32)


def openvla_to_libero(actions: np.ndarray) -> np.ndarray:
    """OpenVLA's gripper (0 = close … 1 = open) → LIBERO's (-1 = open, +1 = close):
    rescale [0, 1] to [-1, 1], binarise by sign, flip the sign. Other dims pass through."""
    out = np.array(actions, dtype=np.float64, copy=True)
    out[..., -1] = -np.sign(2.0 * out[..., -1] - 1.0)
    return out


def resize_frame(frame: np.ndarray, size: int, method: str) -> np.ndarray:
    """(H, W, 3) uint8 → (size, size, 3) uint8 by Lanczos resampling, optionally
    after a JPEG (quality 95) round trip as in the data OpenVLA trained on."""
    from PIL import Image

    image = Image.fromarray(frame)
    if method == "jpeg_lanczos":
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95)
        buffer.seek(0)
        image = Image.open(buffer).convert("RGB")
    return np.asarray(image.resize((size, size), Image.LANCZOS), dtype=np.uint8)


class _Sim:
    """One task's LIBERO simulator, with camera rendering on demand.

    robosuite renders every camera observation on every control step. A policy
    only looks at the frame after the last action of a chunk, so the camera
    sensors are wrapped to render only the cameras in :attr:`render_cameras` and
    otherwise hand back the previous frame (a black one before the first render:
    the observations of ``reset()`` and ``set_init_state()`` are never shown to a
    policy, the settle steps that follow render). They still run at exactly the
    moment robosuite would run them, so the frames the policy gets are identical.
    """

    def __init__(self, lib_envs: Any, task: runtime.SuiteTask, config: LiberoConfig, assets: Any) -> None:
        self.task = task
        self.config = config
        cameras = [AGENTVIEW, WRIST] if config.wrist_camera else [AGENTVIEW]
        np.random.seed(config.seed)  # LIBERO's seed(): fixtures are placed when the scene is built
        try:
            self.env = lib_envs.OffScreenRenderEnv(
                bddl_file_name=task.bddl_file,
                camera_names=cameras,
                camera_heights=config.camera_size,
                camera_widths=config.camera_size,
                hard_reset=not config.soft_reset,
                ignore_done=True,  # the episode budget is ours; robosuite's horizon would raise past 1000 steps
            )
        except Exception as exc:
            raise runtime.asset_error(exc, assets) or EnvError(
                f"libero: creating task {task.name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        self.cameras = cameras
        self.render_cameras: Collection[str] = cameras
        self.frames: dict[str, np.ndarray] = {}
        self._lazy_at_birth()

    def _lazy_at_birth(self) -> None:
        """Make the camera sensors robosuite creates on every hard reset lazy from the start.

        A hard reset rebuilds the sensors (``_setup_observables``), and robosuite calls each new
        camera sensor three times before anything can wrap it: a validity check when the
        observable is created, another when it is re-attached (``modify_observable``), and the
        forced first observation of ``reset()``. At 256 px that was 3 extra renders per camera
        and episode (~0.65 s of a LIBERO reset here), for frames no policy ever sees."""
        inner = self.env.env
        create = inner._create_camera_sensors

        def create_lazy(cam_name: str, *args: Any, **kwargs: Any) -> tuple[list, list]:
            sensors, names = create(cam_name, *args, **kwargs)
            if cam_name in self.cameras:
                sensors = [self._lazy(s, cam_name) if n == f"{cam_name}_image" else s for s, n in zip(sensors, names)]
            return sensors, names

        inner._create_camera_sensors = create_lazy

    # robosuite rebuilds sensors (and the render context) on a hard reset: re-wrap each time.
    def _wrap_sensors(self) -> None:
        inner = self.env.env
        for camera in self.cameras:
            name = f"{camera}_image"
            observable = inner._observables[name]
            render = observable._sensor
            if getattr(render, "_pushcut_lazy", False):
                continue
            inner.modify_observable(name, "sensor", self._lazy(render, camera))
        context = inner.sim._render_context_offscreen
        if context is not None:
            import mujoco

            context.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(self.config.shadows)
            context.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(self.config.reflections)

    def _lazy(self, render: Any, camera: str) -> Any:
        name = f"{camera}_image"

        @functools.wraps(render)
        def sensor(obs_cache: dict) -> np.ndarray:
            if camera in self.render_cameras:
                # Envs in one worker share the thread: make this sim's GL context current first.
                self.env.env.sim._render_context_offscreen.gl_ctx.make_current()
                self.frames[name] = render(obs_cache)
            elif name not in self.frames:
                size = self.config.camera_size
                self.frames[name] = np.zeros((size, size, 3), dtype=np.uint8)
            return self.frames[name]

        sensor._pushcut_lazy = True  # type: ignore[attr-defined]
        return sensor

    def reset(self, init_state: np.ndarray, settle: bool = True) -> dict[str, np.ndarray]:
        """Reset to a flattened MuJoCo state: a stored initial state, then the settle steps; or
        (``settle=False``) a state recorded mid-episode, restored as it was (no-op steps would
        open the gripper)."""
        self.env.seed(self.config.seed)
        self.render_cameras = ()  # nothing robosuite's reset observes is ever shown to a policy
        self.frames = {}
        self.env.reset()
        if self.config.soft_reset:
            # A soft reset keeps robosuite's gripper objects, whose commanded opening
            # integrates over steps; a rebuilt scene starts it at zero. Do the same.
            for robot in self.env.env.robots:
                robot.gripper.current_action = np.zeros(robot.gripper.dof)
        self._wrap_sensors()
        wait = self.config.num_steps_wait if settle else 0
        self.render_cameras = self.cameras if wait == 0 else ()
        raw = self.env.set_init_state(init_state)
        for i in range(wait):
            self.render_cameras = self.cameras if i == self.config.num_steps_wait - 1 else ()
            raw, _, _, _ = self.env.step(NOOP_ACTION)
        return raw

    def step(self, action: np.ndarray, cameras: Collection[str]) -> tuple[dict[str, np.ndarray], bool]:
        """One control step that renders only ``cameras`` (the others keep their last frame)."""
        self.render_cameras = cameras
        raw, _, done, _ = self.env.step(action)
        return raw, bool(done)

    def refresh_images(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Camera frames of the current state, for an episode that stopped before its
        chunk's last action (those steps skipped rendering)."""
        self.render_cameras = self.cameras
        fresh = dict(raw)
        for camera in self.cameras:
            name = f"{camera}_image"
            fresh[name] = np.array(self.env.env._observables[name]._sensor({}))
        return fresh

    def success(self) -> bool:
        return bool(self.env.check_success())

    def close(self) -> None:
        try:
            self.env.close()
        except Exception:
            pass


class LiberoEnv(Env):
    """LIBERO tasks of one suite. Build it with ``LiberoEnv(LiberoConfig(...))``.

    Construction imports libero (after writing its config file and choosing the
    GL backend) and reads the stored initial states; simulators are created on
    the first reset to each task."""

    def __init__(self, config: LiberoConfig | None = None) -> None:
        self.config = config if config is not None else LiberoConfig()
        cfg = self.config
        self.assets = runtime.resolve_assets(cfg.assets_dir)
        self._lib = runtime.import_libero(cfg.gl_backend, self.assets)
        every = {t.name: t for t in runtime.suite_tasks(cfg.suite)}
        names = list(cfg.tasks) or list(every)
        unknown = [n for n in names if n not in every]
        if unknown:
            raise EnvError(f"libero: {unknown} not in {cfg.suite}; its tasks are: {', '.join(every)}")
        self._suite_tasks = {n: every[n] for n in names}
        self._init_states = {n: runtime.init_states(cfg.suite, n) for n in names}
        self._specs: dict[str, TaskSpec] = {}
        for name in names:
            count = len(self._init_states[name])
            train, evaluate = split_init_states(count, min(cfg.num_eval_init_states, count))
            self._specs[name] = TaskSpec(
                task_id=name,
                instruction=every[name].instruction,
                num_init_states=count,
                train_init_states=train,
                eval_init_states=evaluate,
                max_steps=cfg.episode_steps,
            )
        self._sims: OrderedDict[str, _Sim] = OrderedDict()
        self._sim: _Sim | None = None
        self._raw: dict[str, np.ndarray] = {}
        self._init_state = -1
        self._steps = 0
        self._success = False

    # ------------------------------------------------------------- contract

    def tasks(self) -> list[TaskSpec]:
        return list(self._specs.values())

    @property
    def action_spec(self) -> ActionSpec:
        if self.config.gripper_convention == "openvla":
            return ActionSpec(ACTION_DIM, low=(-1.0,) * 6 + (0.0,), high=(1.0,) * ACTION_DIM)
        return ActionSpec(ACTION_DIM, low=(-1.0,) * ACTION_DIM, high=(1.0,) * ACTION_DIM)

    def reset(self, task_id: str, init_state: int) -> Observation:
        spec = self._spec(task_id)
        if not 0 <= int(init_state) < spec.num_init_states:
            raise EnvError(
                f"libero: init_state {init_state} out of range for task {task_id!r}: "
                f"valid 0..{spec.num_init_states - 1}"
            )
        self._sim = self._sim_for(task_id)
        self._raw = self._sim.reset(self._init_states[task_id][int(init_state)])
        self._init_state = int(init_state)
        self._steps = 0
        self._success = self._sim.success()
        return self.observe()

    restores_observation = False
    """A restored state's observation differs slightly from the one seen when it was recorded:
    robosuite's observation after a step reads body positions from the start of the last physics
    substep, a restore recomputes them at the state (the physics state itself is restored exactly)."""

    def get_state(self) -> np.ndarray:
        """The flattened MuJoCo state (LIBERO's ``get_sim_state``, what its demo files store as
        ``states``), see :class:`pushcut.envcontract.RestoresState`."""
        if self._sim is None:
            raise EnvError("libero: get_state() called before reset(task_id, init_state)")
        return np.asarray(self._sim.env.get_sim_state(), dtype=np.float64).reshape(-1)

    def restore_state(self, task_id: str, state: np.ndarray) -> Observation:
        """A new episode of ``task_id`` at a flattened MuJoCo state recorded along one of its
        episodes (``get_state``, or a LIBERO demo file's ``states``), without the settle steps;
        its step count starts at 0."""
        self._spec(task_id)
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        expected = len(np.asarray(self._init_states[task_id][0]).reshape(-1))
        if len(state) != expected or not np.isfinite(state).all():
            raise EnvError(f"libero: a restored state of {task_id!r} must be {expected} finite floats (its flattened "
                           f"MuJoCo state), got {len(state)}; record it from this task")
        self._sim = self._sim_for(task_id)
        self._raw = self._sim.reset(state, settle=False)
        self._init_state = -1
        self._steps = 0
        self._success = self._sim.success()
        return self.observe()

    def step(self, actions: np.ndarray, record: bool = False) -> StepResult:
        if self._sim is None:
            raise EnvError("libero: step() called before reset(task_id, init_state)")
        chunk = check_action_chunk(actions, ACTION_DIM, "libero", "(dx, dy, dz, droll, dpitch, dyaw, gripper)")
        if self.config.gripper_convention == "openvla":
            chunk = openvla_to_libero(chunk)
        budget = self.config.episode_steps
        todo = min(len(chunk), 0 if self._success else max(0, budget - self._steps))
        frames: list[np.ndarray] = []
        executed = 0
        for i in range(todo):
            last = i == todo - 1
            # The policy sees every camera after the last action; a video needs the third-person one each step.
            cameras = self._sim.cameras if last else (AGENTVIEW,) if record else ()
            self._raw, done = self._sim.step(chunk[i], cameras)
            self._steps += 1
            executed += 1
            self._success = done
            if record:
                frames.append(self.render())
            if done:
                if not last:
                    self._raw = self._sim.refresh_images(self._raw)
                break
        return StepResult.after_chunk(self.observe(), executed, self._success, episode_steps=self._steps, budget=budget,
                                      task_id=self._sim.task.name, init_state=self._init_state, frames=frames)

    def render(self) -> np.ndarray:
        """The third-person camera at ``render_size`` (rotated like the observations), for videos."""
        if self._sim is None:
            raise EnvError("libero: render() called before reset(task_id, init_state)")
        return self._camera(AGENTVIEW, resize=False)

    def close(self) -> None:
        for sim in self._sims.values():
            sim.close()
        self._sims.clear()
        self._sim = None

    # ------------------------------------------------------------- helpers

    def observe(self) -> Observation:
        """The current observation: ``image``, optional ``wrist_image``, ``state`` (8,)."""
        obs: Observation = {OBS_IMAGE: self._camera(AGENTVIEW)}
        if self.config.wrist_camera:
            obs[OBS_WRIST_IMAGE] = self._camera(WRIST)
        obs[OBS_STATE] = proprio_state(self._raw)
        return obs

    @property
    def success(self) -> bool:
        """The success flag of the current episode (LIBERO's goal predicate)."""
        return self._success

    @property
    def raw_observation(self) -> dict[str, np.ndarray]:
        """robosuite's observation dict after the last reset / step (camera frames unrotated)."""
        return self._raw

    @property
    def simulator(self) -> Any:
        """The current task's ``libero`` ``OffScreenRenderEnv`` (privileged access for tests and tools)."""
        return None if self._sim is None else self._sim.env

    def _camera(self, camera: str, resize: bool = True) -> np.ndarray:
        frame = np.asarray(self._raw[f"{camera}_image"])
        if self.config.flip_images:
            frame = frame[::-1, ::-1]
        size = self.config.image_size
        if resize and frame.shape[0] != size:
            return resize_frame(frame, size, self.config.image_resize)
        return np.ascontiguousarray(frame, dtype=np.uint8)

    def _sim_for(self, task_id: str) -> _Sim:
        if task_id in self._sims:
            self._sims.move_to_end(task_id)
            return self._sims[task_id]
        while len(self._sims) >= self.config.cached_tasks:
            _, old = self._sims.popitem(last=False)
            old.close()
        import libero.libero.envs as lib_envs  # robosuite: imported after runtime chose the GL backend

        sim = _Sim(lib_envs, self._suite_tasks[task_id], self.config, self.assets)
        self._sims[task_id] = sim
        return sim

    def _spec(self, task_id: str) -> TaskSpec:
        try:
            return self._specs[task_id]
        except KeyError:
            raise EnvError(
                f"libero: unknown task {task_id!r} in {self.config.suite}; valid tasks: {', '.join(self._specs)}"
            ) from None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
