"""The house reads top-down (issue 12): no import cycles, and a module past ~500 lines says why in its docstring.

Every import counts, also those inside functions and under ``TYPE_CHECKING``: a function-local import hides a cycle
from the interpreter, not from the reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The folders and the names they import as (setup.py's table).
PACKAGES = {"agent": "facelite", "converter": "facelite.converter", "deploy": "facelite.deploy"}
LONG = 500  # lines
# A long module's docstring carries a paragraph starting with this, saying why it is one module.
REASON = "Size:"


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))
            out[name] = path
    return out


def imported(tree: ast.AST, known: set[str]) -> set[str]:
    """Modules of ``known`` that ``tree`` imports anywhere (``from a.b import c`` counts a.b.c when it is a module)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out & known


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_cycles_and_only_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    assert sorted(cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}})) == [["a", "b"], ["c", "d"]]


def test_no_import_cycles() -> None:
    mods = modules()
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        # a package's __init__ importing its own submodules is the package, not a cycle
        graph[name] = {m for m in imported(ast.parse(path.read_text()), known) if m != name}
    found = cycles(graph)
    assert found == [], "import cycles (every import counts, local and TYPE_CHECKING too): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_a_long_module_says_why_it_is_one_module() -> None:
    offenders = []
    for path in modules().values():
        text = path.read_text()
        if len(text.splitlines()) > LONG and REASON not in (ast.get_docstring(ast.parse(text)) or ""):
            offenders.append(f"{path.relative_to(REPO)} ({len(text.splitlines())} lines)")
    assert offenders == [], f"split these, or say why in a '{REASON}' paragraph of the docstring: {offenders}"


# Layers, lowest first: a module imports its own layer and the ones below (the package's top-level modules, the
# CLIs and the API, sit above all of them; agent/errors.py and agent/logsetup.py below all).
LAYERS = ("model", "vision", "recognition", "service", "tools")
# Known upward imports, each with its reason; anything else fails.
UPWARD = {
    # The recurring-stranger store decides and records what it announced in the same transaction as the visit, so it
    # builds its retained unknown/<k> messages itself, with the MQTT contract's topics and time format.
    ("facelite.recognition.strangers", "facelite.service.events"),
    ("facelite.recognition.strangers", "facelite.service.messages"),
    ("facelite.recognition.unknowns", "facelite.service.events"),
}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 and parts[0] == "facelite" and parts[1] in LAYERS else None


def test_agent_layers_import_only_downwards() -> None:
    mods = modules()
    upward = set()
    for name, path in mods.items():
        mine = layer_of(name)
        if mine is None:
            continue
        for target in imported(ast.parse(path.read_text()), set(mods)):
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                upward.add((name, ".".join(target.split(".")[:3])))
    assert upward - UPWARD == set(), f"imports from a higher layer: {sorted(upward - UPWARD)}"
    assert UPWARD - upward == set(), f"listed as upward but gone (remove from UPWARD): {sorted(UPWARD - upward)}"
