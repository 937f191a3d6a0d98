"""Reading configs: coercing plain data into the typed sections, YAML files, dotted overrides, and
resolving every field that picks a registered component. The public face for plugins and scripts
too (docs/plugins.md lists it): a plugin that reads a YAML config or a section of one (a robot
config, a seed list, a command's own options) uses these.

Resolution order: dataclass defaults < YAML file < ``a.b.c=value`` overrides. The resolved config
is saved as ``<run_dir>/config.yaml`` (:meth:`pushcut.rundir.RunDir.save_config`) and loads back
to the same object, so a run can be reproduced from its directory alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pushcut.config import PluginChoice, RunConfig, TransportConfig, choice
from pushcut.errors import ConfigError, PushcutError

__all__ = ["PluginChoice", "TransportConfig", "apply_overrides", "build_dataclass", "check_device", "choice",
           "coerce", "dump_config", "field_docs", "load_config", "load_section", "read_yaml", "resolve",
           "resolve_choice", "to_dict"]


# --------------------------------------------------------------------------- building


def check_device(device: str, key: str) -> None:
    """A ConfigError unless ``device`` names a torch device usable here (``key`` names the field)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{key}={device!r} is not a torch device; use 'cpu' or 'cuda'") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={device!r} but CUDA is not available here; use device 'cpu'")


