"""What crosses to an env worker: an env's registered name and plain options.

An :class:`EnvSpec` is data, never a pickle: the worker resolves ``name``
through its *own* plugin registry and builds the plugin's config dataclass from
``options`` (the YAML section, as plain values). ``plugins`` names the plugins
to load there as import references (``module`` or ``module:attr``, what an
entry point holds), so a worker imports the one plugin that registers the env,
not every policy plugin, and an env registered in-process (tests, notebooks) is
found too. A socket server ignores ``plugins`` and ``factory``: it serves what
its own config names.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pushcut.envcontract import Env
from pushcut.errors import EnvError
from pushcut.pluginmanager import load_ref


@dataclass(frozen=True)
class EnvSpec:
    """An env to build in a worker: registered ``name`` + plain ``options``."""

    name: str
    """Registered env name (``tabletop``), or the factory's reference when ``factory`` is set."""
    options: Any = field(default_factory=dict)
    """The env's options as plain data (the ``env:`` section without ``type``)."""
    plugins: tuple[str, ...] = ()
    """Import references of the plugins the worker loads to find ``name``; empty: every installed plugin."""
    factory: str = ""
    """``module:qualname`` of a factory to call instead of a registry lookup (``EnvPool(factory, config)``)."""
    config_class: str = ""
    """``module:qualname`` of the factory's config dataclass; empty: ``options`` is passed as is."""
    local: tuple[Callable[[Any], Env], Any] | None = field(default=None, compare=False, repr=False)
    """The live (factory, config) for the inline transport, which needs no references."""

    @classmethod
    def from_factory(cls, factory: Callable[[Any], Env], config: Any) -> EnvSpec:
        """The spec of ``factory(config)``: a top-level class or function and a dataclass (or plain) config."""
        from pushcut.configio import to_dict

        ref = import_ref(factory)
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            return cls(ref or repr(factory), to_dict(config), factory=ref, config_class=import_ref(type(config)),
                       local=(factory, config))
        return cls(ref or repr(factory), config, factory=ref, local=(factory, config))

    @classmethod
    def from_registry(cls, name: str, options: Any, manager: Any) -> EnvSpec:
        """The spec of registered env ``name`` with ``options`` (its config dataclass), naming the
        plugin that registered it so a worker loads only that one."""
        from pushcut.configio import to_dict

        entry = manager.envs.get(name)
        info = manager.infos.get(entry.plugin)
        if info is not None and info.source != "<in-process>":
            plugins: tuple[str, ...] = (info.source,)
        else:
            ref = import_ref(manager.pm.get_plugin(entry.plugin))
            plugins = (ref,) if ref else ()
        return cls(name, to_dict(options) if options is not None else {}, plugins,
                   local=(entry.factory, options))

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "options": self.options, "plugins": list(self.plugins), "factory": self.factory,
                "config_class": self.config_class}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> EnvSpec:
        return cls(str(data["name"]), data.get("options", {}), tuple(data.get("plugins", ())),
                   str(data.get("factory", "")), str(data.get("config_class", "")))


def import_ref(obj: Any) -> str:
    """``module:qualname`` of a top-level class or function (of an instance: its class); ``module``
    of a module; empty when ``obj`` cannot be imported back by name (a lambda, a local class, __main__)."""
    if isinstance(obj, type(importlib)):
        return obj.__name__
    target = obj if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    module, qualname = getattr(target, "__module__", ""), getattr(target, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return ""
    return f"{module}:{qualname}"




def resolve_factory(spec: EnvSpec, plugins: Sequence[str] | None = None) -> tuple[Callable[[Any], Env], Any]:
    """``(factory, config)`` for ``spec`` in this process, through this process's own registry.
    Raises whatever the lookup or the config validation raises (a PushcutError names the fix)."""
    from pushcut.configio import build_dataclass

    if spec.factory:
        factory = load_ref(spec.factory)
        if spec.config_class:
            return factory, build_dataclass(load_ref(spec.config_class), spec.options, "env")
        return factory, spec.options
    from pushcut.pluginmanager import PluginManager, get_plugin_manager

    refs = spec.plugins if plugins is None else tuple(plugins)
    manager = PluginManager.from_refs(refs) if refs else get_plugin_manager()
    entry = manager.envs.get(spec.name)
    options = spec.options if isinstance(spec.options, dict) else {}
    return entry.factory, build_dataclass(entry.config_class, options, "env")


def build_envs(spec: EnvSpec, n: int) -> list[Env]:
    """``n`` instances of the env ``spec`` names, or one :class:`EnvError` saying why not."""
    try:
        factory, config = resolve_factory(spec)
    except EnvError:
        raise
    except Exception as exc:
        raise EnvError(f"creating the env failed: {type(exc).__name__}: {exc}") from None
    envs: list[Env] = []
    try:
        for _ in range(n):
            envs.append(factory(config))
    except Exception as exc:
        for env in envs:
            try:
                env.close()
            except Exception:
                pass
        raise EnvError(f"creating the env failed: {type(exc).__name__}: {exc}") from None
    return envs
