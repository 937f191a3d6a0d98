"""The Meta-World env plugin from the trainer's venv, which has no Meta-World: the plugin registers
and validates its section anyway (its envs run in their own venv); bad names are one line with the
closest match; a venv without Meta-World is one line with the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pushcut.configio import load_config
from pushcut.errors import ConfigError
from pushcut.pluginmanager import get_plugin_manager
from pushcut.plugins.envs.metaworld.config import BENCHMARKS, INSTRUCTIONS, MT10, MetaworldConfig

REPO = Path(__file__).resolve().parents[4]


def test_registered_without_the_simulator_in_this_venv():
    entry = get_plugin_manager().envs.get("metaworld")
    assert entry.config_class is MetaworldConfig and entry.plugin == "metaworld"
    code = "import pushcut.plugins.envs.metaworld, sys; print('metaworld' in sys.modules, 'mujoco' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr  # only the config: no simulator, no MuJoCo


def test_tasks_benchmarks_and_instructions():
    assert len(INSTRUCTIONS) == 50 and all(name.endswith("-v3") for name in INSTRUCTIONS)
    assert BENCHMARKS["mt10"] == MT10 and len(BENCHMARKS["mt50"]) == 50
    assert not set(BENCHMARKS["ml45-train"]) & set(BENCHMARKS["ml45-test"])
    assert not set(BENCHMARKS["ml10-train"]) & set(BENCHMARKS["ml10-test"])
    assert MetaworldConfig().task_names == MT10 and MetaworldConfig().variation_source == "MT10"
    chosen = MetaworldConfig(tasks=("pick-place-v3", "door-open-v3"))
    assert chosen.task_names == ("pick-place-v3", "door-open-v3") and chosen.variation_source == "MT1"


@pytest.mark.parametrize("options, message", [
    ({"tasks": ["pick-plce-v3"]}, r"unknown Meta-World task 'pick-plce-v3'; did you mean 'pick-place-v3'"),
    ({"tasks": ["pick-place"]}, r"did you mean 'pick-place-v3'"),
    ({"benchmark": "mt11"}, r"unknown benchmark 'mt11'; did you mean 'mt10'"),
    ({"camera": "cornerr"}, r"unknown camera 'cornerr'; did you mean 'corner'"),
    ({"tasks": ["reach-v3", "reach-v3"]}, r"lists a task twice"),
    ({"num_eval_init_states": 50}, r"num_eval_init_states must be 1..49"),
    ({"max_steps": 600}, r"max_steps must be 1..500"),
    ({"benchmark": "ml10-train", "state_goal": True}, r"ml10-train hides the goal"),
])
def test_bad_options_are_one_line_with_the_closest_match(options, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(overrides=["env.type=metaworld"] + [f"env.{k}={v}" for k, v in
                                                         ((k, yaml.safe_dump(v, default_flow_style=True).strip())
                                                          for k, v in options.items())])
    assert "\n" not in str(info.value)


def test_the_cli_refuses_a_bad_task_with_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pushcut.cli", "train", str(REPO / "configs/metaworld_mt10_tiny.yaml"),
                          "env.tasks=[door-opn-v3]", f"run_dir={tmp_path / 'run'}"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PUSHCUT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert out.returncode == 2
    assert "did you mean 'door-open-v3'" in out.stderr and "Traceback" not in out.stderr


def test_a_worker_without_metaworld_is_one_line_with_the_fix(tmp_path):
    """rollout.transport.python pointing at a venv that has pushcut but no Meta-World (this one)."""
    cfg = {"run_dir": str(tmp_path / "run"), "env": {"type": "metaworld", "tasks": ["reach-v3"]},
           "policy": {"type": "tiny", "action_dim": 4, "chunk_size": 4},
           "rollout": {"transport": {"type": "process", "python": sys.executable}, "num_workers": 1,
                       "envs_per_worker": 1},
           "train": {"iterations": 1, "batch_size": 1, "eval_every": 0, "eval_at_start": False}}
    path = tmp_path / "mw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    if __import__("importlib").util.find_spec("metaworld") is not None:
        pytest.skip("this venv has Meta-World")
    out = subprocess.run([sys.executable, "-m", "pushcut.cli", "train", str(path)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PUSHCUT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Meta-World is not installed" in out.stderr and "setup-metaworld.sh" in out.stderr
    assert "Traceback" not in out.stderr


def test_envs_built_in_this_python_are_checked_for_the_simulator_here_only():
    """The registry knows the simulator a built env needs; the trainer refuses only a pool whose
    workers would run on this interpreter (which lacks it), naming both fixes."""
    from pushcut.build import build_pool

    if __import__("importlib").util.find_spec("metaworld") is not None:
        pytest.skip("this venv has Meta-World")
    entry = get_plugin_manager().envs.get("metaworld")
    assert entry.requires == "metaworld" and entry.missing() == "metaworld"
    for transport in (["rollout.transport=process"], ["rollout.transport=inline"]):
        config = load_config(overrides=["env.type=metaworld", *transport])
        with pytest.raises(ConfigError, match=r"needs 'metaworld'.*rollout.transport.python=PATH/bin/python"):
            build_pool(config)
    assert get_plugin_manager().envs.get("tabletop").missing() == ""  # MuJoCo is here