def field_docs(cls: type) -> dict[str, str]:
    """Field name → its one-line attribute docstring (read from the class source)."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = nxt.value.value.strip().splitlines()[0]
    return docs


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


_TRANSPORT_KEYS = {
    "addresses": "socket", "connect_timeout_s": "socket", "connect_attempts": "socket", "token_file": "socket",
    "tls_ca": "socket", "max_frame_mb": "socket", "python": "process", "ray_num_cpus": "ray", "ray_num_gpus": "ray",
    "ray_resources": "ray", "ray_python": "ray", "ray_runtime_env": "ray",
}

MOVED_KEYS = {
    "policy.device": "train.device (one device setting places the policy for rollouts and learning)",
    **{f"rollout.{key}": f"rollout.transport.{key.removeprefix('ray_')} (with rollout.transport.type={transport}; "
                         f"in YAML rollout: {{transport: {{type: {transport}, {key.removeprefix('ray_')}: ...}}}})"
       for key, transport in _TRANSPORT_KEYS.items()},
}
"""Keys that moved: old dotted name → where the setting lives now (and why). A config class may list
its own as a ``moved_keys`` class attribute (field name → where it lives now)."""


def _unknown_key(path: str, key: str, valid: Sequence[str], cls: type | None = None) -> ConfigError:
    where = f"{path}.{key}" if path else key
    moved = MOVED_KEYS.get(where) or getattr(cls, "moved_keys", {}).get(key)
    if moved:
        return ConfigError(f"config key {where!r} has moved: set {moved}")
    msg = f"unknown config key {where!r}; valid keys{' in ' + repr(path) if path else ''}: {', '.join(sorted(valid))}"
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    if close:
        msg += f"; did you mean {close[0]!r}?"
    return ConfigError(msg)


def coerce(value: Any, tp: Any, path: str, manager: Any | None = None) -> Any:
    """Convert a YAML value to type ``tp`` or raise a ConfigError naming ``path`` (``manager``: the
    plugin manager that nested registered choices resolve through)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, path)
            except ConfigError:
                pass
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build_dataclass(tp, value, path, manager)
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r} ({type(value).__name__})")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r} ({type(value).__name__})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected int, got {value!r} ({type(value).__name__})")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected float, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r} ({type(value).__name__})")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{path}: expected a path string, got {value!r}")
        return Path(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{path}: unsupported config type {_type_name(tp)} (value {value!r})")


def build_dataclass(cls: type, data: Mapping[str, Any], path: str = "", manager: Any | None = None) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, type-checking every field.
    Unknown keys are errors naming the valid keys and the closest match. A field made with
    :func:`choice` resolves through ``manager``'s registry (default: the process-wide manager),
    given or not: its default is resolved too."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(path, str(key), list(fields), cls)
        where = f"{path}.{key}" if path else key
        if "registry" in fields[key].metadata:
            kwargs[key] = _resolve_field(value, fields[key], where, manager)
        else:
            kwargs[key] = coerce(value, hints[key], where, manager)
    for name, f in fields.items():
        if name in kwargs:
            continue
        if "registry" in f.metadata:
            kwargs[name] = _resolve_field(None, f, f"{path}.{name}" if path else name, manager)
        elif f.default_factory is not dataclasses.MISSING and _holds_choices(hints[name]):  # e.g. rollout.transport
            kwargs[name] = build_dataclass(hints[name], to_dict(f.default_factory()), f"{path}.{name}" if path else name,
                                           manager)
    missing = [
        name for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{path or cls.__name__}: missing required key(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except PushcutError as exc:
        if path and path not in str(exc):  # a plugin's own message: say which section it is about
            raise type(exc)(f"{path}: {exc}") from None
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path or cls.__name__}: {exc}") from None


def _holds_choices(tp: Any) -> bool:
    """True when dataclass ``tp`` has a :func:`choice` field, itself or in a section inside it."""
    if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
        return False
    hints = typing.get_type_hints(tp)
    return any("registry" in f.metadata or _holds_choices(hints[f.name]) for f in dataclasses.fields(tp))


def _resolve_field(value: Any, f: dataclasses.Field, path: str, manager: Any | None) -> PluginChoice:
    return resolve_choice(value, f.metadata["registry"], f.default_factory().type, path, manager)


def resolve_choice(value: Any, registry: str, default: str, path: str, manager: Any | None = None) -> PluginChoice:
    """The :class:`PluginChoice` that ``value`` (``NAME``, ``{type: NAME, ...its fields}``, a
    PluginChoice, or None for ``default``) picks from ``manager``'s ``registry`` (``"transports"``),
    its options validated by the chosen entry's config class."""
    if isinstance(value, PluginChoice):
        if value.options is not None:
            return value
        value = value.type
    if value is None:
        value = {}
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping with a 'type' key, got {value!r}")
    raw = dict(value)
    type_name = raw.pop("type", default)
    if not isinstance(type_name, str):
        raise ConfigError(f"{path}.type: expected a plugin name string, got {type_name!r}")
    if manager is None:
        from pushcut.pluginmanager import get_plugin_manager

        manager = get_plugin_manager()
    entry = manager.registry(registry).get(type_name)
    return PluginChoice(type_name, build_dataclass(entry.config_class, raw, path, manager))


def to_dict(obj: Any) -> Any:
    """Plain YAML-safe data for a config object (PluginChoice flattens to ``{type, **options}``)."""
    if isinstance(obj, PluginChoice):
        options = to_dict(obj.options) if obj.options is not None else {}
        return {"type": obj.type, **options}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------- files and overrides


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config YAML file into a dict, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        hint = " (did you mean a file under configs/?)" if not path.is_absolute() else ""
        raise ConfigError(f"config file {str(path)!r} does not exist{hint}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"malformed YAML in {str(path)!r}{where}: {problem}; fix the file's syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (values parsed as YAML)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. algo.clip_ratio_high=0.28")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if isinstance(child, str):  # a registered choice by name (transport: socket) is {type: socket}
                child = node[part] = {"type": child}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def resolve(data: Mapping[str, Any], manager: Any | None = None) -> RunConfig:
    """Build a :class:`RunConfig` from a raw dict, resolving every registered choice (``policy``,
    ``env``, ``success``, ``rollout.transport``, and those inside a plugin's own config) through the
    plugin registries and validating its options."""
    return build_dataclass(RunConfig, data, manager=manager)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), manager: Any | None = None) -> RunConfig:
    """Defaults < YAML file (optional) < overrides, resolved and validated."""
    data = read_yaml(path) if path is not None else {}
    return resolve(apply_overrides(data, overrides), manager)


def dump_config(config: RunConfig) -> str:
    """The fully resolved config as YAML text (what ``config.yaml`` in a run dir holds)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


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
