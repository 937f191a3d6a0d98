"""Typed registries that plugins add their policies, envs and success detectors to.

A plugin's registration hook receives a registry and calls
``registry.add(name, ConfigClass, factory)``; ``factory(config)`` builds the
component from an instance of ``ConfigClass`` (a dataclass).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pushcut.errors import PluginError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component."""

    name: str
    config_class: type
    factory: Callable[[Any], T]
    plugin: str
    """Name of the plugin that registered it."""
    requires: str = ""
    """A module the *built* component needs (an env's simulator), not needed to register or validate it:
    the trainer registers an env whose simulator lives in another venv and checks this only where
    the env is built (see :meth:`missing`)."""

    def missing(self) -> str:
        """``requires`` when this Python cannot import it, else ``""``."""
        import importlib.util

        if not self.requires:
            return ""
        try:
            return "" if importlib.util.find_spec(self.requires) is not None else self.requires
        except (ImportError, ValueError):
            return self.requires

    def build(self, config: Any) -> T:
        if not isinstance(config, self.config_class):
            raise TypeError(f"{self.name}: expected a {self.config_class.__name__}, got {type(config).__name__}")
        return self.factory(config)


class Registry(Generic[T]):
    """Name → (config class, factory) for one kind of component ("policy", "env", …)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self.current_plugin = "<unknown>"
        """Set by the plugin manager while a plugin's registration hook runs."""
        self.unavailable: dict[str, str] = {}
        """Plugin name → why it is unavailable and how to fix it (filled by the plugin manager)."""

    def add(self, name: str, config_class: type, factory: Callable[[Any], T], requires: str = "") -> None:
        """Register ``factory`` under ``name``; ``config_class`` is the dataclass
        its config is validated against. A name already taken is an error. ``requires``: a module
        the built component needs (an env's simulator), checked only where it is built."""
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(f"plugin {self.current_plugin!r}: invalid {self.kind} name {name!r} (use letters, digits, _ and -)")
        if not dataclasses.is_dataclass(config_class):
            raise PluginError(
                f"plugin {self.current_plugin!r}: config class for {self.kind} {name!r} must be a dataclass, "
                f"got {config_class!r}"
            )
        if name in self._entries:
            other = self._entries[name].plugin
            if other == self.current_plugin:
                raise PluginError(f"plugin {other!r} registers {self.kind} {name!r} twice: register each name once")
            raise PluginError(
                f"{self.kind} name {name!r} is registered by two plugins, {other!r} and {self.current_plugin!r}: "
                f"uninstall one of them or rename its {self.kind}"
            )
        self._entries[name] = Entry(name, config_class, factory, self.current_plugin, requires)

    def get(self, name: str) -> Entry[T]:
        """The entry for ``name``; an unknown name is an error listing the names that exist."""
        try:
            return self._entries[name]
        except KeyError:
            pass
        known = sorted(self._entries)
        msg = f"unknown {self.kind} {name!r}; registered: {', '.join(known) or '(none)'}"
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            msg += f"; did you mean {close[0]!r}?"
        hints = [f"{plugin} ({why})" for plugin, why in self.unavailable.items()]
        if name in self.unavailable:
            msg = f"{self.kind} {name!r} is unavailable: {self.unavailable[name]}"
        elif hints:
            msg += f"; unavailable plugins (one may provide it): {'; '.join(hints)}"
        raise PluginError(msg)

    def remove_plugin(self, plugin: str) -> None:
        """Forget every entry ``plugin`` registered."""
        self._entries = {n: e for n, e in self._entries.items() if e.plugin != plugin}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)
