"""Test-wide setup: third-party plugin autoloading is off (tests register what
they need in-process), so a stray installed plugin cannot change results."""

import os

os.environ["PUSHCUT_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ.setdefault("MUJOCO_GL", "egl")

import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pushcut.pluginmanager import reset_plugin_manager  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_plugin_manager():
    """Each test starts from a freshly loaded plugin manager."""
    reset_plugin_manager()
    yield
    reset_plugin_manager()


def _make_dist(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str],
               requires: tuple[str, ...] = ()) -> None:
    """A fake installed distribution (dist-info + modules) under ``root``, so
    entry-point discovery runs through the real importlib.metadata."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    meta = ["Metadata-Version: 2.1", f"Name: {dist}", "Version: 0.1", *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    (info / "entry_points.txt").write_text("[pushcut]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Returns make(dist, entry_points, modules, requires=()) installing into a
    directory put on sys.path for this test only."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))

    def make(dist, entry_points, modules, requires=()):
        _make_dist(root, dist, entry_points, modules, requires)
        return root

    return make
