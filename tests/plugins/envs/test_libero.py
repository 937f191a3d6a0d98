"""Tests of the LIBERO env plugin on the real ``libero`` package and LIBERO's assets.

Needs ``pip install "pushcut[libero]"`` (else every test but the "unavailable"
one is skipped) and the assets: ``$PUSHCUT_LIBERO_ASSETS``, else
``../shared/libero-assets/assets`` beside the repository (else the tests that
build scenes are skipped). LIBERO is slow (scene build 2-8 s, reset ~2 s), so
scenes are shared where the tests allow and the heavy tests are marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pushcut.errors import ConfigError, EnvError

REPO = Path(__file__).resolve().parents[3]
HAVE_LIBERO = all(importlib.util.find_spec(m) is not None for m in ("libero", "robosuite", "bddl"))
needs_libero = pytest.mark.skipif(not HAVE_LIBERO, reason='needs the [libero] extra: pip install "pushcut[libero]"')


def _assets() -> Path | None:
    configured = os.environ.get("PUSHCUT_LIBERO_ASSETS", "").strip()
    path = Path(configured) if configured else REPO.parent / "shared" / "libero-assets" / "assets"
    return path if (path / "scenes").is_dir() else None


ASSETS = _assets()
needs_assets = pytest.mark.skipif(
    not HAVE_LIBERO or ASSETS is None,
    reason="needs the [libero] extra and LIBERO's assets ($PUSHCUT_LIBERO_ASSETS or ../shared/libero-assets/assets)",
)

if HAVE_LIBERO:
    from pushcut.contracts import OBS_IMAGE, OBS_STATE, OBS_WRIST_IMAGE
    from pushcut.plugins.envs import libero as libero_plugin
    from pushcut.plugins.envs.libero import SUITE_MAX_STEPS, LiberoConfig, LiberoEnv, runtime
    from pushcut.plugins.envs.libero.env import AGENTVIEW, WRIST, openvla_to_libero, quat_to_axis_angle
    from pushcut.testing import EnvContract

    SPATIAL = [t.name for t in runtime.suite_tasks("libero_spatial")]
else:  # keep the module importable; every test below is skipped
    EnvContract = object
    SPATIAL = []

DRAWER_TASK = "open_the_middle_drawer_of_the_cabinet"


def _config(**options) -> LiberoConfig:
    options.setdefault("assets_dir", str(ASSETS))
    options.setdefault("image_size", 64)
    options.setdefault("render_size", 0)
    return LiberoConfig(**options)


def _run(code: str, **env_vars: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, **env_vars)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environ, timeout=300, stdin=subprocess.DEVNULL)


# ----------------------------------------------------------------- installation and registration


def test_without_libero_the_env_still_registers_and_is_refused_only_where_it_would_be_built() -> None:
    """The one rule for env plugins (docs/plugins.md): without libero here the env registers and
    validates (its workers may run in another venv); a pool built on this Python is one line with
    both fixes, never a traceback."""
    proc = _run(
        """
        import sys
        sys.modules["libero"] = None  # what an environment without the package looks like to find_spec
        from pushcut.pluginmanager import get_plugin_manager
        from pushcut.configio import load_config
        from pushcut.build import build_pool
        from pushcut.errors import ConfigError
        manager = get_plugin_manager()
        entry = manager.envs.get("libero")
        print(manager.infos["libero"].status, "|", entry.missing(), end=" | ")
        try:
            build_pool(load_config(overrides=["env.type=libero"]))
        except ConfigError as exc:
            print(exc)
        """
    )
    assert proc.returncode == 0, proc.stderr
    status, missing, error = proc.stdout.strip().split(" | ")
    assert status == "loaded" and missing == "libero"
    assert "needs 'libero'" in error and "rollout.transport.python=" in error and "\n" not in error


@needs_libero
def test_registers_through_the_hook() -> None:
    from pushcut.registry import Registry

    registry: Registry = Registry("env")
    libero_plugin.pushcut_register_envs(registry)
    entry = registry.get("libero")
    assert entry.config_class is LiberoConfig


@needs_libero
def test_import_never_prompts_and_writes_libero_config_into_a_pushcut_directory(tmp_path: Path) -> None:
    """A fresh process with no LIBERO config and no terminal: the task list loads,
    config.yaml lands in pushcut's directory, nothing is read from stdin."""
    proc = _run(
        """
        import os
        from pushcut.plugins.envs.libero import runtime
        tasks = runtime.suite_tasks("libero_10")
        print(len(tasks), os.environ["LIBERO_CONFIG_PATH"])
        """,
        PUSHCUT_LIBERO_CONFIG_DIR=str(tmp_path / "cfg"), HOME=str(tmp_path / "home"), LIBERO_CONFIG_PATH="",
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    count, where = proc.stdout.split()
    assert count == "10" and where == str(tmp_path / "cfg")
    written = (tmp_path / "cfg" / "config.yaml").read_text()
    assert "bddl_files" in written and "init_states" in written
    assert not (tmp_path / "home" / ".libero").exists()


# ----------------------------------------------------------------- config


@needs_libero
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"suite": "libero_100"}, "env.suite must be one of libero_spatial"),
        ({"tasks": ("fly_away",)}, "its tasks are: pick_up_the_black_bowl"),
        ({"tasks": (DRAWER_TASK, DRAWER_TASK), "suite": "libero_goal"}, "twice"),
        ({"num_eval_init_states": 0}, "num_eval_init_states must be 1..50"),
        ({"num_eval_init_states": 51}, "num_eval_init_states must be 1..50"),
        ({"max_steps": -1}, "max_steps must be >= 0"),
        ({"num_steps_wait": -1}, "num_steps_wait must be >= 0"),
        ({"image_size": 16}, "image_size must be 32..512"),
        ({"render_size": 8}, "render_size must be 0 or 32..1024"),
        ({"image_resize": "bicubic"}, "image_resize must be one of jpeg_lanczos, lanczos"),
        ({"gripper_convention": "robosuite"}, "gripper_convention must be one of openvla, libero"),
        ({"gl_backend": "glx"}, "gl_backend must be one of auto, egl, osmesa"),
        ({"cached_tasks": 0}, "cached_tasks must be >= 1"),
    ],
)
def test_bad_config_is_rejected(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LiberoConfig(**options)


@needs_libero
def test_config_defaults_follow_the_published_protocol() -> None:
    config = LiberoConfig()
    assert SUITE_MAX_STEPS == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300,
                               "libero_10": 520, "libero_90": 400}
    assert config.episode_steps == 220 and LiberoConfig(max_steps=512).episode_steps == 512
    assert config.num_steps_wait == 10 and config.flip_images and config.gripper_convention == "openvla"
    assert (config.render_size, config.image_size, config.camera_size) == (256, 224, 256)
    assert config.shadows and config.reflections and not config.soft_reset  # speed knobs off
    assert LiberoConfig(suite="libero_goal", tasks=DRAWER_TASK).tasks == (DRAWER_TASK,)  # type: ignore[arg-type]


