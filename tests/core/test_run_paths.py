"""Interpreter and credential paths in a run directory's config.yaml: stored like the other run
paths (absolute, or relative to the run directory when inside it), so a run can be evaluated or
resumed from any working directory; a venv's python keeps its link (resolving it leaves the venv)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from pushcut.configio import load_config
from pushcut.rundir import RunDir


def test_rollout_python_is_saved_absolute_with_its_venv_link_kept(tmp_path, monkeypatch):
    venv = tmp_path / "sim-venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)  # what every venv's bin/python is: a link to the base
    (tmp_path / "token").write_text("t")
    monkeypatch.chdir(tmp_path)
    config = load_config(overrides=["rollout.transport.python=sim-venv/bin/python", f"run_dir={tmp_path / 'runs' / 'a'}"])
    RunDir(config.run_dir).save_config(config)
    remote = load_config(overrides=["rollout.transport=socket", "rollout.transport.addresses=[127.0.0.1:7171]",
                                    "rollout.transport.token_file=token", f"run_dir={tmp_path / 'runs' / 'b'}"])
    RunDir(remote.run_dir).save_config(remote)
    saved = yaml.safe_load((tmp_path / "runs" / "a" / "config.yaml").read_text())
    assert saved["rollout"]["transport"]["python"] == str(venv / "python")  # absolute, not resolved to the base interpreter
    saved = yaml.safe_load((tmp_path / "runs" / "b" / "config.yaml").read_text())
    assert saved["rollout"]["transport"]["token_file"] == str(tmp_path / "token")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # `pushcut eval DIR` from another directory
    loaded = RunDir(tmp_path / "runs" / "a").load_config().rollout.transport.options
    assert Path(loaded.python) == venv / "python" and os.path.isfile(loaded.python)


def test_an_interpreter_inside_the_run_directory_travels_with_it(tmp_path):
    run = tmp_path / "run"
    (run / "venv" / "bin").mkdir(parents=True)
    (run / "venv" / "bin" / "python").symlink_to(sys.executable)
    config = load_config(overrides=[f"rollout.transport.python={run / 'venv' / 'bin' / 'python'}", f"run_dir={run}"])
    RunDir(run).save_config(config)
    assert yaml.safe_load((run / "config.yaml").read_text())["rollout"]["transport"]["python"] == "venv/bin/python"
    moved = tmp_path / "moved"
    run.rename(moved)
    assert RunDir(moved).load_config().rollout.transport.options.python == str(moved / "venv" / "bin" / "python")
