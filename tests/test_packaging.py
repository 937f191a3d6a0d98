"""A regular (non-editable) install lays out `pushcut` and `pushcut.plugins`
and nothing else at the top level of site-packages."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    # Build from a copy so no build/ or egg-info lands in the checkout.
    for name in ("core", "plugins", "configs", "pyproject.toml", "setup.py", "README.md"):
        subprocess.run(["cp", "-r", str(ROOT / name), str(build)], check=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(build)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def test_only_pushcut_at_top_level(installed):
    top = {p.name for p in installed.iterdir() if not p.name.endswith((".dist-info", ".egg-info"))}
    top.discard("bin")
    assert top == {"pushcut"}, f"unexpected top-level entries in site-packages: {sorted(top)}"
    assert (installed / "pushcut" / "plugins" / "rewards" / "env_success.py").is_file()
    assert (installed / "pushcut" / "plugins" / "envs" / "tabletop" / "tabletop.xml").is_file()
    assert (installed / "pushcut" / "configs" / "quickstart.yaml").is_file()
    assert not (installed / "core").exists() and not (installed / "plugins").exists()


def test_installed_copy_imports_and_registers(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    code = (
        "import pushcut, pushcut.plugins, importlib.metadata as md;"
        "from pushcut.pluginmanager import PluginManager;"
        "m = PluginManager(autoload=False); m.load_entry_points();"
        "assert 'env_success' in m.success_detectors;"
        "assert pushcut.__file__.startswith(%r), pushcut.__file__;"
        "import importlib.util as u; assert u.find_spec('core') is None and u.find_spec('plugins') is None"
    ) % str(installed)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_editable_install_maps_both_packages(tmp_path):
    """The test venv holds the editable install: both packages resolve into the checkout."""
    code = "import pushcut, pushcut.plugins; print(pushcut.__file__); print(pushcut.plugins.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    core_file, plugins_file = proc.stdout.split()
    assert Path(core_file) == ROOT / "core" / "__init__.py"
    assert Path(plugins_file) == ROOT / "plugins" / "__init__.py"