@needs_libero
def test_the_yaml_configs_resolve() -> None:
    from pushcut.configio import load_config

    tiny = load_config(REPO / "configs" / "libero_spatial_tiny.yaml", [])
    assert tiny.env.type == "libero" and tiny.env.options.suite == "libero_spatial"
    assert tiny.policy.options.image_size == tiny.env.options.image_size
    assert (tiny.policy.options.action_dim, tiny.policy.options.state_dim) == (7, 8)
    assert tiny.sft.state_keys == ("ee_states", "gripper_states") and tiny.sft.flip_images
    if importlib.util.find_spec("peft") is None:
        pytest.skip("the openvla policy plugin is unavailable here ([openvla] extra)")
    oft = load_config(REPO / "configs" / "libero_openvla_oft.yaml", [])
    assert oft.policy.type == "openvla" and oft.policy.options.chunk_size * oft.policy.options.action_dim == 56
    assert (oft.env.options.render_size, oft.env.options.image_size, oft.env.options.max_steps) == (256, 224, 512)
    assert oft.algo.temperature == 1.6 and oft.algo.group_size == 8 and oft.train.lr == 5e-6


# ----------------------------------------------------------------- pure helpers


@needs_libero
def test_axis_angle_matches_robosuite() -> None:
    import robosuite.utils.transform_utils as T

    rng = np.random.default_rng(0)
    for quat in [*rng.normal(size=(50, 4)), np.array([0.0, 0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0, 0.0])]:
        quat = quat / np.linalg.norm(quat)
        np.testing.assert_allclose(quat_to_axis_angle(quat), T.quat2axisangle(quat.copy()), atol=1e-12)


