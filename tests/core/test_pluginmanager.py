"""Plugin discovery through real entry points (fake dist-info directories on sys.path)."""

from dataclasses import dataclass

import pytest

from pushcut import hookimpl
from pushcut.errors import PluginError
from pushcut.pluginmanager import PluginManager, get_plugin_manager
from pushcut.testing import registered_plugin

PLUGIN_SOURCE = """
from dataclasses import dataclass
from pushcut import hookimpl

@dataclass
class Cfg:
    size: int = 1

class Widget:
    def __init__(self, config):
        self.config = config

@hookimpl
def pushcut_register_envs(registry):
    registry.add({name!r}, Cfg, Widget)
"""


def test_builtin_plugins_load_through_entry_points():
    manager = PluginManager(autoload=False)
    manager.load_entry_points()
    info = manager.infos["env_success"]
    assert info.distribution == "pushcut" and info.source == "pushcut.plugins.rewards.env_success"
    assert info.registered["success_detector"] == ["env_success"]
    assert manager.success_detectors.get("env_success").plugin == "env_success"


def test_third_party_plugin_discovered(fake_dist):
    fake_dist("acme-sim", {"acme": "acme_plugin_a"}, {"acme_plugin_a": PLUGIN_SOURCE.format(name="acme_env")})
    manager = PluginManager(autoload=True)
    manager.load_entry_points()
    assert manager.infos["acme"].distribution == "acme-sim"
    assert manager.envs.get("acme_env").plugin == "acme"


def test_autoload_disabled_skips_third_party(fake_dist):
    fake_dist("acme-sim2", {"acme2": "acme_plugin_b"}, {"acme_plugin_b": PLUGIN_SOURCE.format(name="acme_env2")})
    manager = PluginManager(autoload=False)
    manager.load_entry_points()
    assert "acme2" not in manager.infos and "acme_env2" not in manager.envs
    assert "env_success" in manager.success_detectors


def test_env_var_disables_autoload(monkeypatch):
    monkeypatch.setenv("PUSHCUT_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert PluginManager().autoload is False
    monkeypatch.delenv("PUSHCUT_DISABLE_PLUGIN_AUTOLOAD")
    assert PluginManager().autoload is True


def test_missing_optional_dependency_is_unavailable_with_install_hint(fake_dist):
    fake_dist(
        "acme-robot",
        {"acme_robot": "acme_plugin_c"},
        {"acme_plugin_c": "import acme_nonexistent_sdk\n"},
        requires=('acme-nonexistent-sdk>=1; extra == "robot"',),
    )
    manager = PluginManager(autoload=True)
    manager.load_entry_points()  # no error: unavailable is not broken
    info = manager.infos["acme_robot"]
    assert info.status == "unavailable"
    assert 'pip install "acme-robot[robot]"' in info.reason
    with pytest.raises(PluginError, match=r"acme_robot.*unavailable.*acme-robot\[robot\]"):
        manager.envs.get("acme_robot")


def test_plugin_raising_at_import_is_one_clear_error(fake_dist):
    fake_dist("acme-bad", {"acme_bad": "acme_plugin_d"}, {"acme_plugin_d": "raise RuntimeError('boom')\n"})
    manager = PluginManager(autoload=True)
    with pytest.raises(PluginError) as info:
        manager.load_entry_points()
    msg = str(info.value)
    assert "acme_bad" in msg and "RuntimeError: boom" in msg and "PUSHCUT_DISABLE_PLUGIN_AUTOLOAD" in msg
    assert "\n" not in msg
    assert manager.infos["acme_bad"].status == "broken"


def test_two_plugins_one_name(fake_dist):
    fake_dist("acme-one", {"one": "acme_plugin_e"}, {"acme_plugin_e": PLUGIN_SOURCE.format(name="clash")})
    fake_dist("acme-two", {"two": "acme_plugin_f"}, {"acme_plugin_f": PLUGIN_SOURCE.format(name="clash")})
    manager = PluginManager(autoload=True)
    with pytest.raises(PluginError, match=r"'clash' is registered by two plugins, '(one|two)' and '(one|two)'"):
        manager.load_entry_points()


def test_unknown_hook_rejected_by_check_pending():
    class Typo:
        @hookimpl
        def pushcut_register_env(self, registry):  # missing "s"
            pass

    manager = PluginManager(autoload=False)
    with pytest.raises(PluginError, match="pushcut_register_env"):
        manager.register(Typo(), name="typo")


def test_in_process_registration_and_unregister():
    @dataclass
    class Cfg:
        pass

    class Plugin:
        @hookimpl
        def pushcut_register_policies(self, registry):
            registry.add("inproc", Cfg, lambda c: c)

    with registered_plugin(Plugin(), "inproc_plugin") as manager:
        assert manager.policies.get("inproc").plugin == "inproc_plugin"
    assert "inproc" not in get_plugin_manager().policies


def test_event_hooks_reach_plugins(tmp_path):
    seen = []

    class Logger:
        @hookimpl
        def pushcut_after_update(self, run_dir, step, metrics):
            seen.append((run_dir, step, metrics["actor/pg_loss"]))

    with registered_plugin(Logger(), "logger") as manager:
        manager.after_update(tmp_path, 3, {"actor/pg_loss": 0.5})
    assert seen == [(tmp_path, 3, 0.5)]
