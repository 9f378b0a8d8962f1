"""The package's import graph (from the ``import`` statements, read with ``ast``): no cycle,
and the layers of design.md (cli -> tasks -> engine / models -> hub / audio) never import
upward."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "audiotool"

#: a module of the first group never imports one of the second (at module level or lazily)
FORBIDDEN = [
    (
        ("audiotool.tasks", "audiotool.engine", "audiotool.models", "audiotool.hub"),
        ("audiotool.cli",),
    ),
    (("audiotool.engine", "audiotool.models"), ("audiotool.tasks", "audiotool.training")),
    (("audiotool.models",), ("audiotool.hub",)),
]


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def import_graph(*, lazy: bool) -> dict[str, set[str]]:
    """Module -> the package modules it imports (``lazy``: also imports inside functions;
    ``if TYPE_CHECKING:`` blocks never count)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        found: set[str] = set()

        def visit(node: ast.AST, in_function: bool, found: set[str] = found) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                if lazy or not nested:
                    if isinstance(child, ast.ImportFrom) and (child.module or "").startswith(
                        "audiotool"
                    ):
                        found.add(str(child.module))
                        found.update(f"{child.module}.{a.name}" for a in child.names)
                    elif isinstance(child, ast.Import):
                        found.update(a.name for a in child.names)
                visit(child, nested)

        visit(ast.parse(path.read_text()), False)
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                dfs(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node, [])
    return found


@pytest.mark.parametrize("lazy", [False, True])
def test_imports_have_no_cycle(lazy: bool) -> None:
    """Not at module level, and not through imports deferred into functions either (those are
    for start-up time, never to hide a cycle)."""
    graph = import_graph(lazy=lazy)
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the parse found the package
    assert cycles(graph) == []


def test_layers_never_import_upward() -> None:
    graph = import_graph(lazy=True)
    bad = [
        f"{mod} -> {dep}"
        for low, high in FORBIDDEN
        for mod, deps in graph.items()
        if mod.startswith(low)
        for dep in deps
        if dep.startswith(high)
    ]
    assert bad == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
