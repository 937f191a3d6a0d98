"""An env plugin's entry-point module imports only its config: a trainer whose envs run in
another venv or on another machine registers and validates them without the simulator."""

import json
import subprocess
import sys

import pytest

HEAVY = ("mujoco", "libero", "robosuite", "bddl", "torch", "OpenGL")

PROBE = """
import json, sys
import pushcut.plugins.envs.{plugin} as plugin
from pushcut.registry import Registry
registry = Registry("env")
plugin.pushcut_register_envs(registry)
entry = registry.get({name!r})
entry.config_class()  # the default config validates here too
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))
"""


@pytest.mark.parametrize(("plugin", "name"), [("tabletop", "tabletop"), ("libero", "libero")])
def test_registering_an_env_imports_neither_its_simulator_nor_torch(plugin, name):
    pytest.importorskip("libero" if plugin == "libero" else "mujoco", reason=f"the {plugin} extra is not installed")
    out = subprocess.run([sys.executable, "-c", PROBE.format(plugin=plugin, name=name, heavy=HEAVY)],
                         capture_output=True, text=True, timeout=120,
                         env={"PUSHCUT_DISABLE_PLUGIN_AUTOLOAD": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_env_classes_are_still_importable_from_the_plugin_package():
    from pushcut.plugins.envs.tabletop import TASK_IDS, TASKS, TabletopConfig, TabletopEnv, make_expert

    assert tuple(TASKS) == TASK_IDS and callable(make_expert)
    with TabletopEnv(TabletopConfig(tasks=("press_button",), image_size=32)) as env:
        assert [t.task_id for t in env.tasks()] == ["press_button"]
