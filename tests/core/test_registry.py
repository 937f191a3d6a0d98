from dataclasses import dataclass

import pytest

from pushcut.errors import PluginError
from pushcut.registry import Registry


@dataclass
class Cfg:
    x: int = 1


class Thing:
    def __init__(self, config: Cfg) -> None:
        self.config = config


def test_add_get_build():
    reg: Registry[Thing] = Registry("env")
    reg.current_plugin = "mine"
    reg.add("thing", Cfg, Thing)
    entry = reg.get("thing")
    assert entry.plugin == "mine" and entry.config_class is Cfg
    assert entry.build(Cfg(x=3)).config.x == 3
    with pytest.raises(TypeError, match="expected a Cfg"):
        entry.build({"x": 3})


def test_duplicate_names_both_plugins():
    reg: Registry[Thing] = Registry("env")
    reg.current_plugin = "first_plugin"
    reg.add("thing", Cfg, Thing)
    reg.current_plugin = "second_plugin"
    with pytest.raises(PluginError) as info:
        reg.add("thing", Cfg, Thing)
    msg = str(info.value)
    assert "first_plugin" in msg and "second_plugin" in msg and "'thing'" in msg


def test_unknown_name_lists_known_and_closest():
    reg: Registry[Thing] = Registry("policy")
    reg.add("tiny", Cfg, Thing)
    reg.add("openvla_oft", Cfg, Thing)
    with pytest.raises(PluginError) as info:
        reg.get("openvla-oft")
    msg = str(info.value)
    assert "openvla_oft, tiny" in msg and "did you mean 'openvla_oft'" in msg


def test_unavailable_plugin_named_in_lookup():
    reg: Registry[Thing] = Registry("env")
    reg.unavailable["libero"] = 'needs \'libero\': pip install "pushcut[libero]"'
    with pytest.raises(PluginError, match=r'env \'libero\' is unavailable: .*pip install "pushcut\[libero\]"'):
        reg.get("libero")


def test_config_class_must_be_dataclass():
    reg: Registry[Thing] = Registry("env")
    with pytest.raises(PluginError, match="must be a dataclass"):
        reg.add("thing", dict, Thing)


def test_remove_plugin():
    reg: Registry[Thing] = Registry("env")
    reg.current_plugin = "a"
    reg.add("x", Cfg, Thing)
    reg.current_plugin = "b"
    reg.add("y", Cfg, Thing)
    reg.remove_plugin("a")
    assert reg.names() == ["y"]
