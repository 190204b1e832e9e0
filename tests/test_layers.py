"""The package's import layers: Edge < Store < Intake < Routing < Handlers < Service.

A module may import its own layer and those below, never one above, and no two modules
import each other. Every import counts: at the top, inside functions and under
TYPE_CHECKING alike.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "chatdaemon"

LAYERS = {
    "Edge": {"telegram", "ratelimit", "sender", "textsplit", "errors", "retry", "transfer",
             "arguments", "leanhttp", "memory"},
    "Store": {"store", "dbfile", "inbox", "conversations", "schedules", "handoffs", "privacy",
              "callbacks"},
    "Intake": {"poller"},
    "Routing": {"delegator", "transaction"},
    "Handlers": {"chathandler", "pipeline", "tree", "templates", "httpcall", "definitions",
                 "yamlfile", "bots", "patterns", "sandbox", "handoff", "media"},
    "Service": {"app", "daemon", "hookserver", "cli", "terminal", "local", "logs", "config",
                "shipped", "signals", "status", "__init__", "__main__", "testing"},
}
ORDER = list(LAYERS)

# Breaks being mended elsewhere; each entry is (importer, imported). Empty this list as they go.
KNOWN_UPWARD: set[tuple[str, str]] = set()
KNOWN_MUTUAL: set[frozenset[str]] = set()


def module_names() -> set[str]:
    return {path.stem for path in PACKAGE.glob("*.py")}


def layer_of(module: str) -> int:
    for index, name in enumerate(ORDER):
        if module in LAYERS[name]:
            return index
    raise AssertionError(f"chatdaemon/{module}.py belongs to no layer: add it to LAYERS")


def imports_of(module: str) -> set[str]:
    """The package modules `module` imports, wherever the import statement stands."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("chatdaemon."):
                found.add(node.module.split(".")[1])
            elif node.module == "chatdaemon":
                found.update(alias.name for alias in node.names if alias.name in module_names())
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("chatdaemon."):
                    found.add(alias.name.split(".")[1])
    return (found & module_names()) - {module}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {module: imports_of(module) for module in module_names()}


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_no_module_imports_a_layer_above_its_own(graph):
    upward = {(module, target) for module, targets in graph.items() for target in targets
              if layer_of(target) > layer_of(module)}
    assert upward - KNOWN_UPWARD == set(), "upward imports: " + ", ".join(
        f"{a} ({ORDER[layer_of(a)]}) → {b} ({ORDER[layer_of(b)]})" for a, b in sorted(upward))


def test_no_two_modules_import_each_other(graph):
    mutual = {frozenset({a, b}) for a, targets in graph.items() for b in targets if a in graph[b]}
    assert mutual - KNOWN_MUTUAL == set(), f"modules importing each other: {sorted(map(sorted, mutual))}"


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def test_no_import_circle_of_any_length(graph):
    """Longer circles too (bots → pipeline → chathandler → delegator → bots was one); a circle
    is excused only while it runs through one of the known pairs."""
    reach = {module: reachable(graph, module) for module in graph}
    for module in sorted(graph):
        circle = {other for other in reach[module] if module in reach[other]}
        if not circle:
            continue
        excused = any(pair <= circle for pair in KNOWN_MUTUAL)
        assert excused, f"import circle: {' , '.join(sorted(circle))}"


def test_the_known_exceptions_are_still_real(graph):
    """An exception that was mended must leave the list, so it cannot hide a new break."""
    for a, b in KNOWN_UPWARD:
        assert b in graph[a], f"{a} no longer imports {b}: remove it from KNOWN_UPWARD"
    for pair in KNOWN_MUTUAL:
        a, b = sorted(pair)
        assert b in graph[a] and a in graph[b], f"{a} ↔ {b} is mended: remove it from KNOWN_MUTUAL"


def test_the_handler_layer_knows_no_thread():
    """A handler talks to its ChatContext, never to the delegator (even for type hints)."""
    assert "delegator" not in imports_of("chathandler")
    assert not {"delegator", "transaction"} & imports_of("pipeline")
    assert not {"delegator", "transaction"} & imports_of("bots")
