"""The code's layering, read from the source: no import cycle inside mera/, flows/ and tasks/
(lazy imports inside functions count: they hide a cycle, they do not remove it), and no
module imports another one's private names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("mera", "flows", "tasks")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            parts = f.with_suffix("").relative_to(REPO).parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import statement in the file, relative ones resolved."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                module = ".".join(package[: len(package) - node.level + 1] + ([module] if module else []))
            out.append((module, [a.name for a in node.names]))
    return out


def graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports (a name imported from a package counts as
    its submodule when there is one)."""
    mods = modules()

    def ours(dotted: str) -> str | None:
        while dotted and dotted not in mods:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    edges = {}
    for name, path in mods.items():
        deps = set()
        for module, names in imports(name, path):
            deps |= {ours(d) for d in [module, *(f"{module}.{n}" for n in names)]}
        edges[name] = {d for d in deps if d and d != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_sees_a_cycle_hidden_in_a_function():
    # made-up modules: a imports b at the top, b imports a inside a function
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle_in_the_project():
    edges = graph()
    assert {"mera.models", "mera.deltas", "mera.report", "flows.cli"} <= set(edges)  # the graph was read
    assert "mera.tokens" in edges["mera.deltas"]  # imported inside a function: an edge too
    assert cycles(edges) == []


def test_no_module_imports_another_modules_private_names():
    mods = modules()
    private = [f"{name}: from {module} import {n}" for name, path in mods.items()
               for module, names in imports(name, path) if module.split(".")[0] in PACKAGES
               for n in names if n.startswith("_")]
    assert private == []


# a loop over a dimension of the sweep grid (`for x in cfg.fewshot.seeds`, `... in mt.methods`)
GRID_LOOP = re.compile(r"for [\w, ]+ in (cfg|mt)\.(fewshot\.(seeds|shots|targets)|merge\.(methods|groups)|"
                       r"(kinds|methods)\b|groups_of)")


def test_the_plan_alone_loops_over_the_sweep_grid():
    loops = [f"{path.relative_to(REPO)}:{i}" for path in [*modules().values(), *(REPO / "bench").glob("*.py"),
                                                          *(REPO / "tests").glob("*.py")]
             for i, line in enumerate(path.read_text().splitlines(), 1)
             if GRID_LOOP.search(line) and not line.lstrip().startswith("#")]
    assert loops and all(x.startswith("mera/plan.py:") for x in loops), loops


def test_every_module_is_under_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) >= 400}
    assert long == {}
