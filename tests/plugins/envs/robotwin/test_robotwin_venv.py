"""RoboTwin 2.0 itself, in its own venv (scripts/setup-robotwin.sh), reached through the env
transport: pushcut.testing's Env contract, create/reset/step/render/success on every
primitives-only task, early stop, equality with RoboTwin's own chunk execution, and a one-iteration
`pushcut train` + `pushcut eval` with the tiny policy at 14 dims and chunks of 25.

Runs on the stand-in Piper assets (../shared/robotwin-assets, or $PUSHCUT_ROBOTWIN_ASSETS).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pushcut.configio import build_dataclass, to_dict
from pushcut.envcontract import ActionSpec, Env, StepResult, TaskSpec
from pushcut.envpool import EnvPool, EnvSpec, ProcessTransport, SlotFailure
from pushcut.errors import EnvError
from pushcut.plugins.envs.robotwin.config import PRIMITIVES_ONLY_2_0, RobotwinConfig
from pushcut.testing import EnvContract

REPO = Path(__file__).resolve().parents[4]
ROBOTWIN_PYTHON = os.environ.get("PUSHCUT_ROBOTWIN_PYTHON", "")
ASSETS = os.environ.get("PUSHCUT_ROBOTWIN_ASSETS", str(REPO.parent / "shared" / "robotwin-assets"))
HERE = Path(__file__).resolve().parent

pytestmark = [
    pytest.mark.skipif(not ROBOTWIN_PYTHON or not os.path.isfile(ROBOTWIN_PYTHON),
                       reason="the RoboTwin venv is absent: build it with scripts/setup-robotwin.sh and set "
                              "PUSHCUT_ROBOTWIN_PYTHON=.venv-robotwin/bin/python"),
    pytest.mark.skipif(not (Path(ASSETS) / "assets" / "embodiments" / "piper").is_dir(),
                       reason=f"no RoboTwin assets with the piper embodiment at {ASSETS}: set PUSHCUT_ROBOTWIN_ASSETS"),
]

STANDIN = {"assets_dir": ASSETS, "embodiment": ["piper", "piper", 0.6], "allowed_collisions": [["link7", "link8"]],
           "camera_width": 64, "camera_height": 48, "shadows": False, "num_init_states": 6,
           "num_eval_init_states": 2, "max_steps": 50}
"""The stand-in embodiment (two Piper arms 0.6 m apart, fingers allowed to touch), a 64x48 head
camera, 6 seeds per task (4 train, 2 eval), 50 policy steps (two chunks of 25)."""


def config(tasks) -> RobotwinConfig:
    return build_dataclass(RobotwinConfig, {**STANDIN, "tasks": list(tasks)}, "env")


def spec(tasks) -> EnvSpec:
    return EnvSpec("robotwin", to_dict(config(tasks)), plugins=("pushcut.plugins.envs.robotwin",))


class PooledEnv(Env):
    """One slot of an EnvPool as an Env, so the contract suite runs through the transport;
    ``only`` narrows ``tasks()`` to one of the pool's tasks (the contract runs on each in turn)."""

    def __init__(self, pool: EnvPool, config: RobotwinConfig, only: str | None = None) -> None:
        self.pool, self.config, self.only = pool, config, only  # config: what the worker was sent

    @staticmethod
    def _one(results):
        value = results[0]
        if isinstance(value, SlotFailure):
            raise EnvError(value.reason)
        return value

    def tasks(self) -> list[TaskSpec]:
        return [t for t in self.pool.tasks() if self.only in (None, t.task_id)]

    @property
    def action_spec(self) -> ActionSpec:
        return self.pool.action_spec

    def reset(self, task_id: str, init_state: int):
        return self._one(self.pool.reset({0: (task_id, init_state)}))

    def step(self, actions, record: bool = False) -> StepResult:
        return self._one(self.pool.step({0: np.asarray(actions)}, record))

    def render(self):
        return self._one(self.pool.render([0]))


@pytest.fixture(scope="module")
def all_tasks_pool():
    with EnvPool(spec(PRIMITIVES_ONLY_2_0), num_workers=1, envs_per_worker=1,
                 transport=ProcessTransport(ROBOTWIN_PYTHON, startup_timeout_s=300), timeout_s=300) as pool:
        yield pool


class TestRobotwinContract(EnvContract):
    """The Env contract on every primitives-only task, one task at a time, in RoboTwin's venv."""

    chunk = 25

    @pytest.fixture(params=PRIMITIVES_ONLY_2_0)
    def env(self, all_tasks_pool, request):
        return PooledEnv(all_tasks_pool, config(PRIMITIVES_ONLY_2_0), only=request.param)


