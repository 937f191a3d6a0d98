"""Plugins use only the public API docs/plugins.md declares: every plugins/**/*.py is parsed and any
import of another pushcut module fails this test (ARCHITECTURE: plugins use contracts, hookspecs and
the declared faces, never a core module's internals)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PUBLIC = {
    "pushcut", "pushcut.contracts", "pushcut.envcontract", "pushcut.errors", "pushcut.registry", "pushcut.hookspecs",
    "pushcut.actions", "pushcut.testing", "pushcut.configio", "pushcut.serving", "pushcut.pluginmanager",
    "pushcut.build", "pushcut.gl", "pushcut.mjrender", "pushcut.webguard",
}
"""The public modules (docs/plugins.md, "The plugin API"); pushcut.plugins.* is each plugin's own."""


def pushcut_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "pushcut" else [f"pushcut.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name == "pushcut" or name.startswith("pushcut.")]


def allowed(name: str) -> bool:
    return name.startswith("pushcut.plugins.") or name in PUBLIC or (
        name.startswith("pushcut.") and name.count(".") == 1 and name.split(".")[1] in {"hookimpl", "__version__"})


def test_plugins_import_only_the_declared_plugin_api():
    offenders = []
    for path in sorted((REPO / "plugins").rglob("*.py")):
        for line, name in pushcut_imports(path):
            if not allowed(name):
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not offenders, "plugins reach past the plugin API (docs/plugins.md):\n" + "\n".join(offenders)


def test_the_checker_catches_an_internal_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from pushcut.envpool.host import EnvHost\n\ndef f():\n    import pushcut.envpool.wire\n")
    assert [n for _, n in pushcut_imports(bad) if not allowed(n)] == ["pushcut.envpool.host", "pushcut.envpool.wire"]


def test_docs_declare_exactly_these_modules():
    text = (REPO / "docs" / "plugins.md").read_text()
    section = text.split("## The plugin API", 1)[1].split("\n## ", 1)[0]
    declared = set(re.findall(r"`(pushcut(?:\.[a-z_]+)?)`", section))
    assert declared == PUBLIC, f"docs/plugins.md declares {sorted(declared ^ PUBLIC)} differently"