@needs_libero
def test_openvla_gripper_becomes_libero_gripper() -> None:
    chunk = np.array([[0.1, -0.2, 0.3, 0.0, 0.5, -0.5, g] for g in (1.0, 0.9, 0.6, 0.4, 0.0)])
    out = openvla_to_libero(chunk)
    np.testing.assert_array_equal(out[:, :6], chunk[:, :6])
    # OpenVLA 1 = open -> LIBERO -1 = open; 0 = close -> +1 = close; binarised at 0.5
    np.testing.assert_array_equal(out[:, 6], [-1.0, -1.0, -1.0, 1.0, 1.0])


@needs_libero
def test_missing_assets_name_the_file_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUSHCUT_LIBERO_ASSETS", raising=False)
    with pytest.raises(EnvError, match=r"scenes.*env\.assets_dir=.*PUSHCUT_LIBERO_ASSETS=.*docs/libero\.md"):
        LiberoEnv(_config(assets_dir=str(tmp_path)))
    monkeypatch.setenv("PUSHCUT_LIBERO_ASSETS", str(tmp_path / "nope"))
    with pytest.raises(EnvError, match=r"nope/scenes.*\$PUSHCUT_LIBERO_ASSETS"):
        LiberoEnv(LiberoConfig())


@needs_assets
def test_a_missing_asset_file_is_named_when_the_scene_is_built(tmp_path: Path) -> None:
    """A copy of the assets without the plate's texture: the error names that file."""
    partial = tmp_path / "assets"
    for src in ASSETS.rglob("*"):  # type: ignore[union-attr]
        dst = partial / src.relative_to(ASSETS)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        elif src.name != "texture.png" or src.parent.name != "plate":
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
    env = LiberoEnv(_config(assets_dir=str(partial), tasks=(SPATIAL[0],)))
    try:
        with pytest.raises(EnvError, match=r"plate/texture\.png' not found.*PUSHCUT_LIBERO_ASSETS"):
            env.reset(SPATIAL[0], 0)
    finally:
        env.close()


# ----------------------------------------------------------------- the env


@pytest.fixture(scope="module")
def shared_env() -> Iterator[LiberoEnv]:
    """Two LIBERO-Spatial tasks at 64 px with both cameras (scene builds are the slow part)."""
    env = LiberoEnv(_config(tasks=tuple(SPATIAL[:2]), cached_tasks=2))
    yield env
    env.close()


@needs_assets
@pytest.mark.slow
class TestLiberoContract(EnvContract):
    @pytest.fixture
    def env(self, shared_env: LiberoEnv) -> LiberoEnv:
        return shared_env


@needs_assets
def test_tasks_instructions_and_splits(shared_env: LiberoEnv) -> None:
    specs = shared_env.tasks()
    assert [s.task_id for s in specs] == SPATIAL[:2]
    assert specs[0].instruction == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    for spec in specs:
        assert spec.num_init_states == 50 and spec.max_steps == 220
        assert spec.train_init_states == tuple(range(40)) and spec.eval_init_states == tuple(range(40, 50))
    every = LiberoEnv(_config(suite="libero_10", num_eval_init_states=25, max_steps=512))
    assert len(every.tasks()) == 10 and every.tasks()[0].max_steps == 512
    assert every.tasks()[0].eval_init_states == tuple(range(25, 50))
    assert every.action_spec.low == (-1.0,) * 6 + (0.0,)  # openvla gripper: 0 (close) .. 1 (open)
    assert LiberoEnv(_config(gripper_convention="libero")).action_spec.low == (-1.0,) * 7


