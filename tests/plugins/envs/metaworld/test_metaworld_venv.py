"""Meta-World itself, in its own venv (scripts/setup-metaworld.sh; no torch there), reached from the
trainer's venv: the benchmark tables against the package's own, the Env contract run by pytest inside
that venv, every MT10 task through the process transport (reset, the scripted expert to success, early
stop, cameras), demos recorded through the transport, and a one-iteration train + eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pushcut.configio import to_dict
from pushcut.envpool import EnvPool, EnvSpec, ProcessTransport
from pushcut.envpool.slot import SlotEnv
from pushcut.plugins.envs.metaworld.config import BENCHMARKS, INSTRUCTIONS, MT10, MetaworldConfig

REPO = Path(__file__).resolve().parents[4]
HERE = Path(__file__).resolve().parent
MW_PYTHON = os.environ.get("PUSHCUT_METAWORLD_PYTHON", "")

pytestmark = pytest.mark.skipif(not MW_PYTHON or not os.path.isfile(MW_PYTHON),
                                reason="the Meta-World venv is absent: build it with scripts/setup-metaworld.sh and "
                                       "set PUSHCUT_METAWORLD_PYTHON=.venv-metaworld/bin/python")
ENV = {**os.environ, "PUSHCUT_DISABLE_PLUGIN_AUTOLOAD": "1"}


def in_venv(code: str, timeout: int = 600) -> str:
    out = subprocess.run([MW_PYTHON, "-c", code], capture_output=True, text=True, timeout=timeout, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_task_tables_are_the_packages_own():
    tables = json.loads(in_venv(
        "import json; from metaworld import env_dict as d\n"
        "print(json.dumps({'all': list(d.ALL_V3_ENVIRONMENTS), 'mt10': list(d.MT10_V3),"
        " 'ml10-train': list(d.ML10_V3['train']), 'ml10-test': list(d.ML10_V3['test']),"
        " 'ml45-train': list(d.ML45_V3['train']), 'ml45-test': list(d.ML45_V3['test'])}))").splitlines()[-1])
    assert list(INSTRUCTIONS) == tables["all"]
    for name in ("mt10", "ml10-train", "ml10-test", "ml45-test"):
        assert list(BENCHMARKS[name]) == tables[name], name
    assert set(BENCHMARKS["ml45-train"]) == set(tables["ml45-train"])  # same tasks (listed in MT50's order)


def test_the_env_contract_passes_inside_the_torch_free_venv():
    out = subprocess.run([MW_PYTHON, "-m", "pytest", str(HERE / "metaworld_contract.py"), "-q", "--noconftest",
                          "-p", "no:cacheprovider"], capture_output=True, text=True, timeout=1200,
                         env={**ENV, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}, cwd=REPO)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout, out.stdout[-2000:]


@pytest.fixture(scope="module")
def mt10_pool():
    options = to_dict(MetaworldConfig(benchmark="mt10", image_size=32, video_size=48, wrist_camera=True))
    with EnvPool(EnvSpec("metaworld", options), num_workers=1, envs_per_worker=1, timeout_s=600,
                 transport=ProcessTransport(MW_PYTHON, startup_timeout_s=600)) as pool:
        yield pool


def test_every_mt10_task_resets_and_its_expert_succeeds_through_the_transport(mt10_pool):
    env = SlotEnv(mt10_pool)
    tasks = {t.task_id: t for t in env.tasks()}
    assert list(tasks) == list(MT10)
    for task in tasks.values():
        assert task.train_init_states == tuple(range(40)) and task.eval_init_states == tuple(range(40, 50))
        assert task.instruction == INSTRUCTIONS[task.task_id]
    starts = {}
    for name, task in tasks.items():
        obs = env.reset(name, task.eval_init_states[0])
        assert obs["image"].shape == (32, 32, 3) and obs["wrist_image"].shape == (32, 32, 3)
        assert obs["state"].shape == (4,) and obs["image"].std() > 0
        starts[name] = obs["state"].copy()
        steps, result = 0, None
        while steps < task.max_steps:
            result = env.step(env.expert_action()[None])
            steps += result.steps
            if result.done:
                break
        assert result.success and result.info["episode_steps"] == steps < task.max_steps, (name, steps)
    other = env.reset("pick-place-v3", 1)
    again = env.reset("pick-place-v3", 1)
    np.testing.assert_array_equal(other["image"], again["image"])  # a variation is the same start every time
    assert not np.array_equal(env.reset("pick-place-v3", 2)["image"], other["image"])


def test_state_goal_appends_the_tasks_goal_to_the_state():
    """env.state_goal: the 4-D state (end effector, gripper) plus the goal Meta-World drew for this
    variation; the default stays 4-D, and different variations have different goals."""
    out = in_venv(
        "import json, numpy as np\n"
        "from pushcut.plugins.envs.metaworld.env import MetaworldEnv\n"
        "from pushcut.plugins.envs.metaworld.config import MetaworldConfig\n"
        "plain = MetaworldEnv(MetaworldConfig(tasks=('reach-v3',), image_size=32, video_size=32))\n"
        "goal = MetaworldEnv(MetaworldConfig(tasks=('reach-v3',), image_size=32, video_size=32, state_goal=True))\n"
        "a, b = plain.reset('reach-v3', 3)['state'], goal.reset('reach-v3', 3)['state']\n"
        "target = goal._env._target_pos.tolist()\n"
        "c = goal.reset('reach-v3', 4)['state']\n"
        "print(json.dumps({'plain': a.tolist(), 'goal': b.tolist(), 'other': c.tolist(), 'target': target}))")
    got = json.loads(out.splitlines()[-1])
    assert len(got["plain"]) == 4 and len(got["goal"]) == 7
    np.testing.assert_allclose(got["goal"][:4], got["plain"], atol=1e-6)
    np.testing.assert_allclose(got["goal"][4:], got["target"], atol=1e-5)
    assert not np.allclose(got["goal"][4:], got["other"][4:])


def test_demos_through_the_transport_from_the_trainers_venv(tmp_path):
    out = tmp_path / "mw.hdf5"
    run = subprocess.run([sys.executable, "-m", "pushcut.cli", "demos", "metaworld", "--per-task", "1", "--out", str(out),
                          "env.tasks=[reach-v3,button-press-topdown-v3]", "env.image_size=32",
                          f"rollout.transport.python={MW_PYTHON}"], capture_output=True, text=True, timeout=900, env=ENV)
    assert run.returncode == 0, run.stderr[-3000:]
    from pushcut.demos import read_demos

    demos = read_demos(out)
    assert [d.task_id for d in demos] == ["reach-v3", "button-press-topdown-v3"]
    assert all(d.images.shape[1:] == (32, 32, 3) and len(d) > 10 and d.actions.shape[1] == 4 for d in demos)
    assert all(np.abs(d.actions).max() <= 1.0 for d in demos)


@pytest.mark.slow
def test_train_one_iteration_and_eval_with_the_tiny_policy(tmp_path):
    run_dir = tmp_path / "run"
    cfg = yaml.safe_load((REPO / "configs/metaworld_mt10_tiny.yaml").read_text())
    cfg.update({"run_dir": str(run_dir)})
    cfg["env"].update({"tasks": ["reach-v3", "drawer-close-v3"], "image_size": 32, "max_steps": 40})
    cfg["policy"]["image_size"] = 32
    cfg["rollout"]["transport"]["python"] = MW_PYTHON
    cfg["rollout"].update({"num_workers": 1, "envs_per_worker": 4})
    cfg["train"].update({"iterations": 1, "batch_size": 1, "max_sample_rounds": 1, "minibatch_size": 8,
                         "eval_every": 0, "eval_at_start": False})
    cfg["algo"]["group_size"] = 4
    cfg["eval"] = {"max_init_states": 1, "videos_per_task": 0}
    path = tmp_path / "mw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    train = subprocess.run([sys.executable, "-m", "pushcut.cli", "train", str(path)], capture_output=True, text=True,
                           timeout=1200, env=ENV)
    assert train.returncode == 0, train.stderr[-3000:]
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics and metrics[-1]["rollout/episodes"] >= 4
    evaluate = subprocess.run([sys.executable, "-m", "pushcut.cli", "eval", str(run_dir)], capture_output=True,
                              text=True, timeout=1200, env=ENV)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    report = json.loads((run_dir / "eval.json").read_text())
    assert set(report["per_task"]) == {"reach-v3", "drawer-close-v3"}
