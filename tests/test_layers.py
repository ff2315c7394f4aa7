"""The folder tree is the architecture: every import points down the layers of docs/architecture.md, with no
circles, no module grows past a reading, and settings come only from `zlab.core.config`.

These read the source (ast), so they fail the moment a change adds an upward arrow, wherever the import sits
(module level, inside a function, or under TYPE_CHECKING: a type is a dependency too).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "zlab"

# Lowest first. Packages on one line are siblings: each may use the lines above it, never each other.
LAYERS: list[tuple[str, ...]] = [
    ("zlab.errors",),
    ("zlab.core",),
    ("zlab.api", "zlab.server", "zlab.testing"),
    ("zlab.runs", "zlab.sheet"),
    ("zlab.strength", "zlab.metrics", "zlab.export"),
    ("zlab.client",),
    ("zlab.views", "zlab.report"),
    ("zlab.cli",),
]
# Upward arrows kept on purpose, each imported only when called, with the reason. Keep this list short.
BY_DESIGN = {
    ("zlab.runs.result", "zlab.export.mlflow"): "RunResult.to_mlflow(): the export of a finished run, from its result",
}
MAX_LINES = 520  # a module should be readable in one sitting (STYLE.md: ≲ 500 lines)
SETTINGS_MODULE = "zlab.core.config"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _type_only(tree: ast.Module) -> set[ast.AST]:
    """Import nodes under `if TYPE_CHECKING:` (a name for annotations, never run)."""
    blocks = [n for n in ast.walk(tree) if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING"]
    return {node for block in blocks for stmt in block.body for node in ast.walk(stmt)}


def _imports(name: str, *, types: bool = True) -> set[str]:
    """The zlab modules `name` imports, resolved to module names (`from zlab.api import jobs` → zlab.api.jobs);
    with `types=False`, leaving out imports made only for annotations."""
    tree = ast.parse(MODULES[name].read_text())
    skip = set() if types else _type_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("zlab"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zlab"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return {m for m in found if m != name}


def _layer_of(module: str) -> tuple[int, str] | None:
    for rank, siblings in enumerate(LAYERS):
        for package in siblings:
            if module == package or module.startswith(package + "."):
                return rank, package
    return None


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if m != "zlab" and _layer_of(m) is None]
    assert not unplaced, f"add these to LAYERS (and docs/architecture.md): {unplaced}"


def test_imports_point_down_the_layers():
    wrong = []
    for name in MODULES:
        here = _layer_of(name)
        if here is None:  # zlab/__init__.py names everything public, lazily
            continue
        for target in _imports(name):
            there = _layer_of(target)
            if there is None or there[1] == here[1]:
                continue
            if there[0] >= here[0] and (name, target) not in BY_DESIGN:
                wrong.append(f"{name} → {target}")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(sorted(wrong))


def test_every_exception_is_still_needed():
    stale = [f"{a} → {b}" for a, b in BY_DESIGN if a not in MODULES or b not in _imports(a)]
    assert not stale, f"remove these from BY_DESIGN: {stale}"


def test_no_import_circles():
    """Run-time circles, that is: a name imported for an annotation only (under TYPE_CHECKING) runs nothing."""
    graph = {name: _imports(name, types=False) & MODULES.keys() for name in MODULES if name != "zlab"}
    for name in graph:  # `zlab.x` importing its own package's __init__ is how a package re-exports, not a circle
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target] if target in path else [node, target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(" → ".join(c) for c in circles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_readable(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it by concept (STYLE.md)"


def test_only_config_reads_the_environment():
    readers = []
    for name, path in MODULES.items():
        if name == SETTINGS_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            reads = isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
            if reads and isinstance(node.value, ast.Name) and node.value.id == "os":
                readers.append(f"{name}:{node.lineno}")
    assert not readers, f"read settings through zlab.core.config, not os.environ: {readers}"


def test_the_architecture_doc_names_every_module():
    """docs/architecture.md is the map a newcomer reads first: a module it does not name is a module they miss."""
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    unnamed = [
        name
        for name, path in MODULES.items()
        if path.stem not in ("__init__", "__main__") and not re.search(rf"\b{re.escape(path.stem)}\b", doc)
    ]
    assert not unnamed, f"describe these in docs/architecture.md: {unnamed}"
