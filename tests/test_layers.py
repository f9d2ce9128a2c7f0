"""The layers of ``skyward``: no import cycles, and the client never imports the node side.

Imports made only for type checking (``if TYPE_CHECKING:``) do not count: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "skyward-core" / "src" / "skyward"
SHARED = {"skyward.messages", "skyward.wire", "skyward.handshake", "skyward.exit_status"}


def _runtime_imports(path: Path) -> set[str]:
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module == "skyward":
                found.update(f"skyward.{alias.name}" for alias in node.names)
            elif node.module and node.module.startswith("skyward."):
                found.add(node.module)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names if a.name.startswith("skyward."))

    Visitor().visit(ast.parse(path.read_text()))
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("skyward", *path.relative_to(PACKAGE).with_suffix("").parts))
        name = name.removesuffix(".__init__")
        graph[name] = {m for m in _runtime_imports(path) if m != name}
    return graph


def _cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return [*path, nxt]
            if nxt not in seen and nxt in graph and nxt != "skyward":
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles = [c for m in graph if m != "skyward" and (c := _cycle_from(graph, m))]
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_the_client_does_not_import_the_node_side() -> None:
    graph = _graph()
    node_side = {m for m in graph if m == "skyward.agent" or m.startswith("skyward.agent.")}
    offending = [
        (module, imported)
        for module, imports in graph.items()
        if module not in node_side
        for imported in imports
        if imported in node_side
    ]
    assert not offending
    for module in node_side:  # and the node side uses only shared client modules it needs
        assert "skyward.pool" not in graph[module], module
        assert "skyward.node" not in graph[module], module
    assert set(graph) >= SHARED