@needs_assets
@pytest.mark.slow
def test_reset_follows_the_protocol(shared_env: LiberoEnv) -> None:
    """Stored initial state, then 10 settle steps; rotated frames; the 8-dim state from robosuite's observation."""
    task = SPATIAL[0]
    obs = shared_env.reset(task, 3)
    sim = shared_env.simulator
    assert sim.env.timestep == 10  # the settle steps ran
    assert not shared_env.success and not sim.check_success()
    raw = shared_env.raw_observation
    np.testing.assert_array_equal(obs[OBS_IMAGE], raw["agentview_image"][::-1, ::-1])
    np.testing.assert_array_equal(obs[OBS_WRIST_IMAGE], raw["robot0_eye_in_hand_image"][::-1, ::-1])
    assert obs[OBS_STATE].dtype == np.float32 and obs[OBS_STATE].shape == (8,)
    np.testing.assert_allclose(obs[OBS_STATE][:3], raw["robot0_eef_pos"], rtol=1e-6)
    np.testing.assert_allclose(obs[OBS_STATE][6:], raw["robot0_gripper_qpos"], rtol=1e-6)
    assert obs[OBS_STATE][6] > 0.03  # fingers open after the no-op steps (gripper -1)
    assert shared_env.render().shape == (64, 64, 3)


@needs_assets
@pytest.mark.slow
def test_frames_match_robosuites_own_camera_observations() -> None:
    """Cameras render only after a chunk's last action; the frames and states the policy
    gets must equal what robosuite's per-step camera observations give (the upstream path)."""
    env = LiberoEnv(_config(suite="libero_goal", tasks=(DRAWER_TASK,), gripper_convention="libero"))
    rng = np.random.default_rng(0)
    chunks = [rng.uniform(-1, 1, (6, 7)) for _ in range(2)]
    try:
        import libero.libero.envs as lib_envs

        bddl = runtime.suite_tasks("libero_goal")[0].bddl_file
        init = runtime.init_states("libero_goal", DRAWER_TASK)[5]
        reference = lib_envs.OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=64, camera_widths=64)
        reference.seed(0)
        reference.reset()
        raw = reference.set_init_state(init)
        for _ in range(10):
            raw, _, _, _ = reference.step([0, 0, 0, 0, 0, 0, -1])
        expected = [raw]
        for chunk in chunks:
            for action in chunk:
                raw, _, _, _ = reference.step(action.tolist())
            expected.append(raw)
        expected = [(r["agentview_image"][::-1, ::-1].copy(), r["robot0_eye_in_hand_image"][::-1, ::-1].copy(),
                     r["robot0_eef_pos"].copy()) for r in expected]
        reference.close()

        got = [env.reset(DRAWER_TASK, 5)] + [env.step(chunk).observation for chunk in chunks]
        for (image, wrist, eef), obs in zip(expected, got):
            np.testing.assert_array_equal(obs[OBS_IMAGE], image)
            np.testing.assert_array_equal(obs[OBS_WRIST_IMAGE], wrist)
            np.testing.assert_allclose(obs[OBS_STATE][:3], eef, rtol=1e-6)
    finally:
        env.close()


