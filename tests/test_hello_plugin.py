"""The example third-party plugin (examples/pushcut-hello-plugin) installs with
pip, is found through the ``pushcut`` entry-point group, resolves in a config,
passes its own contract tests, and disappears with PUSHCUT_DISABLE_PLUGIN_AUTOLOAD.

The example is installed once, with ``pip install --target`` into a temporary
directory, so the test venv is never modified; every check runs in a
subprocess with that directory on PYTHONPATH.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pushcut-hello-plugin"
DISABLE = "PUSHCUT_DISABLE_PLUGIN_AUTOLOAD"


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Install the example into a fresh target dir (offline, no build isolation,
    using the setuptools already in this venv); return the copy and a subprocess env."""
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not available in this interpreter")
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed here; --no-build-isolation needs it to build the example")
    root = tmp_path_factory.mktemp("hello")
    # Build from a copy so no build/ or *.egg-info lands in the source tree.
    source = root / "pushcut-hello-plugin"
    shutil.copytree(
        EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache")
    )
    target = root / "site"
    env = {k: v for k, v in os.environ.items() if k != DISABLE}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    proc = _run(
        ["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir",
         "--quiet", "--target", str(target), str(source)],
        env,
    )
    assert proc.returncode == 0, f"pip install of the example failed:\n{_explain(proc)}"
    assert (target / "pushcut_hello" / "plugin.py").is_file(), sorted(p.name for p in target.iterdir())
    env["PYTHONPATH"] = os.pathsep.join([str(target), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"source": source, "target": target, "env": env}


def test_plugins_lists_hello(installed):
    proc = _run(["-m", "pushcut.cli", "plugins"], installed["env"])
    assert proc.returncode == 0, _explain(proc)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("hello ")]
    assert lines, f"`pushcut plugins` does not list the hello plugin:\n{proc.stdout}"
    assert "pushcut-hello-plugin" in lines[0]
    assert "hello_line" in lines[0] and "hello_gaussian" in lines[0], lines[0]


def test_config_show_resolves_hello(installed):
    proc = _run(
        ["-m", "pushcut.cli", "config", "show", "env.type=hello_line", "policy.type=hello_gaussian",
         "env.num_init_states=6", "policy.chunk_size=2"],
        installed["env"],
    )
    assert proc.returncode == 0, _explain(proc)
    out = proc.stdout
    assert "type: hello_line" in out and "type: hello_gaussian" in out
    # The plugins' own config dataclasses filled in their fields.
    for field in ("num_init_states: 6", "num_eval: 2", "step_size:", "image_size: 16",
                  "chunk_size: 2", "init_log_std:", "checkpoint: null"):
        assert field in out, f"{field!r} missing from the resolved config:\n{out}"


def test_plugin_config_validation_reaches_the_user(installed):
    proc = _run(
        ["-m", "pushcut.cli", "config", "show", "env.type=hello_line", "policy.type=hello_gaussian", "env.num_eval=0"],
        installed["env"],
    )
    assert proc.returncode == 2, _explain(proc)
    assert "env.num_eval" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_example_contract_tests_pass(installed):
    source = installed["source"]
    proc = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(source / "tests")], installed["env"], cwd=source)
    assert proc.returncode == 0, _explain(proc)
    assert "passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


def test_disable_autoload_hides_hello(installed):
    env = dict(installed["env"], **{DISABLE: "1"})
    proc = _run(["-m", "pushcut.cli", "plugins"], env)
    assert proc.returncode == 0, _explain(proc)
    assert "hello" not in proc.stdout, proc.stdout
    assert "env_success" in proc.stdout, "built-in plugins must still load"
    assert DISABLE in proc.stdout
