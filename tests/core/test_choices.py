"""One mechanism for a config field that picks a registered component (``{type: NAME, ...its fields}``):
the run sections, ``rollout.transport``, the robot's ``env.driver`` and the sim driver's ``env``, all
resolved through the plugin manager's registries; hooks a plugin adds through ``pushcut_addhooks``."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from pushcut import hookimpl
from pushcut.config import PluginChoice, choice
from pushcut.configio import apply_overrides, load_config, resolve
from pushcut.configio import build_dataclass
from pushcut.envpool.transports import ProcessTransportConfig, SocketTransportConfig
from pushcut.errors import ConfigError, PluginError
from pushcut.hookspecs import hookspec
from pushcut.pluginmanager import PluginManager, get_plugin_manager


def test_a_bare_transport_name_is_that_transport_with_its_defaults_and_takes_dotted_keys():
    config = load_config(None, ["rollout.transport=socket", "rollout.transport.addresses=[127.0.0.1:1,127.0.0.1:2]",
                                "rollout.transport.connect_attempts=1"])
    assert config.rollout.transport.type == "socket"
    assert config.rollout.transport.options == SocketTransportConfig(("127.0.0.1:1", "127.0.0.1:2"), connect_attempts=1)
    assert config.rollout.num_workers == 2  # one worker per address
    assert load_config(None, []).rollout.transport == PluginChoice("process", ProcessTransportConfig())


def test_the_yaml_mapping_form_and_the_override_form_agree():
    data = {"rollout": {"transport": {"type": "process", "python": "/usr/bin/python3"}}}
    assert resolve(data) == load_config(None, ["rollout.transport.python=/usr/bin/python3"])
    assert apply_overrides({"rollout": {"transport": "ray"}}, ["rollout.transport.num_cpus=0.5"]) == {
        "rollout": {"transport": {"type": "ray", "num_cpus": 0.5}}}


@pytest.mark.parametrize("key, moved", [
    ("rollout.addresses=[127.0.0.1:1]", "rollout.transport.addresses"),
    ("rollout.python=/usr/bin/python3", "rollout.transport.python"),
    ("rollout.tls_ca=cert.pem", "rollout.transport.tls_ca"),
    ("rollout.ray_num_cpus=1", "rollout.transport.num_cpus"),
    ("rollout.ray_runtime_env={}", "rollout.transport.runtime_env"),
    ("env.driver_options={}", "env.driver: {type: NAME"),
])
def test_old_flat_keys_are_refused_with_where_they_moved(key, moved):
    overrides = [key] if not key.startswith("env.") else ["env.type=real", key]
    with pytest.raises(ConfigError, match=rf"has moved: set {moved.replace('{', '[{]')}"):
        load_config(None, overrides)


def test_the_robot_driver_and_its_sim_env_resolve_through_their_registries():
    config = load_config(None, ["env.type=real", "env.driver.type=sim", "env.driver.env.type=tabletop",
                                "env.driver.env.image_size=32", "rollout.transport=socket",
                                "rollout.transport.addresses=[127.0.0.1:7171]"])
    driver = config.env.options.driver
    assert driver.type == "sim" and type(driver.options).__name__ == "SimDriverConfig"
    assert driver.options.env.type == "tabletop" and driver.options.env.options.image_size == 32
    with pytest.raises(ConfigError, match="unknown config key 'env.driver.env.image_sise'.*did you mean 'image_size'"):
        load_config(None, ["env.type=real", "env.driver.env.image_sise=32"])
    with pytest.raises(ConfigError, match="unknown config key 'env.driver.env'; valid keys in 'env.driver': "):
        load_config(None, ["env.type=real", "env.driver=replay", "env.driver.env.type=tabletop"])
    with pytest.raises(PluginError, match="unknown robot driver 'simm'.*did you mean 'sim'"):
        load_config(None, ["env.type=real", "env.driver=simm"])


def test_transports_and_robot_drivers_are_registries_of_the_manager():
    manager = get_plugin_manager()
    assert {"inline", "process", "socket", "ray"} <= set(manager.transports.names())
    assert manager.source_of("transport", "socket") == "transports"
    assert manager.source_of("robot driver", "replay") == "real"
    assert manager.infos["transports"].registered == {"transport": ["inline", "process", "ray", "socket"]}
    assert manager.infos["real"].registered["robot_driver"] == ["replay", "sim"]


def test_pushcut_plugins_lists_transports_and_robot_drivers(capsys):
    from pushcut.cli import main

    assert main(["plugins", "--json"]) == 0
    listed = {p["name"]: p["registered"] for p in json.loads(capsys.readouterr().out)}
    assert listed["transports"]["transport"] == ["inline", "process", "ray", "socket"]
    assert listed["real"]["robot_driver"] == ["replay", "sim"]


class GripperSpecs:
    @hookspec
    def pushcut_register_grippers(self, registry):
        """A hook a plugin declares for other plugins."""


class DeclaresGrippers:
    @hookimpl
    def pushcut_addhooks(self, pluginmanager):
        pluginmanager.add_hookspecs(GripperSpecs)


class ImplementsGrippers:
    calls: list[str] = []

    @hookimpl
    def pushcut_register_grippers(self, registry):
        self.calls.append(registry)


def test_a_plugin_adds_hookspecs_that_other_plugins_implement():
    manager = PluginManager(autoload=False)
    with pytest.raises(PluginError, match="unknown hook 'pushcut_register_grippers'"):
        manager.register(ImplementsGrippers(), "grippers")  # nobody declared it yet
    manager = PluginManager(autoload=False)
    manager.register(DeclaresGrippers(), "declares")
    manager.register(ImplementsGrippers(), "grippers")
    manager.pm.hook.pushcut_register_grippers(registry="r")
    assert ImplementsGrippers.calls == ["r"]


@dataclass
class Holder:
    gripper: PluginChoice = choice("success_detectors", "env_success")
    """A plugin's own field that picks a registered component."""


def test_a_plugins_own_choice_field_resolves_given_or_defaulted():
    assert build_dataclass(Holder, {}).gripper.type == "env_success"
    with pytest.raises(ConfigError, match="holder.gripper: expected a mapping with a 'type' key, got 3"):
        build_dataclass(Holder, {"gripper": 3}, "holder")
