"""Tests of the embedded MuJoCo tabletop env (real physics and rendering)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the tabletop env needs mujoco (pip install mujoco)")

from pushcut.contracts import INFO_STAGE, NO_STAGE, OBS_IMAGE, OBS_STATE, OBS_WRIST_IMAGE, Observation  # noqa: E402
from pushcut.errors import ConfigError, EnvError  # noqa: E402
from pushcut.plugins.envs import tabletop  # noqa: E402
from pushcut.plugins.envs.tabletop import (  # noqa: E402
    TASK_IDS,
    TASKS,
    TabletopConfig,
    TabletopEnv,
    make_expert,
)
from pushcut.registry import Registry  # noqa: E402
from pushcut.testing import EnvContract  # noqa: E402


# The scripted expert over a whole episode, cut into chunks (a test helper: demos for training are
# recorded by pushcut.demos.record_expert_demo through env.expert_action()).


@dataclass
class ExpertDemo:
    """One recorded expert episode, cut into chunks as a chunked policy sees it."""

    observations: list[Observation]
    """The observation at the start of each chunk (N entries)."""
    actions: np.ndarray
    """(N, chunk_size, 4) float32; a final chunk cut short by success is padded
    with hold-still actions (no motion, same gripper command)."""
    success: bool
    steps: int
    """Env steps actually executed."""


def run_expert(
    env: TabletopEnv,
    task_id: str,
    init_state: int,
    chunk_size: int = 1,
    noise: float = 0.0,
    seed: int = 0,
    max_steps: int | None = None,
) -> ExpertDemo:
    """Reset ``env`` to (``task_id``, ``init_state``) and let the expert act until
    success or the step budget (``max_steps``, default the env's for the task).

    The expert decides every step (closed loop); the observation kept for each
    chunk is the one at its start, which is what a policy emitting
    ``chunk_size`` actions per call would have seen.
    """
    if chunk_size < 1:
        raise EnvError(f"chunk_size must be >= 1, got {chunk_size}")
    expert = make_expert(task_id, noise=noise, seed=seed)
    obs = env.reset(task_id, init_state)
    budget = max_steps if max_steps is not None else env.max_steps(task_id)
    observations: list[Observation] = []
    chunks: list[np.ndarray] = []
    steps, success = 0, False
    while steps < budget and not success:
        observations.append(obs)
        chunk: list[np.ndarray] = []
        for _ in range(chunk_size):
            if steps >= budget or success:
                chunk.append(np.append(np.zeros(3, np.float32), chunk[-1][3]).astype(np.float32))
                continue
            action = expert.act(env.scene)
            result = env.step(action[None])
            obs, success = result.observation, result.success
            chunk.append(action)
            steps += 1
        chunks.append(np.stack(chunk))
    return ExpertDemo(observations, np.stack(chunks).astype(np.float32), success, steps)


@pytest.fixture(scope="module")
def shared_env() -> Iterator[TabletopEnv]:
    """One env for the read-mostly tests: creating GL contexts is the slow part."""
    env = TabletopEnv(TabletopConfig())
    yield env
    env.close()


class TestTabletopContract(EnvContract):
    @pytest.fixture
    def env(self, shared_env: TabletopEnv) -> TabletopEnv:
        return shared_env


# ----------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": ("lift_red",)}, "valid tasks: press_button"),
        ({"tasks": ("lift_blue", "lift_blue")}, "twice"),
        ({"image_size": 16}, "image_size must be 32..512"),
        ({"video_size": 4096}, "video_size must be 32..1024"),
        ({"num_init_states": 1}, "num_init_states must be >= 2"),
        ({"num_init_states": 10, "num_eval_init_states": 10}, "num_eval_init_states must be 1..9"),
        ({"max_steps": -1}, "max_steps must be >= 0"),
        ({"step_budgets": {"lift_red": 10}}, "step_budgets: unknown tabletop task"),
        ({"step_budgets": {"lift_blue": 0}}, "whole number of steps >= 1"),
        ({"gl_backend": "glx"}, "gl_backend must be one of auto, egl, osmesa"),
        ({"expert_noise": -0.1}, "expert_noise must be in 0..1"),
        ({"jitter": 0.5}, "jitter must be null"),
    ],
)
def test_bad_config_is_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TabletopConfig(**kwargs)


def test_config_takes_lists_and_a_single_task() -> None:
    listed = TabletopConfig(tasks=["lift_blue", "open_drawer"])  # type: ignore[arg-type]
    assert listed.tasks == ("lift_blue", "open_drawer")
    assert TabletopConfig(tasks="lift_blue").task_ids() == ("lift_blue",)  # type: ignore[arg-type]
    assert TabletopConfig().task_ids() == TASK_IDS
    pickle.loads(pickle.dumps(TabletopConfig(tasks=("lift_blue",))))


def test_registers_through_the_hook() -> None:
    registry: Registry = Registry("env")
    tabletop.pushcut_register_envs(registry)
    entry = registry.get("tabletop")
    env = entry.build(TabletopConfig(tasks=("press_button",)))
    try:
        assert [t.task_id for t in env.tasks()] == ["press_button"]
    finally:
        env.close()


# ----------------------------------------------------------------- tasks and init states


def test_tasks_and_splits(shared_env: TabletopEnv) -> None:
    specs = shared_env.tasks()
    assert [t.task_id for t in specs] == list(TASK_IDS)
    assert len(TASK_IDS) >= 6
    for spec in specs:
        assert spec.instruction == TASKS[spec.task_id].instruction
        assert len(spec.train_init_states) == 50 and len(spec.eval_init_states) == 50
        assert not set(spec.train_init_states) & set(spec.eval_init_states)
        assert spec.max_steps == TASKS[spec.task_id].max_steps
    env = TabletopEnv(TabletopConfig(num_init_states=20, num_eval_init_states=5, max_steps=33))
    spec = env.tasks()[0]
    assert spec.train_init_states == tuple(range(15)) and spec.eval_init_states == tuple(range(15, 20))
    assert spec.max_steps == 33
    own = TabletopEnv(TabletopConfig(max_steps=33, step_budgets={"press_button": 12}))
    assert {t.task_id: t.max_steps for t in own.tasks()}["press_button"] == 12
    assert {t.max_steps for t in own.tasks() if t.task_id != "press_button"} == {33}


def test_init_state_depends_only_on_task_and_index() -> None:
    """State k is the same scene whatever num_init_states is, and differs across k and tasks."""
    a = TabletopEnv(TabletopConfig(num_init_states=10, num_eval_init_states=2))
    b = TabletopEnv(TabletopConfig(num_init_states=200, num_eval_init_states=100))
    try:
        obs_a = a.reset("lift_blue", 7)
        obs_b = b.reset("lift_blue", 7)
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key])
        np.testing.assert_array_equal(a.scene.data.qpos, b.scene.data.qpos)
        assert not np.array_equal(b.reset("lift_blue", 8)[OBS_IMAGE], obs_b[OBS_IMAGE])
        other_task = TASKS["stack_green_on_red"].layout(7)
        assert TASKS["lift_blue"].layout(7).cubes["blue"] != other_task.cubes["blue"]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_jittered_states_stay_near_the_nominal_layout(task_id: str) -> None:
    """LIBERO-style spread: every object, the gripper and the cabinet within ±jitter of
    one nominal arrangement, different per state, deterministic, and far narrower than anywhere."""
    task = TASKS[task_id]
    nominal = task.nominal_layout()
    layouts = [task.layout(k, jitter=0.02) for k in range(30)]
    assert layouts == [task.layout(k, jitter=0.02) for k in range(30)]

    def points(layout):
        return np.array([*(c[:2] for c in layout.cubes.values()), layout.plate, layout.target, layout.button,
                         layout.gripper[:2], (layout.cabinet_x, 0.0)])

    offsets = np.stack([points(l) - points(nominal) for l in layouts])
    assert np.abs(offsets).max() <= 0.02 + 1e-9
    assert len({l.cubes["red"] for l in layouts}) == 30
    anywhere = np.stack([points(task.layout(k)) for k in range(30)])
    assert np.abs(offsets).std(axis=0).mean() * 4 < anywhere.std(axis=0).mean()


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_expert_solves_jittered_states(task_id: str) -> None:
    env = TabletopEnv(TabletopConfig(tasks=(task_id,), jitter=0.03))
    try:
        for init_state in (0, 1, 2):
            assert run_expert(env, task_id, init_state).success, f"expert failed jittered {task_id} state {init_state}"
    finally:
        env.close()


def test_step_is_deterministic_across_instances() -> None:
    actions = np.random.default_rng(3).uniform(-1, 1, size=(30, 4))
    results = []
    for _ in range(2):
        env = TabletopEnv(TabletopConfig(max_steps=100))
        env.reset("push_red_to_target", 4)
        result = env.step(actions)
        results.append((result.observation, env.scene.data.qpos.copy()))
        env.close()
    np.testing.assert_array_equal(results[0][1], results[1][1])
    for key in results[0][0]:
        np.testing.assert_array_equal(results[0][0][key], results[1][0][key])


# ----------------------------------------------------------------- experts and success


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_expert_solves_task(shared_env: TabletopEnv, task_id: str) -> None:
    spec = next(t for t in shared_env.tasks() if t.task_id == task_id)
    for init_state in spec.train_init_states[:5]:
        demo = run_expert(shared_env, task_id, init_state)
        assert demo.success, f"expert failed {task_id} from initial state {init_state}"
        assert demo.steps < spec.max_steps


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_doing_nothing_does_not_succeed(shared_env: TabletopEnv, task_id: str) -> None:
    for init_state in (0, 1):
        shared_env.reset(task_id, init_state)
        for gripper in (-1.0, 1.0):  # idle with the gripper open, then closed
            result = shared_env.step(np.tile([0.0, 0.0, 0.0, gripper], (25, 1)))
            assert not result.success, f"{task_id} succeeded without any motion (init state {init_state})"
            assert result.info[INFO_STAGE] == NO_STAGE


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_expert_passes_every_stage_in_order(shared_env: TabletopEnv, task_id: str) -> None:
    spec = next(t for t in shared_env.tasks() if t.task_id == task_id)
    assert spec.stages == TASKS[task_id].stage_names and spec.stages
    expert = make_expert(task_id)
    shared_env.reset(task_id, 3)
    seen = [NO_STAGE]
    for _ in range(spec.max_steps):
        result = shared_env.step(expert.act(shared_env.scene)[None])
        if result.info[INFO_STAGE] != seen[-1]:
            seen.append(result.info[INFO_STAGE])
        if result.done:
            break
    assert result.success
    assert seen == [NO_STAGE, *spec.stages]


def test_a_stage_once_reached_is_kept(shared_env: TabletopEnv) -> None:
    # Grip and lift the blue cube with the expert, then open the fingers: the cube
    # falls back to the table, and the episode still reports that it was lifted.
    expert = make_expert("lift_blue")
    shared_env.reset("lift_blue", 3)
    while shared_env.scene.cube_pos("blue")[2] < 0.05:
        result = shared_env.step(expert.act(shared_env.scene)[None])
    result = shared_env.step(np.tile([0.0, 0.0, 0.0, -1.0], (10, 1)))
    assert shared_env.scene.cube_pos("blue")[2] < 0.03 and not result.success
    assert result.info[INFO_STAGE] == "lifted"
    assert not shared_env.scene.fingers_grip("blue")


def test_fingertips_on_top_of_a_cube_are_not_a_grasp(shared_env: TabletopEnv) -> None:
    # Fingers half closed (2 cm each side, narrower than the 5 cm cube) come down onto the
    # cube's top face: both touch it, but nothing is pinched.
    shared_env.reset("lift_blue", 3)
    scene = shared_env.scene
    for height in (0.12, 0.02):  # over the cube, then straight down
        for _ in range(20):
            delta = np.append(scene.cube_pos("blue")[:2], height) - scene.grip_pos
            result = shared_env.step(np.append(np.clip(delta / 0.02, -1, 1), 0.0)[None])
    assert scene.fingers_touch("blue") and scene.grip_pos[2] > 0.05
    assert not scene.fingers_grip("blue") and result.info[INFO_STAGE] == NO_STAGE


def test_noisy_expert_is_reproducible_and_different(shared_env: TabletopEnv) -> None:
    a = run_expert(shared_env, "lift_blue", 2, noise=0.3, seed=1)
    b = run_expert(shared_env, "lift_blue", 2, noise=0.3, seed=1)
    c = run_expert(shared_env, "lift_blue", 2, noise=0.0)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.success and c.success
    assert a.actions.shape != c.actions.shape or not np.array_equal(a.actions, c.actions)


def test_run_expert_records_chunks(shared_env: TabletopEnv) -> None:
    demo = run_expert(shared_env, "place_red_on_plate", 0, chunk_size=8)
    n = len(demo.observations)
    assert demo.success and demo.actions.shape == (n, 8, 4) and demo.actions.dtype == np.float32
    assert (n - 1) * 8 < demo.steps <= n * 8
    assert np.all(np.abs(demo.actions) <= 1.0)
    assert demo.observations[0][OBS_IMAGE].shape == (64, 64, 3)


def test_expert_action_records_demos_through_the_core() -> None:
    from pushcut.demos import record_expert_demo

    env = TabletopEnv(TabletopConfig(tasks=("stack_green_on_red",), expert_noise=0.2))
    try:
        with pytest.raises(EnvError, match="before reset"):
            env.expert_action()
        spec = env.tasks()[0]
        demo, ok = record_expert_demo(env, spec, spec.train_init_states[0])
        assert ok and demo.actions.shape[1] == 4 and len(demo.images) == len(demo.actions)
        again, _ = record_expert_demo(env, spec, spec.train_init_states[0])
        np.testing.assert_array_equal(demo.actions, again.actions)  # noise is seeded by the init state
    finally:
        env.close()


def test_expert_api_rejects_unknown_task() -> None:
    with pytest.raises(EnvError, match="valid tasks: press_button"):
        make_expert("fly_away")


def test_early_stop_inside_a_chunk(shared_env: TabletopEnv) -> None:
    demo = run_expert(shared_env, "press_button", 0)
    actions = demo.actions[:, 0]
    extra = np.tile([0.0, 0.0, 1.0, 1.0], (10, 1))  # would lift the gripper off again
    shared_env.reset("press_button", 0)
    result = shared_env.step(np.concatenate([actions, extra]), record=True)
    assert result.success and result.done and result.info["success"] is True
    assert result.steps == demo.steps == len(actions)
    assert len(result.frames) == result.steps
    assert result.frames[0].shape == (128, 128, 3)
    after = shared_env.step(extra)
    assert after.steps == 0 and after.success and after.done


def test_episode_is_cut_at_max_steps() -> None:
    env = TabletopEnv(TabletopConfig(tasks=("lift_blue",), max_steps=5))
    try:
        env.reset("lift_blue", 0)
        result = env.step(np.zeros((8, 4)))
        assert result.steps == 5 and result.done and not result.success
        assert result.info["truncated"] and result.info["episode_steps"] == 5
        assert env.step(np.zeros((2, 4))).steps == 0
    finally:
        env.close()


# ----------------------------------------------------------------- observations and rendering


def test_observation_shapes_and_wrist_camera() -> None:
    env = TabletopEnv(TabletopConfig(image_size=48, video_size=96, wrist_camera=True))
    try:
        obs = env.reset("open_drawer", 0)
        assert set(obs) == {OBS_IMAGE, OBS_WRIST_IMAGE, OBS_STATE}
        for key in (OBS_IMAGE, OBS_WRIST_IMAGE):
            assert obs[key].shape == (48, 48, 3) and obs[key].dtype == np.uint8
        assert not np.array_equal(obs[OBS_IMAGE], obs[OBS_WRIST_IMAGE])
        assert obs[OBS_STATE].shape == (4,) and obs[OBS_STATE].dtype == np.float32
        np.testing.assert_allclose(obs[OBS_STATE][:3], env.scene.grip_pos, atol=1e-6)
        assert obs[OBS_STATE][3] == pytest.approx(0.08, abs=2e-3)  # starts fully open
        assert env.render().shape == (96, 96, 3)
    finally:
        env.close()


def test_action_moves_the_gripper_and_the_image(shared_env: TabletopEnv) -> None:
    obs = shared_env.reset("lift_blue", 0)
    frame = shared_env.render()
    assert frame.std() > 10, "rendered frame is (nearly) constant"
    result = shared_env.step(np.tile([1.0, 0.0, -0.5, 1.0], (5, 1)))
    moved = result.observation[OBS_STATE] - obs[OBS_STATE]
    assert moved[0] == pytest.approx(0.10, abs=0.015)  # 5 steps x 2 cm
    assert moved[2] == pytest.approx(-0.05, abs=0.015)
    assert moved[3] < -0.05  # fingers closed
    assert np.abs(result.observation[OBS_IMAGE].astype(int) - obs[OBS_IMAGE]).sum() > 1000
    assert not np.array_equal(shared_env.render(), frame)


@pytest.mark.parametrize(
    ("actions", "message"),
    [
        (np.zeros(4), r"shape \(chunk, 4\)"),
        (np.zeros((3, 5)), r"shape \(chunk, 4\)"),
        (np.zeros((0, 4)), r"shape \(chunk, 4\)"),
        (np.array([[0.0, np.nan, 0.0, 0.0]]), "NaN"),
    ],
)
def test_bad_actions_raise(shared_env: TabletopEnv, actions: np.ndarray, message: str) -> None:
    shared_env.reset("lift_blue", 0)
    with pytest.raises(EnvError, match=message):
        shared_env.step(actions)


def test_bad_reset_and_step_before_reset() -> None:
    env = TabletopEnv(TabletopConfig(tasks=("lift_blue", "open_drawer")))
    try:
        with pytest.raises(EnvError, match="before reset"):
            env.step(np.zeros((1, 4)))
        with pytest.raises(EnvError, match="unknown task 'fly'; valid tasks: lift_blue, open_drawer"):
            env.reset("fly", 0)
        with pytest.raises(EnvError, match="not selected"):
            env.reset("press_button", 0)
        with pytest.raises(EnvError, match="valid 0..99"):
            env.reset("lift_blue", 100)
    finally:
        env.close()


def test_two_envs_in_one_process_render_their_own_scenes() -> None:
    """Env-pool workers may hold several envs; each must render from its own GL context."""
    a, b = TabletopEnv(TabletopConfig()), TabletopEnv(TabletopConfig(image_size=32))
    try:
        alone = a.reset("lift_blue", 0)[OBS_IMAGE]
        b.reset("open_drawer", 3)
        again = a.observe()[OBS_IMAGE]
        assert b.observe()[OBS_IMAGE].shape == (32, 32, 3)
        np.testing.assert_array_equal(alone, again)
    finally:
        a.close()
        b.close()


def test_close_is_idempotent() -> None:
    env = TabletopEnv(TabletopConfig())
    env.reset("press_button", 0)
    env.close()
    env.close()


def _run(code: str, **env_vars: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    environ.update(env_vars)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environ, timeout=120)


def test_osmesa_backend_and_backend_clash_in_a_fresh_process() -> None:
    """Backends are per process, so this runs in a child: osmesa renders the same
    scene, and asking for egl afterwards is a clear EnvError."""
    proc = _run(
        """
        from pushcut.errors import EnvError
        from pushcut.plugins.envs.tabletop import TabletopConfig, TabletopEnv
        env = TabletopEnv(TabletopConfig(gl_backend="osmesa"))
        image = env.reset("lift_blue", 0)["image"]
        assert image.shape == (64, 64, 3) and image.std() > 10
        env.close()
        try:
            TabletopEnv(TabletopConfig(gl_backend="egl")).reset("lift_blue", 0)
        except EnvError as exc:
            print("CLASH:", exc)
        """
    )
    if proc.returncode != 0 and "cannot load the 'osmesa'" in proc.stderr:
        pytest.skip("OSMesa is not installed (apt install libosmesa6)")
    assert proc.returncode == 0, proc.stderr
    assert "CLASH:" in proc.stdout and "MUJOCO_GL=egl" in proc.stdout


def test_env_builds_in_a_spawned_worker() -> None:
    """What the env pool does: ship the factory and config to a fresh process."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        shape, success = pool.apply(_worker_episode, (TabletopConfig(tasks=("press_button",)),))
    assert shape == (64, 64, 3) and success


def _worker_episode(config: TabletopConfig) -> tuple[tuple[int, ...], bool]:
    env = TabletopEnv(config)
    try:
        demo = run_expert(env, "press_button", 0)
        return demo.observations[0][OBS_IMAGE].shape, demo.success
    finally:
        env.close()
