"""The plugin reference (docs/plugins.md) must document every hook spec, with
the spec's own signature (as datasette does for its plugin hooks)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from pushcut import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs"
PLUGINS_MD = DOCS / "plugins.md"


def hook_specs() -> dict[str, object]:
    """Every function in pushcut.hookspecs named pushcut_* that carries pluggy's spec marker."""
    marker = f"{hookspecs.hookspec.project_name}_spec"
    return {
        name: func
        for name, func in vars(hookspecs).items()
        if name.startswith("pushcut_") and callable(func) and hasattr(func, marker)
    }


def lines_and_fences(text: str):
    """Each line of a markdown text with whether it lies in a code fence (fence lines count as in)."""
    in_fence = False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            in_fence = not in_fence
            yield line, True
        else:
            yield line, in_fence


def sections(text: str) -> dict[str, str]:
    """``## heading`` → its text, up to the next ``#``/``##`` heading outside a code fence."""
    result: dict[str, str] = {}
    current: list[str] | None = None
    for line, fenced in lines_and_fences(text):
        if not fenced and re.match(r"#{1,2} ", line):
            current = result.setdefault(line[3:].strip(), []) if line.startswith("## ") else None
            continue
        if current is not None:
            current.append(line)
    return {heading: "".join(lines) for heading, lines in result.items()}


def documented_signature(name: str, section: str) -> ast.FunctionDef:
    """The ``def <name>(...)`` in the first python code block of a hook's section."""
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert match, f"docs/plugins.md: section '## {name}' has no ```python block with the signature"
    tree = ast.parse(match.group(1))
    defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]
    assert defs, f"docs/plugins.md: the first code block of '## {name}' does not define {name}(...)"
    return defs[0]


def _norm(annotation: str) -> str:
    return ast.unparse(ast.parse(annotation, mode="eval"))


@pytest.fixture(scope="module")
def doc_sections() -> dict[str, str]:
    return sections(PLUGINS_MD.read_text(encoding="utf-8"))


def test_hook_specs_are_found():
    # Guards the tests below against passing vacuously if the marker lookup breaks.
    assert {"pushcut_register_policies", "pushcut_register_envs", "pushcut_register_success_detectors"} <= set(
        hook_specs()
    )


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_every_hook_has_a_section(name, doc_sections):
    assert name in doc_sections, (
        f"hook {name} is not documented: add a '## {name}' section to docs/plugins.md "
        "with its signature, when it is called, and an example"
    )


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_documented_signature_matches_spec(name, doc_sections):
    if name not in doc_sections:
        pytest.fail(f"hook {name} has no '## {name}' section in docs/plugins.md")
    documented = documented_signature(name, doc_sections[name])
    spec = inspect.signature(hook_specs()[name])
    doc_params = [a.arg for a in documented.args.args]
    assert doc_params == list(spec.parameters), (
        f"docs/plugins.md documents {name}({', '.join(doc_params)}), "
        f"but the spec is {name}({', '.join(spec.parameters)})"
    )
    for arg in documented.args.args:
        want = spec.parameters[arg.arg].annotation
        if arg.annotation is not None and isinstance(want, str):
            assert _norm(ast.unparse(arg.annotation)) == _norm(want), (
                f"docs/plugins.md: {name} parameter {arg.arg!r} is annotated "
                f"{ast.unparse(arg.annotation)}, the spec says {want}"
            )


def test_no_section_for_a_hook_that_does_not_exist(doc_sections):
    stale = [s for s in doc_sections if s.startswith("pushcut_") and s not in hook_specs()]
    assert not stale, f"docs/plugins.md documents hooks that are not in pushcut.hookspecs: {stale}"


def test_python_examples_in_plugin_docs_parse():
    for doc in (PLUGINS_MD, DOCS / "writing-a-plugin.md"):
        text = doc.read_text(encoding="utf-8")
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)):
            try:
                ast.parse(block)
            except SyntaxError as exc:
                pytest.fail(f"{doc.name}: python block #{i + 1} does not parse: {exc}\n{block}")


# ------------------------------------------------------------------ links between the docs

REPO = DOCS.parent
LINKED_DOCS = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file: lower case, punctuation
    dropped, spaces turned into hyphens, ``-1``, ``-2`` … on repeats."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line, fenced in lines_and_fences(text):
        match = None if fenced else re.match(r"#{1,6} (.*)", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_github_anchors_follow_githubs_rules():
    text = "# A title\n## Ordered bins: `policy.bin_smoothing`\n```\n# not a heading\n```\n## Where GRPO's signal\n## Where GRPO's signal\n"
    assert github_anchors(text) == {"a-title", "ordered-bins-policybin_smoothing", "where-grpos-signal",
                                    "where-grpos-signal-1"}


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_their_anchors_resolve(doc):
    broken = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        if not linked.exists():
            broken.append(f"{target}: {path} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in github_anchors(linked.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    assert not broken, f"{doc.name} has broken links:\n" + "\n".join(broken)
