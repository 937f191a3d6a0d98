"""The public face for reading config files, for plugins and scripts (docs/plugins.md lists it).

A plugin that reads a YAML config or a section of one (a robot config, a seed list, a command's
own options) uses these instead of reaching into :mod:`pushcut.config`, whose internals may move.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pushcut.config import (
    PluginChoice,
    TransportConfig,
    apply_overrides,
    build_dataclass,
    choice,
    load_config,
    read_yaml,
    resolve,
    resolve_choice,
    to_dict,
)
from pushcut.errors import ConfigError

__all__ = ["PluginChoice", "TransportConfig", "apply_overrides", "build_dataclass", "choice", "load_config", "load_section", "read_yaml",
           "resolve", "resolve_choice", "to_dict"]


def load_section(path: str | Path, section: str, overrides: Sequence[str] = (), type_: str | None = None,
                 config_class: type | None = None, hint: str = "", manager: Any = None) -> Any:
    """The ``section`` (e.g. ``env``) of the YAML file at ``path`` with ``section.key=value``
    ``overrides`` applied; a bare string means ``{type: string}``. With ``type_``, the section's
    ``type`` must be it (and is dropped); with ``config_class``, the rest is validated into it.
    Anything else is one :class:`ConfigError` naming the file and ``hint`` (what a right one holds).
    Registered choices inside it resolve through ``manager`` (default: the process-wide one)."""
    bad = [o for o in overrides if not o.startswith(f"{section}.")]
    if bad:
        raise ConfigError(f"only {section}.key=value overrides apply here, got {bad}")
    data = apply_overrides(read_yaml(path) or {}, list(overrides)).get(section)
    if isinstance(data, str):
        data = {"type": data}
    if not isinstance(data, dict) or (type_ is not None and data.get("type") != type_) or (
            type_ is None and not isinstance(data.get("type"), str)):
        want = f"type: {type_}" if type_ else "a type"
        raise ConfigError(f"{path} needs a {section}: section with {want}" + (f" ({hint})" if hint else ""))
    data = dict(data)
    if type_ is not None:
        data.pop("type")
    return build_dataclass(config_class, data, section, manager) if config_class is not None else data