@needs_assets
@pytest.mark.slow
def test_success_is_libero_predicate_and_stops_the_chunk() -> None:
    """Open the middle drawer by setting its joint: LIBERO's goal holds, the chunk stops
    after one action, the frames are of the final state."""
    env = LiberoEnv(_config(suite="libero_goal", tasks=(DRAWER_TASK,), soft_reset=True))
    try:
        env.reset(DRAWER_TASK, 0)
        result = env.step(np.tile([0, 0, 0, 0, 0, 0, 1.0], (3, 1)))
        assert result.steps == 3 and not result.success and not result.done
        sim = env.simulator.env.sim
        address = sim.model.get_joint_qpos_addr("wooden_cabinet_1_middle_level")
        sim.data.qpos[address] = -0.16  # LIBERO's "open" range for this cabinet
        sim.forward()
        result = env.step(np.tile([0, 0, 0, 0, 0, 0, 1.0], (4, 1)), record=False)
        assert result.steps == 1 and result.success and result.done and result.info["success"]
        assert env.simulator.check_success()
        assert not np.array_equal(result.observation[OBS_IMAGE], env.reset(DRAWER_TASK, 0)[OBS_IMAGE])
    finally:
        env.close()


@needs_assets
@pytest.mark.slow
def test_each_camera_renders_only_when_its_frame_is_used() -> None:
    """A reset renders each camera once (after the settle steps), a chunk once (after its last
    action); a recorded chunk adds only the third-person camera on its other steps."""
    env = LiberoEnv(_config(tasks=(SPATIAL[1],), soft_reset=True, shadows=False, reflections=False))
    try:
        env.reset(SPATIAL[1], 0)  # builds the scene; a soft reset keeps its MjSim
        sim = env.simulator.env.sim
        rendered: list[str] = []
        render = sim.render

        def counting(*args, camera_name=None, **kwargs):
            rendered.append(camera_name)
            return render(*args, camera_name=camera_name, **kwargs)

        sim.render = counting
        env.reset(SPATIAL[1], 3)
        assert sorted(rendered) == sorted([AGENTVIEW, WRIST])
        rendered.clear()
        env.step(np.zeros((4, 7)))
        assert sorted(rendered) == sorted([AGENTVIEW, WRIST])
        rendered.clear()
        before = env.observe()
        result = env.step(np.tile([0.8, 0, 0, 0, 0, 0, -1.0], (4, 1)), record=True)  # moves the arm
        assert rendered == [AGENTVIEW] * 3 + rendered[3:] and sorted(rendered[3:]) == sorted([AGENTVIEW, WRIST])
        assert len(result.frames) == 4 and not np.array_equal(result.frames[0], result.frames[-1])
        for key in (OBS_IMAGE, OBS_WRIST_IMAGE):  # rendered after the last action, not left from before
            assert not np.array_equal(result.observation[key], before[key])
    finally:
        env.close()


@needs_assets
@pytest.mark.slow
def test_a_hard_reset_renders_each_camera_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """LIBERO's default reset rebuilds the scene and robosuite's camera sensors, and robosuite
    renders every new sensor three times (two validity checks and the forced first observation)
    before the env could wrap it: the sensors are lazy from birth, so a hard reset renders each
    camera once, after the settle steps."""
    from robosuite.utils import binding_utils

    env = LiberoEnv(_config(tasks=(SPATIAL[1],), render_size=128, image_size=128))
    try:
        env.reset(SPATIAL[1], 0)  # builds the scene
        rendered: list[str] = []
        render = binding_utils.MjSim.render

        def counting(self, *args, camera_name=None, **kwargs):
            rendered.append(camera_name)
            return render(self, *args, camera_name=camera_name, **kwargs)

        monkeypatch.setattr(binding_utils.MjSim, "render", counting)
        old_sim = env.simulator.env.sim
        obs = env.reset(SPATIAL[1], 4)
        assert env.simulator.env.sim is not old_sim  # a hard reset: a new MjSim
        assert sorted(rendered) == sorted([AGENTVIEW, WRIST])
        raw = env.raw_observation
        np.testing.assert_array_equal(obs[OBS_IMAGE], raw["agentview_image"][::-1, ::-1])
        assert obs[OBS_IMAGE].std() > 5 and obs[OBS_WRIST_IMAGE].std() > 5  # rendered, not the black placeholder
        # (equal to robosuite's own per-step camera observations after a hard reset:
        # test_frames_match_robosuites_own_camera_observations)
    finally:
        env.close()


