"""What each CLI subcommand does (argument parsing lives in cli.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pushcut.config import PLUGIN_SECTIONS, dump_config, field_docs, load_config
from pushcut.errors import ConfigError, PluginError
from pushcut.pluginmanager import PluginManager


def plugins(as_json: bool = False) -> int:
    """Print every plugin, what it registered, and why any is unavailable."""
    manager = PluginManager()
    error: PluginError | None = None
    try:
        manager.load_entry_points()
    except PluginError as exc:  # still show the table; the broken plugin is in it
        error = exc
    infos = sorted(manager.infos.values(), key=lambda i: (i.distribution != "pushcut", i.name))
    if as_json:
        print(json.dumps([vars(i) for i in infos], indent=2))
    else:
        for info in infos:
            origin = "built-in" if info.distribution == "pushcut" else info.distribution
            if info.status == "loaded":
                what = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.registered.items() if names)
                print(f"{info.name:<16} {origin:<22} {what or '(registered nothing)'}")
            else:
                print(f"{info.name:<16} {origin:<22} {info.status.upper()}: {info.reason}")
        if not manager.autoload:
            print("(third-party plugins not loaded: PUSHCUT_DISABLE_PLUGIN_AUTOLOAD is set)")
    if error is not None:
        print(f"pushcut: error: {error}", file=sys.stderr)
        return 2
    return 0


def _split_config_arg(config: str | None, overrides: Sequence[str]) -> tuple[str | None, list[str]]:
    """``pushcut config show a=1`` has no file: the first positional is an override."""
    if config is not None and "=" in config and not Path(config).exists():
        return None, [config, *overrides]
    return config, list(overrides)


def config_show(config: str | None, overrides: Sequence[str], with_docs: bool = False) -> int:
    """Print the fully resolved config (defaults < file < overrides)."""
    path, overrides = _split_config_arg(config, overrides)
    resolved = load_config(path, overrides)
    text = dump_config(resolved)
    if with_docs:
        text = _annotate(text, resolved)
    print(text, end="")
    return 0


def _annotate(text: str, resolved) -> str:
    """Append each field's one-line doc as a YAML comment."""
    docs: dict[str, dict[str, str]] = {}
    for f_name, doc in field_docs(type(resolved)).items():
        docs.setdefault("", {})[f_name] = doc
        value = getattr(resolved, f_name)
        cls = type(value.options) if f_name in PLUGIN_SECTIONS else type(value)
        docs[f_name] = field_docs(cls)
    out, section = [], ""
    for line in text.splitlines():
        key = line.strip().split(":")[0]
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            section = key
            doc = docs.get("", {}).get(key)
        else:
            doc = docs.get(section, {}).get(key)
        out.append(f"{line}  # {doc}" if doc and ":" in line else line)
    return "\n".join(out) + "\n"


def _not_yet(name: str) -> int:
    raise ConfigError(f"`pushcut {name}` is not available in this version yet")


def train(config: str, overrides: Sequence[str]) -> int:
    load_config(config, overrides)
    return _not_yet("train")


def sft(config: str, overrides: Sequence[str]) -> int:
    return _not_yet("sft")


def evaluate(target: str, overrides: Sequence[str]) -> int:
    return _not_yet("eval")


def demos(env: str, per_task: int, out: str | None, overrides: Sequence[str]) -> int:
    return _not_yet("demos")


def quickstart(overrides: Sequence[str]) -> int:
    return _not_yet("quickstart")