def test_the_worker_describes_every_primitives_only_task(all_tasks_pool):
    tasks = {t.task_id: t for t in all_tasks_pool.tasks()}
    assert list(tasks) == list(PRIMITIVES_ONLY_2_0)
    for t in tasks.values():
        assert t.max_steps == 50 and t.train_init_states == (0, 1, 2, 3) and t.eval_init_states == (4, 5)
        assert t.instruction.strip() and "{" not in t.instruction, t.instruction
    spec_ = all_tasks_pool.action_spec
    assert spec_.action_dim == 14
    assert spec_.low[6] == 0.0 and spec_.high[6] == 1.0 and spec_.low[13] == 0.0 and spec_.high[13] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("task", PRIMITIVES_ONLY_2_0)
def test_create_reset_step_render_success(all_tasks_pool, task):
    env = PooledEnv(all_tasks_pool, config(PRIMITIVES_ONLY_2_0))
    obs = env.reset(task, 0)
    assert obs["image"].shape == (48, 64, 3) and obs["image"].dtype == np.uint8 and obs["image"].std() > 0
    assert obs["state"].shape == (14,) and obs["state"][6] == 1.0 and obs["state"][13] == 1.0  # grippers open
    spec_ = env.action_spec
    target = np.asarray(spec_.low) + 0.5 * (np.asarray(spec_.high) - np.asarray(spec_.low))
    chunk = np.linspace(obs["state"], target, 26)[1:]
    first = env.step(chunk)
    assert first.steps == 25 and not first.success and not first.done
    assert first.info["task_id"] == task and first.info["episode_steps"] == 25
    # the arms went to the commanded joint targets (drive targets, as RoboTwin reports qpos)
    np.testing.assert_allclose(first.observation["state"], chunk[-1], atol=1e-3)
    frame = env.render()
    np.testing.assert_array_equal(frame, first.observation["image"])  # the head camera, as observed
    last = env.step(chunk[::-1])
    assert last.done and last.info["truncated"] and not last.success and last.info["episode_steps"] == 50


def _venv_check(name: str) -> dict:
    out = subprocess.run([ROBOTWIN_PYTHON, str(HERE / "robotwin_venv_checks.py"), name, ASSETS],
                         capture_output=True, text=True, timeout=600)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, f"{name} printed no result: {out.stdout[-2000:]} {out.stderr[-3000:]}"
    return json.loads(line[len("RESULT "):])


def test_a_chunk_stops_as_soon_as_the_task_succeeds():
    r = _venv_check("early_stop")
    assert r["success"] and r["done"]
    assert 1 <= r["steps"] < 25 and r["frames"] == r["steps"] == r["episode_steps"]


def test_a_chunk_runs_exactly_as_robotwins_own_chunk_execution():
    r = _venv_check("same_as_robotwin")
    assert r["steps"] == 25
    assert r["ours_q"] == r["theirs_q"] and r["ours_block"] == r["theirs_block"]
    assert r["state"] == r["robotwin_state"]


@pytest.mark.slow
def test_train_one_iteration_and_eval_with_the_tiny_policy(tmp_path):
    run_dir = tmp_path / "run"
    env = {"type": "robotwin", "tasks": ["stack_blocks_two"], **STANDIN, "image_size": 32,
           "action_normalization": "minmax", "num_init_states": 4, "num_eval_init_states": 1}
    cfg = {"run_dir": str(run_dir), "seed": 0, "env": env,
           "policy": {"type": "tiny", "action_dim": 14, "chunk_size": 25, "image_size": 32},
           "algo": {"group_size": 2, "temperature": 1.6},
           "rollout": {"num_workers": 1, "envs_per_worker": 2, "step_timeout_s": 300, "max_steps": 50,
                       "transport": {"type": "process", "python": ROBOTWIN_PYTHON}},
           "train": {"iterations": 1, "batch_size": 1, "max_sample_rounds": 1, "minibatch_size": 4,
                     "eval_every": 0, "torch_threads": 1},
           "eval": {"max_init_states": 1, "videos_per_task": 0}}
    path = tmp_path / "robotwin.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env_vars = {**os.environ, "PUSHCUT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    train = subprocess.run([sys.executable, "-m", "pushcut.cli", "train", str(path)], capture_output=True, text=True,
                           timeout=900, env=env_vars)
    assert train.returncode == 0, train.stderr[-3000:]
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics and metrics[-1]["rollout/episodes"] >= 2
    evaluate = subprocess.run([sys.executable, "-m", "pushcut.cli", "eval", str(run_dir)], capture_output=True,
                              text=True, timeout=900, env=env_vars)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert re.search(r"stack_blocks_two", evaluate.stdout + evaluate.stderr)
