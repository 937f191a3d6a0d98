"""An env in its own virtualenv: the tabletop served from a venv without torch (numpy, msgpack,
mujoco and pushcut --no-deps; built by scripts/make_env_venv.sh), both as a ``process`` worker on
that interpreter and behind ``pushcut env serve``, trains exactly like the in-process env."""

import json
import os
import re
import select
import subprocess
import sys

import numpy as np
import pytest

from pushcut.configio import load_config, to_dict
from pushcut.envpool import EnvPool, EnvSpec, ProcessTransport
from pushcut.plugins.envs.tabletop import TabletopConfig
from pushcut.trainer import Trainer

ENV_PYTHON = os.environ.get("PUSHCUT_ENV_VENV_PYTHON", "")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ENV_PYTHON, reason="set PUSHCUT_ENV_VENV_PYTHON to the python of a venv built by "
                                              "scripts/make_env_venv.sh DIR"),
]

ENV = {"type": "tabletop", "image_size": 32, "tasks": ["press_button", "close_drawer"], "jitter": 0.03}


def test_the_env_venv_has_no_torch():
    out = subprocess.run([ENV_PYTHON, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out.stderr


def test_a_process_worker_on_the_other_interpreter_steps_like_this_one():
    spec = EnvSpec("tabletop", to_dict(TabletopConfig(**{k: v for k, v in ENV.items() if k != "type"})),
                   plugins=("pushcut.plugins.envs.tabletop",))
    with EnvPool(spec, num_workers=1, envs_per_worker=2, transport=ProcessTransport(ENV_PYTHON)) as other, \
            EnvPool(spec, num_workers=1, envs_per_worker=2) as here:
        assert other.tasks() == here.tasks() and other.action_spec == here.action_spec
        a, b = other.reset({0: ("press_button", 3), 1: ("close_drawer", 5)}), here.reset(
            {0: ("press_button", 3), 1: ("close_drawer", 5)})
        for s in (0, 1):
            np.testing.assert_array_equal(a[s]["image"], b[s]["image"])
        chunk = np.tile([0.5, -0.3, -0.2, 1.0], (4, 1)).astype(np.float32)
        ra, rb = other.step({0: chunk, 1: chunk}), here.step({0: chunk, 1: chunk})
        for s in (0, 1):
            np.testing.assert_array_equal(ra[s].observation["state"], rb[s].observation["state"])
            np.testing.assert_array_equal(ra[s].observation["image"], rb[s].observation["image"])


def _serve_from_env_venv(tmp_path):
    cfg = tmp_path / "env.yaml"
    cfg.write_text(json.dumps({"env": ENV}))
    proc = subprocess.Popen([ENV_PYTHON, "-m", "pushcut.cli", "env", "serve", str(cfg), "--port", "0", "--envs", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline() if ready else ""
    match = re.search(r"on 127\.0\.0\.1:(\d+)", line)
    if not match:
        proc.kill()
        pytest.fail(f"env server in {ENV_PYTHON} did not start: {line!r} {proc.stderr.read()}")
    return proc, f"127.0.0.1:{match.group(1)}"


def test_training_against_the_env_venv_server_equals_the_in_process_run(tmp_path):
    proc, address = _serve_from_env_venv(tmp_path)
    base = [f"env.{k}={json.dumps(v)}" for k, v in ENV.items()] + [
        "policy.type=tiny", "policy.chunk_size=4", "policy.action_dim=4", "policy.image_size=32",
        "algo.group_size=4", "algo.temperature=1.0", "train.batch_size=2", "train.max_sample_rounds=1",
        "train.minibatch_size=8", "train.iterations=2", "train.eval_every=0", "eval.max_init_states=1",
        "eval.videos_per_task=0", "train.torch_threads=1", "rollout.envs_per_worker=4", "rollout.max_steps=12"]
    runs = {}
    try:
        for name, extra in (("process", ["rollout.transport=process", "rollout.num_workers=1"]),
                            ("socket", ["rollout.transport=socket", f"rollout.transport.addresses=[{address}]"])):
            cfg = load_config(None, [*base, *extra, f"run_dir={tmp_path / name}"])
            assert Trainer(cfg).run()["status"] == "completed"
            lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
            runs[name] = [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")} for x in lines]
    finally:
        proc.terminate()
        proc.wait(30)
    assert runs["socket"] == runs["process"]
    assert runs["socket"][-1]["rollout/episodes"] >= 8
    assert "Traceback" not in proc.stderr.read()
