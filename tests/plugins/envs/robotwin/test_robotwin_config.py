"""The RoboTwin plugin on the trainer's side (no RoboTwin, no SAPIEN here): registration and
config validation, the 2.0 / 1.0 task tables, min/max normalisation against pushcut's OpenVLA
reference, the 1.0 action/observation conversions, seed lists and the chunk's gripper ramps."""

import argparse
import contextlib
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from pushcut.actions import normalize_actions, unnormalize_actions
from pushcut.configio import build_dataclass, load_config, to_dict
from pushcut.errors import ConfigError, EnvError
from pushcut.plugins.envs import robotwin
from pushcut.plugins.envs.robotwin.config import (
    GRIPPER_OPEN_1_0,
    INSTRUCTIONS_1_0,
    PRIMITIVES_ONLY_2_0,
    STEP_LIMITS_2_0,
    TASKS_1_0,
    RobotwinConfig,
)
from pushcut.plugins.envs.robotwin.env import _gripper_track, read_seed_list
from pushcut.plugins.envs.robotwin.normalize import load_action_stats, minmax_bounds, unnormalize_minmax
from pushcut.plugins.envs.robotwin import v1
from pushcut.pluginmanager import get_plugin_manager
from pushcut.testing import registered_plugin


def test_the_entry_module_imports_without_robotwin_or_sapien():
    code = ("import sys, pushcut.plugins.envs.robotwin as m, pushcut.plugins.envs.robotwin.seeds; "
            "print(sorted(k for k in ('robotwin', 'sapien', 'mplib') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@contextlib.contextmanager
def robotwin_registered():
    """The built-in entry point registers it; in-process when this checkout's metadata is older."""
    manager = get_plugin_manager()
    if "robotwin" in manager.envs.names():
        yield manager
    else:
        with registered_plugin(robotwin, "robotwin_test", manager):
            yield manager


def test_env_type_robotwin_resolves_and_validates_in_the_trainer_venv():
    with robotwin_registered():
        cfg = load_config(None, ["env.type=robotwin", "env.tasks=[stack_blocks_two,handover_block]",
                                 "env.embodiment=[piper,piper,0.6]", "env.allowed_collisions=[[link7,link8]]",
                                 "policy.action_dim=14", "policy.chunk_size=25"])
        assert cfg.env.type == "robotwin"
        assert cfg.env.options.tasks == ("stack_blocks_two", "handover_block")
        assert cfg.env.options.allowed_collisions == (("link7", "link8"),)
        with pytest.raises(ConfigError, match="not RoboTwin 2.0 tasks.*stack_blocks_two"):
            load_config(None, ["env.type=robotwin", "env.tasks=[stack_block_two]"])


def test_config_round_trips_through_plain_data():
    cfg = RobotwinConfig(tasks=("stack_blocks_two",), embodiment=("piper", "piper", 0.6),
                         allowed_collisions=(("link7", "link8"),), camera_width=128, camera_height=96)
    assert build_dataclass(RobotwinConfig, to_dict(cfg), "env") == cfg


@pytest.mark.parametrize("field,value,message", [
    ("version", "3.0", "env.version"),
    ("embodiment", ("piper", "piper"), r"\[name\] or \[left, right, distance_m\]"),
    ("embodiment", ("piper", "piper", "far"), "distance between the two arms"),
    ("shader", "pathtrace", "env.shader"),
    ("camera_type", "D455", "env.camera_type"),
    ("num_eval_init_states", 100, "1..99"),
    ("action_stats", "stats.json", "only read with env.action_normalization=minmax"),
    ("allowed_collisions", (("link7",),), "link pairs"),
])
def test_bad_options_name_the_fix(field, value, message):
    with pytest.raises(ConfigError, match=message):
        RobotwinConfig(**{field: value})


def test_1_0_needs_a_checkout_and_its_own_task_names():
    with pytest.raises(ConfigError, match="robotwin_root"):
        RobotwinConfig(version="1.0", tasks=("block_hammer_beat",))
    with pytest.raises(ConfigError, match="not RoboTwin 1.0 tasks"):
        RobotwinConfig(version="1.0", tasks=("beat_block_hammer",), robotwin_root="/x")
    cfg = RobotwinConfig(version="1.0", tasks=("block_hammer_beat",), robotwin_root="/x")
    assert cfg.step_limit("block_hammer_beat") == 0  # read from the checkout's setup_demo


def test_task_tables():
    assert len(STEP_LIMITS_2_0) == 50 and set(PRIMITIVES_ONLY_2_0) <= set(STEP_LIMITS_2_0)
    assert STEP_LIMITS_2_0["stack_blocks_two"] == 800 and STEP_LIMITS_2_0["blocks_ranking_rgb"] == 1200
    assert RobotwinConfig().step_limit("stack_blocks_two") == 800
    assert RobotwinConfig(max_steps=50).step_limit("stack_blocks_two") == 50
    assert len(TASKS_1_0) == 17 and set(TASKS_1_0) == set(INSTRUCTIONS_1_0)
    assert all(two in STEP_LIMITS_2_0 for two in TASKS_1_0.values() if two)
    table = v1.task_table()
    assert [row[0] for row in table] == sorted(TASKS_1_0)
    assert ("block_handover", "handover_block", INSTRUCTIONS_1_0["block_handover"]) in table


def test_camera_size_defaults_to_the_camera_type():
    assert RobotwinConfig().render_size == (320, 240)
    assert RobotwinConfig(camera_type="Large_L515").render_size == (640, 360)
    assert RobotwinConfig(camera_width=128, camera_height=96).render_size == (128, 96)


def test_minmax_equals_openvla_oft_unnormalisation():
    rng = np.random.default_rng(0)
    low, high = rng.uniform(-3, 0, 14), rng.uniform(0.1, 3, 14)
    bounds = minmax_bounds(low, high)
    a = rng.uniform(-1, 1, (25, 14))
    np.testing.assert_allclose(unnormalize_minmax(bounds, a), unnormalize_actions(a, low, high, eps=1e-8), rtol=0,
                               atol=1e-12)
    x = unnormalize_minmax(bounds, a)
    np.testing.assert_allclose(bounds.normalize(x), normalize_actions(x, low, high), atol=1e-12)
    np.testing.assert_allclose(bounds.normalize(x), a, atol=1e-7)
    assert np.allclose(unnormalize_minmax(bounds, np.full(14, 5.0)), high + 1e-8)  # clipped to +1 first


def test_action_stats_file(tmp_path):
    path = tmp_path / "dataset_statistics.json"
    path.write_text(json.dumps({"stack_blocks_two": {"action": {"min": [0.0] * 14, "max": [1.0] * 14}},
                                "lift_pot": {"action": {"min": [-1.0] * 14, "max": [2.0] * 14}}}))
    assert load_action_stats(str(path), "lift_pot").high == (2.0,) * 14
    with pytest.raises(EnvError, match="has 2 entries; choose one with env.action_stats_key"):
        load_action_stats(str(path))
    with pytest.raises(EnvError, match="not in"):
        load_action_stats(str(path), "place_shoe")


def test_1_0_gripper_conversions_invert_each_other():
    a = np.zeros((3, 14))
    a[:, 6], a[:, 13] = [0.0, 0.5, 1.0], [1.0, 0.25, 2.0]
    a[:, 0] = [0.1, -0.2, 0.3]
    out = v1.actions_to_v1(a)
    np.testing.assert_allclose(out[:, 6], [0.0, 0.0225, GRIPPER_OPEN_1_0])
    np.testing.assert_allclose(out[:, 13], [GRIPPER_OPEN_1_0, 0.01125, GRIPPER_OPEN_1_0])  # 2.0 clipped to open
    np.testing.assert_array_equal(out[:, 0], a[:, 0])
    np.testing.assert_allclose(v1.state_from_v1(out[1]), np.where(np.arange(14) == 13, 0.25, a[1]), atol=1e-7)


def test_1_0_observation_conversion():
    head = np.random.default_rng(1).integers(0, 255, (240, 320, 4), dtype=np.uint8)
    joints = np.r_[np.zeros(6), 0.045, np.ones(6), 0.0]
    raw = {"observation": {"head_camera": {"rgb": head}, "left_camera": {"rgb": head[:, :, :3]}},
           "joint_action": joints}
    obs = v1.observation_from_v1(raw, wrist=True)
    assert obs["image"].shape == (240, 320, 3) and obs["image"].dtype == np.uint8
    np.testing.assert_array_equal(obs["image"], head[..., :3])
    assert obs["state"][6] == 1.0 and obs["state"][13] == 0.0 and obs["state"].dtype == np.float32
    raw["joint_action"] = {"vector": joints}
    np.testing.assert_array_equal(v1.observation_from_v1(raw, wrist=False)["state"], obs["state"])
    with pytest.raises(EnvError, match=r"\(14,\)"):
        v1.state_from_v1(np.zeros(16))


def test_seed_lists(tmp_path):
    (tmp_path / "stack_blocks_two.json").write_text(json.dumps({"task": "stack_blocks_two", "seeds": [3, 5, 9],
                                                                "verified": False}))
    seeds = read_seed_list(str(tmp_path), "stack_blocks_two")
    assert seeds.seeds == (3, 5, 9) and seeds.verified is False
    with pytest.raises(EnvError, match="pushcut robotwin seeds handover_block"):
        read_seed_list(str(tmp_path), "handover_block")
    (tmp_path / "blocks_ranking_rgb.json").write_text(json.dumps({"seeds": [1, 1]}))
    with pytest.raises(EnvError, match="at least 2 distinct"):
        read_seed_list(str(tmp_path), "blocks_ranking_rgb")


def test_gripper_ramps_split_the_path_like_robotwin():
    # 10 physics steps over 3 targets: 4 + 3 + 3, each a linear ramp from the previous target
    track = _gripper_track(1.0, np.array([0.0, 0.0, 1.0]), 10)
    np.testing.assert_allclose(track, [0.75, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 1 / 3, 2 / 3, 1.0])


def test_the_seeds_command_is_registered():
    from pushcut.cli import build_parser

    with robotwin_registered():
        parser = build_parser()
        args = parser.parse_args(["robotwin", "seeds", "stack_blocks_two", "--n", "3", "--allow-unverified"])
        assert args.task == "stack_blocks_two" and args.n == 3 and args.allow_unverified


def test_missing_venv_assets_and_vulkan_are_one_line_each(tmp_path, monkeypatch):
    from pushcut.plugins.envs.robotwin import runtime

    if importlib.util.find_spec("sapien") is None:  # the trainer's venv: no RoboTwin here
        with pytest.raises(EnvError, match="run scripts/setup-robotwin.sh and point rollout.transport.python"):
            runtime.check_installed()
    monkeypatch.setenv("VK_ICD_FILENAMES", str(tmp_path / "none.json"))
    with pytest.raises(EnvError, match="mesa-vulkan-drivers"):
        runtime.check_vulkan()
    monkeypatch.delenv("PUSHCUT_ROBOTWIN_ASSETS", raising=False)
    monkeypatch.delenv("ROBOTWIN_ASSETS_ROOT", raising=False)
    with pytest.raises(EnvError, match="set env.assets_dir"):
        runtime.assets_root(RobotwinConfig())
    (tmp_path / "assets" / "embodiments" / "piper").mkdir(parents=True)
    (tmp_path / "assets" / "embodiments" / "piper" / "config.yml").write_text("{}")
    with pytest.raises(EnvError, match=r"assets/objects is missing"):
        runtime.assets_root(RobotwinConfig(assets_dir=str(tmp_path), embodiment=("piper", "piper", 0.6)))
    with pytest.raises(EnvError, match=r"aloha-agilex/config.yml is missing"):
        runtime.assets_root(RobotwinConfig(assets_dir=str(tmp_path)))
    for sub in ("objects", "background_texture"):
        (tmp_path / "assets" / sub).mkdir()
    assert runtime.assets_root(RobotwinConfig(assets_dir=str(tmp_path), embodiment=("piper", "piper", 0.6))) == tmp_path


def test_the_seeds_tool_without_a_robotwin_venv_says_how_to_build_one(tmp_path):
    from pushcut.plugins.envs.robotwin import seeds

    if importlib.util.find_spec("robotwin") is not None:
        pytest.skip("this interpreter has RoboTwin: the tool would run here")
    parser = argparse.ArgumentParser()
    seeds.add_arguments(parser)
    args = parser.parse_args(["stack_blocks_two", "--python", str(tmp_path / "missing" / "python")])
    with pytest.raises(EnvError, match="scripts/setup-robotwin.sh"):
        seeds.run(args)