@needs_assets
@pytest.mark.slow
def test_budget_excludes_settle_steps_and_soft_reset_is_reproducible() -> None:
    env = LiberoEnv(_config(tasks=(SPATIAL[1],), max_steps=5, soft_reset=True, shadows=False, reflections=False,
                            wrist_camera=False))
    try:
        first = env.reset(SPATIAL[1], 7)
        assert set(first) == {OBS_IMAGE, OBS_STATE}
        result = env.step(np.random.default_rng(1).uniform(0, 1, (8, 7)), record=True)
        assert result.steps == 5 and result.done and result.info["truncated"] and not result.success
        assert len(result.frames) == 5 and result.frames[0].shape == (64, 64, 3)
        assert env.step(np.zeros((2, 7))).steps == 0
        again = env.reset(SPATIAL[1], 7)
        for key in first:
            np.testing.assert_array_equal(first[key], again[key])
    finally:
        env.close()


@needs_assets
@pytest.mark.slow
def test_osmesa_backend_in_a_fresh_process() -> None:
    """gl_backend=osmesa renders the same scene headless without EGL (robosuite picks the
    platform at import, so this runs in a child process)."""
    proc = _run(
        f"""
        from pushcut.plugins.envs.libero import LiberoConfig, LiberoEnv
        env = LiberoEnv(LiberoConfig(assets_dir={str(ASSETS)!r}, gl_backend="osmesa", image_size=48, render_size=0,
                                     tasks=({SPATIAL[0]!r},), soft_reset=True, wrist_camera=False))
        image = env.reset({SPATIAL[0]!r}, 0)["image"]
        import os
        print("%s|%.1f|%s" % (image.shape, image.std(), os.environ["MUJOCO_GL"]))
        env.close()
        """,
        MUJOCO_GL="",
    )
    if proc.returncode != 0 and "OSMesa" in proc.stderr:
        pytest.skip(f"OSMesa is not usable here (apt install libosmesa6): {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    shape, std, backend = proc.stdout.strip().splitlines()[-1].split("|")
    assert (shape, backend) == ("(48, 48, 3)", "osmesa") and float(std) > 5


# ----------------------------------------------------------------- every task of every suite


@needs_assets
@pytest.mark.slow
@pytest.mark.parametrize("suite", ["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"])
def test_every_task_creates_resets_steps_and_renders(suite: str) -> None:
    """Each task of the suite, in two env workers: build the scene, reset to a stored
    initial state, step, render, and read LIBERO's success predicate (False at the start), all
    through the pool's wire protocol (no function crosses to the worker)."""
    from pushcut.envpool import EnvPool, SlotFailure

    config = _config(suite=suite, soft_reset=True, num_steps_wait=2, image_size=48, wrist_camera=True,
                     shadows=False, reflections=False)
    tasks = [t.name for t in runtime.suite_tasks(suite)]
    missing, failures = [], []
    with EnvPool(LiberoEnv, config, num_workers=2, envs_per_worker=1, timeout_s=300) as pool:
        for start in range(0, len(tasks), 2):
            batch = dict(enumerate(tasks[start:start + 2]))
            resets = pool.reset({slot: (task, slot) for slot, task in batch.items()})
            live = {}
            for slot, obs in resets.items():
                if isinstance(obs, SlotFailure):
                    (missing if "not found" in obs.reason else failures).append(f"{batch[slot]}: {obs.reason}")
                    continue
                assert obs[OBS_IMAGE].shape == obs[OBS_WRIST_IMAGE].shape == (48, 48, 3)
                assert obs[OBS_STATE].shape == (8,) and np.isfinite(obs[OBS_STATE]).all()
                live[slot] = np.tile([0, 0, 0, 0, 0, 0, 1.0], (2, 1))
            for slot, result in pool.step(live).items():
                assert not isinstance(result, SlotFailure), f"{batch[slot]}: {result.reason}"
                # result.success is LIBERO's own goal predicate, read by the worker after the step
                assert result.steps == 2 and not result.success, batch[slot]
                frame = pool.render([slot])[slot]
                assert not isinstance(frame, SlotFailure), f"{batch[slot]}: {frame.reason}"
                assert frame.std() > 5, f"{batch[slot]}: rendered frame is (nearly) constant"
    assert not failures, "\n".join(failures)
    if missing:
        if len(missing) == len(tasks):
            pytest.skip(f"no assets for any {suite} task: {missing[0]}")
        warnings.warn(f"{len(missing)} {suite} task(s) skipped, assets missing: " + "; ".join(missing), stacklevel=1)


# ----------------------------------------------------------------- demos, sft, train, eval


def _write_libero_demo_file(path: Path, env: LiberoEnv, task: str, init_state: int, steps: int,
                            array_init_state: bool) -> np.ndarray:
    """A demo file in the layout of LIBERO's own datasets (scripts/create_dataset.py),
    recorded from the simulator: raw (upside-down) 128 px frames, ee_states (pos +
    axis-angle), gripper_states, LIBERO-convention actions. Returns the actions."""
    import h5py

    spec = next(s for s in env.tasks() if s.task_id == task)
    env.reset(task, init_state)
    rng = np.random.default_rng(init_state)
    actions = np.concatenate([rng.uniform(-0.5, 0.5, (steps, 6)), np.ones((steps, 1))], axis=1)
    agentview, wrist, ee, gripper = [], [], [], []
    for action in actions:
        raw = env.raw_observation
        agentview.append(raw["agentview_image"])
        wrist.append(raw["robot0_eye_in_hand_image"])
        ee.append(np.concatenate([raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"])]))
        gripper.append(raw["robot0_gripper_qpos"])
        env.step(action[None], record=True)  # fresh frames every step, as LIBERO's recordings have
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_name"] = "Libero_Tabletop_Manipulation"
        data.attrs["problem_info"] = json.dumps({"problem_name": "libero_tabletop_manipulation",
                                                 "domain_name": "robosuite", "language_instruction": spec.instruction})
        data.attrs["env_args"] = json.dumps({"type": 1, "env_name": "Libero_Tabletop_Manipulation"})
        data.attrs["num_demos"] = 1
        data.attrs["total"] = steps
        demo = data.create_group("demo_0")
        obs = demo.create_group("obs")
        obs.create_dataset("agentview_rgb", data=np.stack(agentview))
        obs.create_dataset("eye_in_hand_rgb", data=np.stack(wrist))
        obs.create_dataset("ee_states", data=np.stack(ee))
        obs.create_dataset("ee_pos", data=np.stack(ee)[:, :3])
        obs.create_dataset("ee_ori", data=np.stack(ee)[:, 3:])
        obs.create_dataset("gripper_states", data=np.stack(gripper))
        obs.create_dataset("joint_states", data=np.zeros((steps, 7)))
        demo.create_dataset("actions", data=actions)
        demo.create_dataset("states", data=np.zeros((steps, 92)))
        dones = np.zeros(steps, np.uint8)
        dones[-1] = 1
        demo.create_dataset("rewards", data=dones)
        demo.create_dataset("dones", data=dones)
        demo.attrs["num_samples"] = steps
        demo.attrs["model_file"] = "<mujoco/>"
        if array_init_state:
            demo.attrs["init_state"] = np.zeros(92)  # LIBERO stores the flattened MuJoCo state here
    return actions


@pytest.fixture(scope="module")
def demo_env() -> Iterator[LiberoEnv]:
    env = LiberoEnv(_config(tasks=(SPATIAL[0],), image_size=128, gripper_convention="libero"))
    yield env
    env.close()


@needs_assets
@pytest.mark.slow
def test_libero_demo_files_read_like_the_env_observes(demo_env: LiberoEnv, tmp_path: Path) -> None:
    """Read with the keys configs/libero_spatial_tiny.yaml maps, a LIBERO demo frame
    is exactly the env's observation of the same state (rotation, state layout)."""
    from pushcut.demos import DemoKeys, read_demos

    path = tmp_path / f"{SPATIAL[0]}_demo.hdf5"
    actions = _write_libero_demo_file(path, demo_env, SPATIAL[0], 2, 3, array_init_state=False)
    demos = read_demos(path, DemoKeys(image="agentview_rgb", wrist_image="eye_in_hand_rgb",
                                      state=("ee_states", "gripper_states"), flip_images=True))
    obs = demo_env.reset(SPATIAL[0], 2)
    demo = demos[0]
    assert demo.instruction == demo_env.tasks()[0].instruction
    np.testing.assert_array_equal(demo.images[0], obs[OBS_IMAGE])
    np.testing.assert_array_equal(demo.wrist_images[0], obs[OBS_WRIST_IMAGE])
    np.testing.assert_allclose(demo.states[0], obs[OBS_STATE], rtol=1e-6)
    np.testing.assert_allclose(demo.actions, actions.astype(np.float32))


@needs_assets
@pytest.mark.slow
def test_libero_demo_files_with_their_array_init_state(demo_env: LiberoEnv, tmp_path: Path) -> None:
    from pushcut.demos import DemoKeys, read_demos

    path = tmp_path / "demo.hdf5"
    _write_libero_demo_file(path, demo_env, SPATIAL[0], 0, 2, array_init_state=True)
    demos = read_demos(path, DemoKeys(image="agentview_rgb", state=("ee_states", "gripper_states")))
    assert len(demos) == 1
    assert demos[0].init_state == -1  # LIBERO stores the MuJoCo state there, not an index


@needs_assets
@pytest.mark.slow
def test_pushcut_sft_train_and_eval_on_libero(demo_env: LiberoEnv, tmp_path: Path) -> None:
    """The tiny policy on LIBERO-Spatial through the CLI: SFT on a LIBERO demo file, one
    RL iteration, then greedy eval of the run (tiny budgets: 8-step episodes)."""
    from pushcut.cli import main

    demo = tmp_path / f"{SPATIAL[0]}_demo.hdf5"
    _write_libero_demo_file(demo, demo_env, SPATIAL[0], 0, 4, array_init_state=False)
    config = str(REPO / "configs" / "libero_spatial_tiny.yaml")
    common = [f"env.assets_dir={ASSETS}", f"env.tasks=[{SPATIAL[0]}]", "env.max_steps=8", "train.torch_threads=1"]
    sft_dir = tmp_path / "sft"
    assert main(["sft", config, f"run_dir={sft_dir}", f"sft.demos=[{demo}]", "sft.steps=3", "sft.batch_size=4",
                 *common]) == 0
    assert (sft_dir / "sft" / "policy").is_dir()

    run = tmp_path / "rl"
    assert main(["train", config, f"run_dir={run}", f"train.init_from={sft_dir / 'sft' / 'policy'}",
                 "train.iterations=1", "train.batch_size=1", "train.max_sample_rounds=1", "algo.group_size=2",
                 "train.eval_at_start=false", "train.eval_every=0", "train.save_every=0", "rollout.num_workers=1",
                 "rollout.envs_per_worker=2", "eval.max_init_states=1", "eval.videos_per_task=0", *common]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert any("rollout/success_rate" in m for m in metrics)

    assert main(["eval", str(run), "eval.videos_per_task=1", "rollout.num_workers=1",
                 "rollout.envs_per_worker=1"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert list(report["per_task"]) == [SPATIAL[0]] and report["episodes"] == 1
    assert 0.0 <= report["success_rate"] <= 1.0
    assert report["videos"] and all(Path(v).is_file() for v in report["videos"])
