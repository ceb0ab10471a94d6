"""The shape of runtime/: no import loops, nothing imports the layers above it, no torch."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

RUNTIME = ROOT / "runtime"
# The entry layer: what a user runs (the CLI, the DICOM node, the folder watcher, the parity tool)
# and the factory they share. Nothing below imports it.
TOP = {"runtime.cli", "runtime.pipeline", "runtime.parity", "runtime.watch", "runtime.node.server"}
# The two paths: neither imports the other.
PATHS = {"runtime.cpu": "runtime.gpu", "runtime.gpu.pipeline": "runtime.cpu"}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every import in every runtime module, including those inside functions."""
    graph = {}
    for path in RUNTIME.rglob("*.py"):
        name = _module(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                deps.add(target)
                deps.update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = deps
    modules = set(graph)
    return {m: {d for d in deps if d in modules and d != m} for m, deps in graph.items()}


def test_runtime_has_no_import_loop():
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(m, trail):
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, f"import loop: {' -> '.join(trail + [m, d])}"
            if d not in state:
                visit(d, trail + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_nothing_imports_upward():
    graph = import_graph()
    for m, deps in graph.items():
        if m in TOP:
            continue
        assert not deps & TOP, f"{m} imports the entry layer {deps & TOP}"
    for m, other in PATHS.items():
        assert not any(d == other or d.startswith(other + ".") for d in graph[m]), f"{m} imports {other}"


def test_runtime_never_imports_torch():
    for path in RUNTIME.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "torch" not in names, path
